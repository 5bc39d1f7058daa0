"""Receiver-side verification (callbridge.webhooks.verify) and `callbridge webhooks verify`:
what the server signs, a receiver accepts; anything changed, it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callbridge.protocols import SignedMessage
from callbridge.webhooks.verify import VerifyError, verify_standard, verify_videosdk
from tests.keystores import MemoryKeyStore
from tests.servers import run_cli
from tests.test_webhook_signers import (
    HMAC_SECRET,
    HMAC_SIGNATURE,
    VECTOR_BODY,
    VECTOR_ID,
    VECTOR_TIMESTAMP,
    rsa_signer,
    standard,
)

BODY = json.dumps(
    {"webhookType": "call-hangup", "data": {"eventId": "evt_1", "from": "Zoë 📞"}},
    separators=(",", ":"),
    ensure_ascii=False,
).encode()


async def test_a_videosdk_signature_verifies_with_the_published_key(tmp_path: Path) -> None:
    signer = rsa_signer(tmp_path)
    await signer.start(MemoryKeyStore())
    headers = signer.sign(BODY, SignedMessage("evt_1", 1_700_000_000))
    pem = signer.public_key_pem()
    assert pem is not None
    assert verify_videosdk(BODY, headers, pem)
    assert not verify_videosdk(BODY + b" ", headers, pem)
    assert not verify_videosdk(BODY, {"videosdk-signature": "AAAA"}, pem)
    with pytest.raises(VerifyError):
        verify_videosdk(BODY, headers, "not a key")


def test_standard_webhooks_vectors_verify() -> None:
    headers = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": HMAC_SIGNATURE,
    }
    assert verify_standard(VECTOR_BODY, headers, secret=HMAC_SECRET, now=VECTOR_TIMESTAMP)
    assert not verify_standard(
        VECTOR_BODY + b"x", headers, secret=HMAC_SECRET, now=VECTOR_TIMESTAMP
    )
    assert not verify_standard(VECTOR_BODY, headers, secret=HMAC_SECRET, now=VECTOR_TIMESTAMP + 301)
    assert verify_standard(VECTOR_BODY, headers, secret=HMAC_SECRET, now=VECTOR_TIMESTAMP - 299)
    with pytest.raises(VerifyError):
        verify_standard(VECTOR_BODY, headers, now=VECTOR_TIMESTAMP)


async def test_ed25519_deliveries_verify_with_the_whpk_key(tmp_path: Path) -> None:
    signer = standard(tmp_path, scheme="ed25519")
    await signer.start(MemoryKeyStore())
    headers = signer.sign(BODY, SignedMessage("evt_2", 1_700_000_000))
    whpk = signer.public_key_whpk()  # type: ignore[attr-defined]
    pem = signer.public_key_pem()
    for key in (whpk, pem):
        assert verify_standard(BODY, headers, public_key=key, now=1_700_000_000)
    assert not verify_standard(BODY[:-1], headers, public_key=whpk, now=1_700_000_000)


async def test_the_cli_says_valid_or_invalid(tmp_path: Path) -> None:
    signer = rsa_signer(tmp_path)
    await signer.start(MemoryKeyStore())
    headers = signer.sign(BODY, SignedMessage("evt_1", 1_700_000_000))
    pem_file = tmp_path / "key.pem"
    pem_file.write_text(signer.public_key_pem() or "", encoding="utf-8")
    body_file = tmp_path / "body.json"
    body_file.write_bytes(BODY)
    header = f"videosdk-signature: {headers['videosdk-signature']}"
    good = run_cli(
        "webhooks",
        "verify",
        "--body",
        str(body_file),
        "--header",
        header,
        "--public-key",
        str(pem_file),
    )
    assert (good.returncode, good.stdout.strip()) == (0, "valid")
    body_file.write_bytes(BODY.replace(b"hangup", b"started"))
    bad = run_cli(
        "webhooks",
        "verify",
        "--body",
        str(body_file),
        "--header",
        header,
        "--public-key",
        str(pem_file),
    )
    assert (bad.returncode, bad.stdout.strip()) == (1, "INVALID")
    hmac_body = tmp_path / "vector.json"
    hmac_body.write_bytes(VECTOR_BODY)
    stale = run_cli(
        "webhooks",
        "verify",
        "--body",
        str(hmac_body),
        "--header",
        f"webhook-id: {VECTOR_ID}",
        "--header",
        f"webhook-timestamp: {VECTOR_TIMESTAMP}",
        "--header",
        f"webhook-signature: {HMAC_SIGNATURE}",
        "--secret",
        HMAC_SECRET,
    )
    assert stale.returncode == 1, "the vector's timestamp is years old: refused"
