"""Credential files (Vault role ids, projected tokens): read once, remembered for redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokensidecar.backends.credential_file import CredentialUnavailable, read_credential
from tokensidecar.backends.errors import UpstreamUnavailable
from tokensidecar.redact import redact


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
