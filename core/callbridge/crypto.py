"""Encryption at rest of connector provider credentials (AES-256-GCM).

A :class:`CredentialBox` turns a mapping of credential names to values into an opaque token
``v1.<base64url(nonce + ciphertext + tag)>`` and back. The associated data binds a token to
one connector (its id), so a token copied onto another connector row does not decrypt.

The key comes from :func:`load_credentials_key`: ``security.credentials_key`` when configured,
else a key generated once and kept in ``{data_dir}/credentials.key`` (mode 0600). Keys and
plaintexts never appear in reprs, exceptions or logs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from callbridge.settings import ConfigError, Settings

logger = logging.getLogger(__name__)

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
TOKEN_PREFIX: Final = "v1."
KEY_FILE_NAME: Final = "credentials.key"
CONFIG_KEY: Final = "security.credentials_key"
# Domain separation: these ciphertexts are connector credentials, format version 1.
_AAD_PREFIX: Final = b"callbridge/connector-credentials/v1\x00"
_UNDECRYPTABLE: Final = (
    "credentials cannot be decrypted: wrong key, token bound to another connector, or altered data"
)


class CredentialDecryptError(ValueError):
    """A credentials token is malformed, was altered, or belongs to another key or connector."""


class CredentialBox:
    """AES-256-GCM encryption of small string mappings, bound to associated data.

    Args:
        key: exactly 32 bytes.

    Raises:
        ValueError: the key is not 32 bytes.
    """

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
            raise ValueError(f"credentials key must be exactly {KEY_BYTES} bytes")
        self._aead = AESGCM(bytes(key))

    def __repr__(self) -> str:
        return "CredentialBox(key=<hidden>)"

    def encrypt(self, values: Mapping[str, str], associated_data: str) -> str:
        """Encrypt ``values`` (names and values are strings) under a fresh random nonce.

        ``associated_data`` (the connector id) is authenticated, not stored: the same string
        must be given to :meth:`decrypt`.
        """
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
            raise TypeError("credential names and values must be strings")
        plaintext = json.dumps(dict(values), sort_keys=True, separators=(",", ":")).encode()
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext, _aad(associated_data))
        return TOKEN_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")

    def decrypt(self, token: str, associated_data: str) -> dict[str, str]:
        """The mapping sealed in ``token``.

        Raises:
            CredentialDecryptError: (a ``ValueError``) malformed token, wrong key, wrong
                associated data, or tampered ciphertext. The message never contains the token.
        """
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
            raise CredentialDecryptError("credentials token has an unknown format")
        body = token[len(TOKEN_PREFIX) :]
        try:
            raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise CredentialDecryptError("credentials token is not valid base64url") from None
        if len(raw) < NONCE_BYTES + TAG_BYTES:
            raise CredentialDecryptError("credentials token is too short")
        try:
            plaintext = self._aead.decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(associated_data)
            )
        except InvalidTag:
            raise CredentialDecryptError(_UNDECRYPTABLE) from None
        try:
            values = json.loads(plaintext)
        except ValueError:
            raise CredentialDecryptError("credentials token holds no JSON object") from None
        if not isinstance(values, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in values.items()
        ):
            raise CredentialDecryptError("credentials token holds no string mapping")
        return values


def _aad(associated_data: str) -> bytes:
    return _AAD_PREFIX + associated_data.encode("utf-8")


def parse_key(text: str) -> bytes | None:
    """The 32-byte key encoded in ``text`` (standard or URL-safe base64), or ``None``."""
    cleaned = "".join(text.split())
    if not cleaned:
        return None
    standard = cleaned.replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(key) == KEY_BYTES else None


def load_credentials_key(settings: Settings) -> bytes:
    """The AES-256 key protecting connector credentials.

    ``security.credentials_key`` (base64 of 32 bytes) when set; otherwise the key kept in
    ``{data_dir}/credentials.key``, generated on first use (mode 0600, written atomically;
    a process racing to create it ends up with the same key).

    Raises:
        ConfigError: the configured key or the key file is not base64 of 32 bytes, or the key
            file cannot be read or written. The message names the setting or file, never the key.
    """
    configured = settings.security.credentials_key
    if configured is not None:
        key = parse_key(configured.get_secret_value())
        if key is None:
            raise ConfigError(
                f"{CONFIG_KEY}: must be the base64 of exactly {KEY_BYTES} random bytes "
                "(e.g. the output of `openssl rand -base64 32`)"
            )
        return key
    return _key_from_file(Path(settings.data_dir) / KEY_FILE_NAME)


def _read_key_file(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII"
        raise ConfigError(f"{CONFIG_KEY}: cannot read the key file {path}: {reason}") from None
    key = parse_key(text)
    if key is None:
        raise ConfigError(
            f"{CONFIG_KEY}: the key file {path} does not hold the base64 of {KEY_BYTES} bytes"
        )
    with contextlib.suppress(OSError):
        if os.name == "posix" and path.stat().st_mode & 0o077:
            logger.warning("the credentials key file %s is readable by others; chmod 600 it", path)
    return key


def _key_from_file(path: Path) -> bytes:
    if path.exists():
        return _read_key_file(path)
    key = secrets.token_bytes(KEY_BYTES)
    encoded = (base64.b64encode(key).decode("ascii") + "\n").encode("ascii")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, encoded)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        try:
            # link() never replaces: if another process created the file first, keep theirs.
            os.link(temporary, path)
        except FileExistsError:
            return _read_key_file(path)
        except OSError:
            # Filesystems without hard links: rename (atomic, but last writer wins a race).
            if path.exists():
                return _read_key_file(path)
            os.replace(temporary, path)
        _fsync_folder(path.parent)
    except OSError as exc:
        raise ConfigError(
            f"{CONFIG_KEY} is not set and the key file {path} cannot be created: {exc.strerror}"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    logger.warning(
        "generated a credentials key in %s; back it up, and give every replica the same key "
        "(security.credentials_key)",
        path,
    )
    return key


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
