"""The webhook decides exactly what the API server's ``matchConditions`` decided.

The API server evaluates the CEL expression in
``manifests/base/webhook/mutatingwebhookconfiguration.yaml`` before it calls the webhook;
``wants_injection`` must agree with it on every value, or a pod the API server sent is
admitted uninjected (or one it never sends is the only one the code would inject). The
expression is read from the manifest as shipped and evaluated by a real CEL
implementation (``common-expression-language``, with its ``lowerAscii`` from the
strings extension that Kubernetes enables), over a table of annotation values.
"""

from __future__ import annotations

import pathlib
from typing import Any

import cel
import pytest
import yaml
from cel import stdlib

from tokensidecar.webhook.inject import INJECT_ANNOTATION, wants_injection

MANIFEST = (
    pathlib.Path(__file__).resolve().parents[2] / "manifests/base/webhook/mutatingwebhookconfiguration.yaml"
)
WEBHOOK = "inject.tokensidecar.io"

VALUES = [
    "true",
    "TRUE",
    "True",
    "tRuE",
    " true",
    "true ",
    "\ttrue",
    "true\n",
    "false",
    "yes",
    "1",
    "",
    "truee",
    "tru",
    "trUE\u0130",  # a non-ASCII letter stays as it is under lowerAscii
    "tru\u0415",  # Cyrillic capital IE: str.lower() would not make it "e" either, lowerAscii never does
    "\u0442rue",
]


def _expressions() -> list[str]:
    configuration = yaml.safe_load(MANIFEST.read_text())
    (webhook,) = [hook for hook in configuration["webhooks"] if hook["name"] == WEBHOOK]
    return [condition["expression"] for condition in webhook["matchConditions"]]


def _api_server_calls_the_webhook(pod: dict[str, Any]) -> bool:
    context = cel.Context()
    stdlib.add_stdlib_to_context(context)
    context.add_variable("object", pod)
    return all(cel.evaluate(expression, context) is True for expression in _expressions())


def _pod(annotations: dict[str, str] | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "p", "namespace": "models"}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": {"containers": []}}


def test_the_manifest_has_a_condition_on_the_inject_annotation() -> None:
    assert any(INJECT_ANNOTATION in expression for expression in _expressions())


@pytest.mark.parametrize("value", VALUES, ids=[repr(value) for value in VALUES])
def test_the_webhook_agrees_with_the_match_conditions(value: str) -> None:
    pod = _pod({INJECT_ANNOTATION: value, "other": "x"})
    assert wants_injection(pod) is _api_server_calls_the_webhook(pod)


@pytest.mark.parametrize(
    "annotations", [None, {}, {"tokensidecar.io/injected": "true"}, {"inject": "true"}], ids=str
)
def test_pods_without_the_annotation_are_not_sent_nor_injected(annotations: dict[str, str] | None) -> None:
    pod = _pod(annotations)
    assert wants_injection(pod) is False
    assert _api_server_calls_the_webhook(pod) is False
