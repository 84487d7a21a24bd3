"""The token Secret's layout, shared by the sidecar's reader and the rotation job's writer."""

from __future__ import annotations

import binascii

import pytest

from tokensidecar.backends import secret
from tokensidecar.redact import redact


def test_secret_values_round_trip_and_are_remembered_in_both_forms() -> None:
    encoded = secret.encode("hf_layout_round_trip_value\n")
    assert secret.decode(encoded) == "hf_layout_round_trip_value\n"
    assert "hf_layout_round_trip_value" not in redact("token hf_layout_round_trip_value")
    assert encoded not in redact(f"data {encoded}")


def test_a_secret_value_that_is_not_base64_is_a_value_error() -> None:
    with pytest.raises(binascii.Error):
        secret.decode("not base64!")
    with pytest.raises(UnicodeDecodeError):
        secret.decode("//79")  # base64 of ff fe fd: not UTF-8
