"""The layouts the sidecar and the rotation job share: the token Secret, credential files."""

from __future__ import annotations

import binascii
from pathlib import Path

import pytest

from tokensidecar.backends import secret
from tokensidecar.backends.credential_file import CredentialUnavailable, read_credential
from tokensidecar.backends.errors import UpstreamUnavailable
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


def test_a_credential_file_is_read_stripped_and_remembered(tmp_path: Path) -> None:
    path = tmp_path / "jwt"
    path.write_text("  hf_layout_credential_value\n")
    assert read_credential(path, setting="TOKENSIDECAR_VAULT_JWT_FILE") == "hf_layout_credential_value"
    assert "hf_layout_credential_value" not in redact("sent hf_layout_credential_value")


def test_a_missing_or_empty_credential_file_is_an_outage_naming_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(CredentialUnavailable, match=r"^SETTING \(.*absent\) does not exist$") as missing:
        read_credential(path, setting="SETTING")
    assert isinstance(missing.value, UpstreamUnavailable)
    path.write_text(" \n")
    with pytest.raises(CredentialUnavailable, match=r"is empty$"):
        read_credential(path, setting="SETTING")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(CredentialUnavailable, match=r"cannot read .*: not ASCII$"):
        read_credential(path, setting="SETTING", encoding="ascii")
