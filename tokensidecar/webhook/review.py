"""AdmissionReview in, AdmissionReview out: the webhook's protocol, as a function that never raises.

The API server sends ``admission.k8s.io/v1`` AdmissionReviews and expects one back with
the same ``request.uid``. Whatever arrives — a valid review, a review of something that is
not a pod, JSON that is not a review, bytes that are not JSON — this module returns an
HTTP status and a JSON body, so the server never answers 500 from input:

* a body that is not an AdmissionReview → 400 and a message (nothing to reply *to*);
* a pod without ``tokensidecar.io/inject: "true"``, another kind, another operation →
  allowed, no patch (``skipped``);
* a pod that asks for injection with invalid annotations → ``allowed: false`` naming the
  annotation (``--on-invalid=deny``), or allowed with a warning and no patch (``skip``).

Denying is the default because the alternative admits a pod that silently runs without
the token its owner asked for (and, on KServe, with the long-lived ``HF_TOKEN`` the
sidecar exists to replace); ``skip`` is for clusters that prefer availability.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from typing import Any

from tokensidecar.redact import redact, safe_error
from tokensidecar.webhook.inject import InjectionSettings, InvalidInjection, inject

__all__ = ["ADMISSION_API_VERSION", "ReviewOutcome", "review"]

log = logging.getLogger(__name__)

ADMISSION_API_VERSION = "admission.k8s.io/v1"
# The API server shows warnings to kubectl users and truncates them past this length.
MAX_WARNING_CHARS = 256
# Messages quote annotation values, which can be long; a denial reason stays readable.
MAX_MESSAGE_CHARS = 1024


@dataclass(frozen=True)
class ReviewOutcome:
    """What to answer: HTTP status, JSON body, and the metrics result label."""

    status: int
    body: dict[str, Any]
    result: str  # "injected" | "skipped" | "error"
    message: str = ""


class BadReview(ValueError):
    """The body is not an AdmissionReview this webhook can answer."""


def review(body: bytes, *, settings: InjectionSettings, on_invalid: str = "deny") -> ReviewOutcome:
    """Answer one AdmissionReview body. Never raises."""
    try:
        request = _parse(body)
    except BadReview as exc:
        return ReviewOutcome(status=400, body={"error": str(exc)}, result="error", message=str(exc))
    uid: str = request["uid"]
    try:
        return _decide(request, uid=uid, settings=settings, on_invalid=on_invalid)
    except InvalidInjection as exc:
        return _refuse(uid=uid, message=str(exc), on_invalid=on_invalid)
    except Exception as exc:  # a pod shape nobody foresaw must still get a well-formed reply
        log.exception("review failed", extra={"uid": uid})
        return _refuse(
            uid=uid, message=f"tokensidecar could not inject: {safe_error(exc)}", on_invalid=on_invalid
        )


def _parse(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BadReview("the body is not JSON") from None
    if not isinstance(document, dict):
        raise BadReview("the body is not a JSON object")
    if document.get("kind") != "AdmissionReview":
        raise BadReview("the body is not an AdmissionReview (kind)")
    if document.get("apiVersion") != ADMISSION_API_VERSION:
        raise BadReview(f"only {ADMISSION_API_VERSION} AdmissionReviews are served (apiVersion)")
    request = document.get("request")
    if not isinstance(request, dict):
        raise BadReview("the AdmissionReview has no request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid or len(uid) > 256:
        raise BadReview("the AdmissionReview request has no uid")
    return request


def _is_pod_create(request: dict[str, Any]) -> bool:
    kind = request.get("kind")
    resource = request.get("resource")
    is_pod = (isinstance(kind, dict) and kind.get("kind") == "Pod" and kind.get("group", "") == "") or (
        isinstance(resource, dict) and resource.get("resource") == "pods" and resource.get("group", "") == ""
    )
    sub_resource = request.get("subResource")
    return is_pod and not sub_resource and request.get("operation") == "CREATE"


def _decide(
    request: dict[str, Any], *, uid: str, settings: InjectionSettings, on_invalid: str
) -> ReviewOutcome:
    if not _is_pod_create(request):
        return _allow(uid=uid, patch=[])
    pod = request.get("object")
    if not isinstance(pod, dict):
        raise InvalidInjection("request.object", "the review carries no pod")
    namespace = request.get("namespace")
    return _allow(
        uid=uid,
        patch=inject(pod, settings=settings, namespace=namespace if isinstance(namespace, str) else None),
    )


def _response(uid: str, **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": ADMISSION_API_VERSION,
        "kind": "AdmissionReview",
        "response": {"uid": uid, **fields},
    }


def _allow(*, uid: str, patch: list[dict[str, Any]]) -> ReviewOutcome:
    if not patch:
        return ReviewOutcome(status=200, body=_response(uid, allowed=True), result="skipped")
    encoded = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
    return ReviewOutcome(
        status=200,
        body=_response(uid, allowed=True, patchType="JSONPatch", patch=encoded),
        result="injected",
    )


def _refuse(*, uid: str, message: str, on_invalid: str) -> ReviewOutcome:
    message = redact(message)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    if on_invalid == "skip":
        warning = f"tokensidecar: not injected: {message}"
        if len(warning) > MAX_WARNING_CHARS:
            warning = warning[: MAX_WARNING_CHARS - 3] + "..."
        body = _response(uid, allowed=True, warnings=[warning])
    else:
        body = _response(
            uid,
            allowed=False,
            status={"code": 403, "reason": "Forbidden", "message": f"tokensidecar: {message}"},
        )
    return ReviewOutcome(status=200, body=body, result="error", message=message)


def decode_patch(outcome_body: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON patch inside a reply (``[]`` when there is none); for tests and the bench."""
    response = outcome_body.get("response") or {}
    encoded = response.get("patch")
    if not encoded:
        return []
    try:
        patch: list[dict[str, Any]] = json.loads(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"the reply's patch is not base64 JSON: {exc}") from None
    return patch
