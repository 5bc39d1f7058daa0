"""Connector credentials encryption (AES-256-GCM) and the loading of its key."""

from __future__ import annotations

import base64
import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from callbridge.crypto import (
    KEY_FILE_NAME,
    TOKEN_PREFIX,
    CredentialBox,
    CredentialDecryptError,
    load_credentials_key,
)
from callbridge.settings import ConfigError, Settings, load_settings

KEY = bytes(range(32))
VALUES = {"accountSid": "AC" + "1" * 32, "authToken": "s3cr3t-auth-token-value"}


def _settings(tmp_path: Path, **security: str) -> Settings:
    return load_settings(
        overrides={"data_dir": str(tmp_path / "data"), "security": security}, environ={}
    )


def _flip(token: str, index: int) -> str:
    body = token[len(TOKEN_PREFIX) :]
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[index] ^= 0x01
    return TOKEN_PREFIX + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


# --------------------------------------------------------------------------- the box


def test_round_trip() -> None:
    box = CredentialBox(KEY)
    token = box.encrypt(VALUES, "cn_aaaaaaaaaaaaaaaa")
    assert token.startswith("v1.")
    assert "=" not in token and "+" not in token and "/" not in token
    for value in VALUES.values():
        assert value not in token
    assert box.decrypt(token, "cn_aaaaaaaaaaaaaaaa") == VALUES
    assert CredentialBox(bytearray(KEY)).decrypt(token, "cn_aaaaaaaaaaaaaaaa") == VALUES


def test_each_encryption_uses_a_fresh_nonce() -> None:
    box = CredentialBox(KEY)
    tokens = {box.encrypt(VALUES, "cn_a") for _ in range(50)}
    assert len(tokens) == 50
    nonces = {base64.urlsafe_b64decode(t[3:] + "=" * (-len(t[3:]) % 4))[:12] for t in tokens}
    assert len(nonces) == 50


def test_empty_and_unicode_values() -> None:
    box = CredentialBox(KEY)
    assert box.decrypt(box.encrypt({}, "x"), "x") == {}
    values = {"apiKey": "KEY\u00e9\u4e2d\U0001f600", "publicKey": "pk"}
    assert box.decrypt(box.encrypt(values, "cn_x"), "cn_x") == values


@pytest.mark.parametrize("index", [0, 5, 11, 12, 20, -1])
def test_tampering_is_detected(index: int) -> None:
    box = CredentialBox(KEY)
    token = box.encrypt(VALUES, "cn_a")
    with pytest.raises(CredentialDecryptError, match="cannot be decrypted"):
        box.decrypt(_flip(token, index), "cn_a")


def test_wrong_associated_data_is_refused() -> None:
    box = CredentialBox(KEY)
    token = box.encrypt(VALUES, "cn_aaaaaaaaaaaaaaaa")
    with pytest.raises(ValueError, match="cannot be decrypted"):
        box.decrypt(token, "cn_bbbbbbbbbbbbbbbb")
    with pytest.raises(ValueError, match="cannot be decrypted"):
        box.decrypt(token, "")


def test_wrong_key_is_refused() -> None:
    token = CredentialBox(KEY).encrypt(VALUES, "cn_a")
    with pytest.raises(ValueError, match="cannot be decrypted"):
        CredentialBox(bytes(32)).decrypt(token, "cn_a")


@pytest.mark.parametrize(
    ("token", "match"),
    [
        ("", "unknown format"),
        ("v2.AAAA", "unknown format"),
        ("AAAA", "unknown format"),
        ("v1.", "too short"),
        ("v1.AAAA", "too short"),
        ("v1.!!!!", "base64"),
        ("v1." + "A" * 40, "cannot be decrypted"),
    ],
)
def test_malformed_tokens(token: str, match: str) -> None:
    with pytest.raises(CredentialDecryptError, match=match):
        CredentialBox(KEY).decrypt(token, "cn_a")


@pytest.mark.parametrize("length", [0, 16, 24, 31, 33, 64])
def test_key_must_be_32_bytes(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        CredentialBox(b"k" * length)


def test_key_must_be_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        CredentialBox("k" * 32)  # type: ignore[arg-type]


def test_values_must_be_strings() -> None:
    with pytest.raises(TypeError):
        CredentialBox(KEY).encrypt({"a": 1}, "cn_a")  # type: ignore[dict-item]


def test_no_secrets_in_reprs_or_errors() -> None:
    box = CredentialBox(KEY)
    assert KEY.hex() not in repr(box) and "hidden" in repr(box)
    token = box.encrypt(VALUES, "cn_a")
    try:
        box.decrypt(token, "cn_b")
    except ValueError as exc:
        assert token[3:20] not in str(exc)
        assert exc.__cause__ is None and exc.__suppress_context__


# --------------------------------------------------------------------------- the key


def test_key_from_settings_base64(tmp_path: Path) -> None:
    key = os.urandom(32)
    for encoded in (
        base64.b64encode(key).decode(),
        base64.urlsafe_b64encode(key).decode().rstrip("="),
        "  " + base64.b64encode(key).decode() + "\n",
    ):
        assert load_credentials_key(_settings(tmp_path, credentials_key=encoded)) == key
    assert not (tmp_path / "data" / KEY_FILE_NAME).exists()


def test_key_from_env_and_file_references(tmp_path: Path) -> None:
    key = os.urandom(32)
    encoded = base64.b64encode(key).decode()
    key_file = tmp_path / "cb.key"
    key_file.write_text(encoded + "\n")
    config = tmp_path / "cb.yaml"
    config.write_text(f"security:\n  credentials_key: {{$file: {key_file}}}\n")
    assert load_credentials_key(load_settings(config, environ={})) == key
    settings = load_settings(environ={"CALLBRIDGE_SECURITY__CREDENTIALS_KEY": encoded})
    assert load_credentials_key(settings) == key


@pytest.mark.parametrize(
    "bad",
    [
        "not base64 at all!",
        base64.b64encode(b"k" * 31).decode(),
        base64.b64encode(b"k" * 33).decode(),
        base64.b64encode(b"k" * 16).decode(),
        "",
        "   ",
    ],
)
def test_bad_configured_key_names_the_setting(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match=r"^security\.credentials_key: ") as caught:
        load_credentials_key(_settings(tmp_path, credentials_key=bad))
    if bad.strip():
        assert bad not in str(caught.value)


def test_generated_key_persists_with_mode_0600(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
    path = tmp_path / "data" / KEY_FILE_NAME
    assert not path.exists()
    with caplog.at_level(logging.WARNING, logger="callbridge.crypto"):
        key = load_credentials_key(settings)
    assert len(key) == 32
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert base64.b64decode(path.read_text().strip()) == key
    assert str(path) in caplog.text
    assert base64.b64encode(key).decode() not in caplog.text
    assert load_credentials_key(settings) == key  # read back, not regenerated
    assert load_credentials_key(_settings(tmp_path)) == key
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE_NAME]  # no temp files left


def test_generated_key_encrypts_across_restarts(tmp_path: Path) -> None:
    token = CredentialBox(load_credentials_key(_settings(tmp_path))).encrypt(VALUES, "cn_a")
    again = CredentialBox(load_credentials_key(_settings(tmp_path)))
    assert again.decrypt(token, "cn_a") == VALUES


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    keys: list[bytes] = []
    barrier = threading.Barrier(8)

    def load() -> None:
        barrier.wait()
        keys.append(load_credentials_key(settings))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert base64.b64decode((tmp_path / "data" / KEY_FILE_NAME).read_text()) == keys[0]


def test_corrupt_key_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "data" / KEY_FILE_NAME
    path.parent.mkdir(parents=True)
    path.write_text("garbage\n")
    with pytest.raises(ConfigError, match=r"security\.credentials_key") as caught:
        load_credentials_key(_settings(tmp_path))
    assert str(path) in str(caught.value)


def test_unusable_data_dir_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("a file where the data folder should be")
    with pytest.raises(ConfigError, match="cannot be created"):
        load_credentials_key(_settings(tmp_path))


def test_configured_key_wins_over_the_file(tmp_path: Path) -> None:
    generated = load_credentials_key(_settings(tmp_path))
    configured = os.urandom(32)
    settings = _settings(tmp_path, credentials_key=base64.b64encode(configured).decode())
    assert load_credentials_key(settings) == configured != generated
