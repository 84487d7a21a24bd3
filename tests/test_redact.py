"""The one redaction path: known values and token shapes are masked in text, exceptions and
both log formats; ordinary text is left alone."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import secrets
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.jwt import unsigned_jwt
from tokensidecar import logs
from tokensidecar.redact import fingerprint, redact, remember, safe_error
from tokensidecar.token import Token


def _unique(prefix: str = "") -> str:
    return prefix + secrets.token_hex(12)


def _jwt_body(claims: dict[str, object]) -> str:
    return unsigned_jwt(claims, signature=secrets.token_urlsafe(32))


def test_a_remembered_value_is_masked_with_its_fingerprint() -> None:
    value = _unique("plainsecret")  # no known shape: only remember() can hide it
    assert redact(f"got {value} from vault") == f"got {value} from vault"
    remember(value)
    assert redact(f"got {value} from vault") == f"got [REDACTED sha256:{fingerprint(value)}] from vault"
    assert redact(f"{value}{value}").count("[REDACTED") == 2


def test_creating_a_token_remembers_its_value() -> None:
    value = _unique("tokenvalue")
    Token(value=f"  {value}\n", source="file")
    assert value not in redact(f"echo: {value}")


def test_a_secret_containing_another_is_masked_whole() -> None:
    inner = _unique("inner")
    outer = f"outer{inner}tail"
    remember(inner)
    remember(outer)
    masked = redact(f"x {outer} y")
    assert masked == f"x [REDACTED sha256:{fingerprint(outer)}] y"


def test_short_and_empty_values_are_not_remembered() -> None:
    remember("")
    remember(None)
    remember("abc")
    assert redact("abc is a word") == "abc is a word"


@pytest.mark.parametrize(
    "secret",
    [
        "hf_" + secrets.token_urlsafe(24).replace("-", "a"),
        "hf_oauth_" + secrets.token_hex(20),
        "hf_jwt_" + _jwt_body({"sub": "pipeline", "exp": 1999999999}),
        _jwt_body({"sub": "system:serviceaccount:ns:sa", "aud": ["vault"]}),
        "eyJhbGciOiJSUzI1NiJ9." + secrets.token_urlsafe(40) + "." + secrets.token_urlsafe(40),
        "hvs.CAESI" + secrets.token_urlsafe(30),
        "hvb.AAAAAQ" + secrets.token_urlsafe(30),
        "s." + secrets.token_hex(12),  # legacy Vault token
    ],
    ids=["hf", "hf_oauth", "hf_jwt", "jwt-sa", "jwt", "hvs", "hvb", "vault-legacy"],
)
def test_token_shapes_are_masked_whole_without_being_remembered(secret: str) -> None:
    text = redact(f'upstream said: invalid token "{secret}" (401)')
    assert secret not in text
    assert "[REDACTED sha256:" in text
    # No piece of it survives either: a JWT's signature alone is as sensitive as the whole.
    for piece in secret.split("."):
        if len(piece) >= 8:
            assert piece not in text, piece


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_credentials_are_masked_in_any_case(scheme: str) -> None:
    credential = secrets.token_urlsafe(20)
    text = redact(f"Authorization: {scheme} {credential}")
    assert credential not in text
    assert text.startswith(f"Authorization: {scheme} [REDACTED")


@pytest.mark.parametrize(
    "text",
    [
        "published a new token",
        "secret/hf/model-a not found at version 3",
        "GET https://huggingface.co/api/whoami-v2 -> 401",
        "/var/run/tokensidecar/token.json written with mode 0440",
        "fingerprint=0123456789ab consecutive_failures=3",
        "hf_short",
        "versions.count=3 and his.name",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_safe_error_is_one_redacted_line_with_the_type() -> None:
    secret = _unique("hf_safeerror")
    assert safe_error(RuntimeError(f"bad token {secret}\nsecond line")) == (
        f"RuntimeError: bad token [REDACTED sha256:{fingerprint(secret)}] second line"
    )
    assert safe_error(TimeoutError()) == "TimeoutError"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Route the root logger through tokensidecar's formatter into a buffer; restore after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


def _log_everything(secret: str) -> None:
    log = logging.getLogger("tokensidecar.test")
    log.info("fetched %s", secret, extra={"token": secret, "nested": {"list": [secret, 3]}, "count": 2})
    try:
        raise ValueError(f"upstream echoed {secret}")
    except ValueError:
        log.exception("refresh failed", extra={"error": f"x {secret}"})
    logging.getLogger("hvac.adapters").warning("request failed with header Bearer %s", secret)


@pytest.mark.parametrize("secret_prefix", ["hf_", "plain"])
def test_json_logs_never_show_a_secret(log_stream: io.StringIO, secret_prefix: str) -> None:
    secret = _unique(secret_prefix + "jsonlog")
    remember(secret)
    logs.configure(fmt="json", level="info", stream=log_stream)
    _log_everything(secret)
    output = log_stream.getvalue()
    assert secret not in output
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert [r["msg"] for r in records][:2] == [
        f"fetched [REDACTED sha256:{fingerprint(secret)}]",
        "refresh failed",
    ]
    first = records[0]
    assert first["level"] == "info"
    assert first["logger"] == "tokensidecar.test"
    assert first["count"] == 2
    assert first["nested"] == {"list": [f"[REDACTED sha256:{fingerprint(secret)}]", 3]}
    assert first["time"].endswith("Z")
    assert "Traceback" in records[1]["error"]
    assert records[2]["logger"] == "hvac.adapters"


def test_text_logs_never_show_a_secret(log_stream: io.StringIO) -> None:
    secret = _unique("plaintextlog")
    remember(secret)
    logs.configure(fmt="text", level="info", stream=log_stream)
    _log_everything(secret)
    output = log_stream.getvalue()
    assert secret not in output
    assert "info    fetched [REDACTED sha256:" in output
    assert "Traceback" in output


def test_library_loggers_are_held_at_warning(log_stream: io.StringIO) -> None:
    logs.configure(fmt="json", level="debug", stream=log_stream)
    logging.getLogger("urllib3.connectionpool").debug("GET /v1/secret/data/hf?token=abc")
    logging.getLogger("tokensidecar.test").debug("our own debug line")
    output = log_stream.getvalue()
    assert "GET /v1/secret" not in output
    assert "our own debug line" in output


@pytest.mark.parametrize("library", ["httpx2", "httpcore2.connection", "huggingface_hub.utils"])
def test_http_client_request_lines_are_held_at_warning(log_stream: io.StringIO, library: str) -> None:
    # huggingface_hub 2.x sends through httpx2, which logs every request at INFO.
    logs.configure(fmt="json", level="info", stream=log_stream)
    logging.getLogger(library).info('HTTP Request: GET http://hub.local/api/whoami-v2 "HTTP/1.1 200 OK"')
    logging.getLogger(library).warning("a library warning still shows")
    output = log_stream.getvalue()
    assert "HTTP Request" not in output
    assert "a library warning still shows" in output


# --- the gaps: org tokens, glued and encoded tokens, schemes, encoded remembered values -------


def _org_token() -> str:
    return "api_org_" + secrets.token_hex(17)


def _hf_token() -> str:
    return "hf_" + secrets.token_hex(17)


@pytest.mark.parametrize(
    "template",
    [
        "org token {t} refused",
        "HF_TOKEN=my_hf_{t}",  # glued to a word: \\b does not start a match after "_"
        "GET /resolve?token=%22{t}%22",  # percent-encoded quotes around it
        '{{"token": "\\u0022{t}\\u0022"}}',  # JSON-escaped quotes
        "x{t}",
    ],
    ids=["plain", "after-underscore", "percent-encoded", "json-escaped", "after-letter"],
)
@pytest.mark.parametrize("make", [_org_token, _hf_token], ids=["api_org", "hf"])
def test_token_shapes_are_masked_next_to_words_and_escapes(template: str, make: Any) -> None:
    token = make()
    secret_part = token.split("_")[-1]
    text = redact(template.format(t=token))
    assert secret_part not in text, text
    assert "[REDACTED sha256:" in text


def test_a_url_encoded_jwt_is_masked() -> None:
    jwt = _jwt_body({"sub": "system:serviceaccount:ns:sa"})
    header, payload, signature = jwt.split(".")
    for text in (
        f"subject_token=%22{jwt}%22",
        f"subject_token={header}%2E{payload}%2E{signature}",
        f"q=%7B%22jwt%22%3A%22{jwt}%22%7D",
    ):
        masked = redact(text)
        assert payload not in masked and signature not in masked, masked


@pytest.mark.parametrize(
    "template",
    [
        "Authorization: Bearer   {c}",
        "authorization: bearer\t{c}",
        "Bearer \t {c} was refused",
        "Authorization: token {c}",
        "authorization=token {c}",
        '{{"Authorization": "token {c}"}}',
        "Authorization: Basic {c}",
        "Proxy-Authorization: Digest {c}",
    ],
)
def test_credentials_after_any_scheme_and_whitespace_are_masked(template: str) -> None:
    credential = secrets.token_urlsafe(24)
    text = redact(template.format(c=credential))
    assert credential not in text, text
    assert "[REDACTED sha256:" in text


def test_basic_credentials_are_masked_anywhere_when_they_decode_to_user_password() -> None:
    pair = base64.b64encode(f"client-{secrets.token_hex(4)}:{secrets.token_hex(16)}".encode()).decode()
    assert pair not in redact(f"sent Basic {pair} to /oauth/token")
    assert redact("Basic authentication failed for the realm") == "Basic authentication failed for the realm"


@pytest.mark.parametrize(
    "prefix", ["", "c", "id", "client-id:"], ids=["offset0", "offset1", "offset2", "basic"]
)
def test_the_base64_of_a_remembered_value_is_masked(prefix: str) -> None:
    value = _unique("shapelessb64")  # no known shape: only remember() knows it
    remember(value)
    encoded = base64.b64encode((prefix + value).encode()).decode()
    urlsafe = base64.urlsafe_b64encode((prefix + value + "?>").encode()).decode()
    for text in (f'data: {{"token": "{encoded}"}}', f"blob {urlsafe}"):
        masked = redact(text)
        mask = f"[REDACTED sha256:{fingerprint(value)}]"
        assert mask in masked, masked
        # What is left of the blob around the mask encodes the prefix and at most a few
        # bytes of the value's edges (the characters shared with the neighbouring bytes).
        before, _, after = masked.partition(mask)
        left = re.search(r"[A-Za-z0-9+/_-]*$", before)
        right = re.match(r"[A-Za-z0-9+/=_-]*", after)
        assert left is not None and right is not None
        assert len(left.group(0)) <= len(prefix) * 4 // 3 + 2
        assert len(right.group(0).rstrip("=")) <= 4


def test_the_percent_encoding_of_a_remembered_value_is_masked() -> None:
    value = "p@ss/word+" + secrets.token_hex(8)
    remember(value)
    assert redact(f"form body: secret_id={urllib.parse.quote(value, safe='')}") == (
        f"form body: secret_id=[REDACTED sha256:{fingerprint(value)}]"
    )


def test_remembered_values_are_bounded_and_an_evicted_one_leaves_the_index() -> None:
    from tokensidecar import redact as redactor

    first = "plain-secret-first-0001"
    remember(first)
    assert first not in redact(f"x {first} y")
    newer = [f"plain-secret-later-{n:04d}" for n in range(redactor.MAX_REMEMBERED)]
    for value in newer:
        remember(value)
    # The oldest is gone from the index (bounded memory); every newer one is still masked,
    # in its base64 form too.
    assert first in redact(f"x {first} y")
    for value in (newer[0], newer[-1]):
        assert value not in redact(f"x {value} y")
        encoded = base64.b64encode(value.encode()).decode()
        assert encoded[2:-2] not in redact(f"Basic {encoded}")
    assert len(redactor._known) == redactor.MAX_REMEMBERED
    # Values share forms (a truncated base64 core); every form of a value still known stays.
    assert set(redactor._users) == {form for forms in redactor._known.values() for form in forms}
