"""Webhook signers against independent references: the Standard Webhooks test vectors, the
``cryptography`` library, and Node.js running VideoSDK's documented verification sample."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from callbridge.protocols import PluginContext, PluginError, SignedMessage, WebhookSigner
from callbridge_plugins.signers.rsa_sha256 import RsaSha256Config, RsaSha256Signer
from callbridge_plugins.signers.standard_webhooks import (
    StandardWebhooksConfig,
    StandardWebhooksSigner,
)
from tests.keystores import MemoryKeyStore
from tests.servers import FakeClock
from tests.services import require_or_skip

# Standard Webhooks reference vectors (libraries/python/tests/test_webhooks.py and
# libraries/go/webhook_asymmetric_test.go in standard-webhooks/standard-webhooks).
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
HMAC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HMAC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
ED25519_KEY = "whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk="
ED25519_SIGNATURE = (
    "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag=="
)

NOW = 1_750_000_000
BODY = b'{"webhookType":"call-ended","data":{"callId":"call_1"}}'


def context(clock: FakeClock, tmp_path: Path) -> PluginContext:
    return PluginContext(
        data_dir=tmp_path,
        clock=clock,
        public_api_url="http://127.0.0.1:8000",
        public_ingest_url="ws://127.0.0.1:8000/ingest",
    )


def standard(
    tmp_path: Path, clock: FakeClock | None = None, **config: Any
) -> StandardWebhooksSigner:
    return StandardWebhooksSigner(
        StandardWebhooksConfig(**config), context(clock or FakeClock(NOW), tmp_path)
    )


def rsa_signer(tmp_path: Path, clock: FakeClock | None = None, **config: Any) -> RsaSha256Signer:
    return RsaSha256Signer(RsaSha256Config(**config), context(clock or FakeClock(NOW), tmp_path))


def until(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat()


def whsk(seed: bytes) -> str:
    return "whsk_" + base64.b64encode(seed).decode()


def whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


def raw_public(whpk: str | None) -> Ed25519PublicKey:
    assert whpk is not None and whpk.startswith("whpk_")
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(whpk.removeprefix("whpk_")))


@pytest.fixture(scope="module")
def rsa_pems() -> tuple[str, str]:
    """Two PKCS#8 PEM RSA keys: (new, old)."""
    return tuple(  # type: ignore[return-value]
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
        for _ in range(2)
    )


# --------------------------------------------------------------------------- reference vectors


async def test_hmac_reference_vector(tmp_path: Path) -> None:
    signer = standard(tmp_path, scheme="hmac")
    assert isinstance(signer, WebhookSigner)
    await signer.start(MemoryKeyStore())
    headers = signer.sign(VECTOR_BODY, SignedMessage(VECTOR_ID, VECTOR_TIMESTAMP, HMAC_SECRET))
    assert headers == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": "1614265330",
        "webhook-signature": HMAC_SIGNATURE,
    }
    assert signer.verify(VECTOR_BODY, headers, HMAC_SECRET, now=VECTOR_TIMESTAMP)
    assert signer.public_key_pem() is None


async def test_ed25519_reference_vector(tmp_path: Path) -> None:
    keys = MemoryKeyStore()
    signer = standard(tmp_path, scheme="ed25519", private_key=ED25519_KEY)
    await signer.start(keys)
    assert not keys.creations, "a configured key never touches the store"
    headers = signer.sign(VECTOR_BODY, SignedMessage(VECTOR_ID, VECTOR_TIMESTAMP))
    assert headers == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": "1614265330",
        "webhook-signature": ED25519_SIGNATURE,
    }
    assert signer.verify(VECTOR_BODY, headers, now=VECTOR_TIMESTAMP)
    # The published public key, in both forms, verifies the vector on its own.
    content = f"{VECTOR_ID}.{VECTOR_TIMESTAMP}.".encode() + VECTOR_BODY
    signature = base64.b64decode(ED25519_SIGNATURE.removeprefix("v1a,"))
    raw_public(signer.public_key_whpk()).verify(signature, content)
    pem = signer.public_key_pem()
    assert pem is not None and pem.startswith("-----BEGIN PUBLIC KEY-----")
    from_pem = serialization.load_pem_public_key(pem.encode())
    assert isinstance(from_pem, Ed25519PublicKey)
    from_pem.verify(signature, content)


# --------------------------------------------------------------------------- verification


async def signed(
    tmp_path: Path, scheme: str
) -> tuple[StandardWebhooksSigner, str | None, dict[str, str]]:
    signer = standard(tmp_path, scheme=scheme)
    await signer.start(MemoryKeyStore())
    secret = signer.new_endpoint_secret()
    headers = dict(signer.sign(BODY, SignedMessage("evt_2sdfK9", NOW, secret)))
    return signer, secret, headers


@pytest.mark.parametrize("scheme", ["hmac", "ed25519"])
async def test_a_good_signature_passes_and_tampering_fails(tmp_path: Path, scheme: str) -> None:
    signer, secret, headers = await signed(tmp_path, scheme)
    assert signer.verify(BODY, headers, secret, NOW)
    shouting = {name.upper(): value for name, value in headers.items()}
    assert signer.verify(BODY, shouting, secret, NOW), "header names are case-insensitive"
    assert not signer.verify(BODY + b" ", headers, secret, NOW), "body"
    assert not signer.verify(BODY, headers | {"webhook-id": "evt_2sdfK8"}, secret, NOW), "id"
    later = headers | {"webhook-timestamp": str(NOW + 1)}
    assert not signer.verify(BODY, later, secret, NOW), "timestamp"
    for missing in headers:
        partial = {name: value for name, value in headers.items() if name != missing}
        assert not signer.verify(BODY, partial, secret, NOW), missing
    other_version = headers["webhook-signature"].replace("v1a,", "v2,").replace("v1,", "v2,")
    assert not signer.verify(BODY, headers | {"webhook-signature": other_version}, secret, NOW)


@pytest.mark.parametrize("scheme", ["hmac", "ed25519"])
@pytest.mark.parametrize(
    ("offset", "accepted"),
    [(-301, False), (-300, True), (-299, True), (299, True), (300, True), (301, False)],
)
async def test_the_timestamp_tolerance_is_300_seconds_both_ways(
    tmp_path: Path, scheme: str, offset: int, accepted: bool
) -> None:
    """``offset`` > 0: the delivery is that old when checked; < 0: it is from the future."""
    signer, secret, headers = await signed(tmp_path, scheme)
    assert signer.verify(BODY, headers, secret, NOW + offset) is accepted


async def test_verify_uses_the_clock_when_no_time_is_given(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    signer = standard(tmp_path, clock)
    await signer.start(MemoryKeyStore())
    secret = signer.new_endpoint_secret()
    headers = signer.sign(BODY, SignedMessage("evt_1", NOW, secret))
    clock.advance(299)
    assert signer.verify(BODY, headers, secret)
    clock.advance(2)
    assert not signer.verify(BODY, headers, secret)


async def test_ids_and_timestamps_with_a_full_stop_are_refused(tmp_path: Path) -> None:
    signer = standard(tmp_path)
    await signer.start(MemoryKeyStore())
    with pytest.raises(PluginError, match="id"):
        signer.sign(BODY, SignedMessage("evt.1", NOW, HMAC_SECRET))
    key = base64.b64decode(HMAC_SECRET.removeprefix("whsec_"))

    def by_hand(message_id: str, timestamp: str) -> dict[str, str]:
        content = f"{message_id}.{timestamp}.".encode() + BODY
        mac = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
        return {
            "webhook-id": message_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": f"v1,{mac}",
        }

    assert signer.verify(BODY, by_hand("evt_1", str(NOW)), HMAC_SECRET, NOW), "the control"
    assert not signer.verify(BODY, by_hand("evt.1", str(NOW)), HMAC_SECRET, NOW)
    assert not signer.verify(BODY, by_hand("evt_1", f"{NOW}.0"), HMAC_SECRET, NOW)
    assert not signer.verify(BODY, by_hand("evt_1", f"{NOW:_}"), HMAC_SECRET, NOW)


# --------------------------------------------------------------------------- rotation


async def test_hmac_rotation_signs_with_every_secret(tmp_path: Path) -> None:
    signer = standard(tmp_path)
    await signer.start(MemoryKeyStore())
    new, old, stranger = (signer.new_endpoint_secret() for _ in range(3))
    assert new and old and stranger
    headers = signer.sign(BODY, SignedMessage("evt_1", NOW, f"{new} {old}"))
    entries = headers["webhook-signature"].split(" ")
    assert [entry[:3] for entry in entries] == ["v1,", "v1,"]
    assert signer.verify(BODY, headers, new, NOW), "a receiver already on the new secret"
    assert signer.verify(BODY, headers, old, NOW), "a receiver still on the old secret"
    assert signer.verify(BODY, headers, f"{stranger} {old}", NOW), "any trusted secret"
    assert not signer.verify(BODY, headers, stranger, NOW)
    only_old = {**headers, "webhook-signature": entries[1]}
    assert signer.verify(BODY, only_old, old, NOW)
    assert not signer.verify(BODY, only_old, new, NOW)


async def test_ed25519_rotation_signs_with_the_previous_key_until_its_end(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    new_key, old_key = whsk(b"n" * 32), whsk(b"o" * 32)
    rotating = standard(
        tmp_path,
        clock,
        scheme="ed25519",
        private_key=new_key,
        previous_keys=[{"private_key": old_key, "until": until(NOW + 3600)}],
    )
    only_new = standard(tmp_path, clock, scheme="ed25519", private_key=new_key)
    only_old = standard(tmp_path, clock, scheme="ed25519", private_key=old_key)
    for signer in (rotating, only_new, only_old):
        await signer.start(MemoryKeyStore())

    headers = rotating.sign(BODY, SignedMessage("evt_1", NOW))
    entries = headers["webhook-signature"].split(" ")
    assert [entry[:4] for entry in entries] == ["v1a,", "v1a,"]
    assert rotating.public_key_whpk() == only_new.public_key_whpk(), "the current key is published"
    assert only_new.verify(BODY, headers, now=NOW), "a receiver trusting the new key"
    assert only_old.verify(BODY, headers, now=NOW), "a receiver trusting the old key"
    content = f"evt_1.{NOW}.".encode() + BODY
    raw_public(only_old.public_key_whpk()).verify(base64.b64decode(entries[1][4:]), content)

    old_signed = only_old.sign(BODY, SignedMessage("evt_2", NOW + 3599))
    assert rotating.verify(BODY, old_signed, now=NOW + 3599), "the old key is trusted in grace"
    assert not rotating.verify(BODY, old_signed, now=NOW + 3600), "and not after"

    clock.advance(3600)
    after = rotating.sign(BODY, SignedMessage("evt_3", NOW + 3600))
    assert after["webhook-signature"].count("v1a,") == 1
    assert only_new.verify(BODY, after, now=NOW + 3600)
    assert not only_old.verify(BODY, after, now=NOW + 3600)


# --------------------------------------------------------------------------- keys and secrets


async def test_the_ed25519_key_is_made_once_in_the_store(tmp_path: Path) -> None:
    keys = MemoryKeyStore()
    first = standard(tmp_path, scheme="ed25519")
    second = standard(tmp_path, scheme="ed25519")
    await first.start(keys)
    await second.start(keys)
    assert keys.creations == {"standard_webhooks_ed25519": 1}
    stored = keys.keys["standard_webhooks_ed25519"]
    assert stored.startswith("whsk_") and len(base64.b64decode(stored[5:])) == 32
    assert first.public_key_whpk() == second.public_key_whpk()
    assert first.public_key_pem() == second.public_key_pem()
    headers = first.sign(BODY, SignedMessage("evt_1", NOW))
    assert second.verify(BODY, headers, now=NOW)
    pem = first.public_key_pem()
    assert pem is not None
    from_pem = serialization.load_pem_public_key(pem.encode())
    raw = from_pem.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert first.public_key_whpk() == "whpk_" + base64.b64encode(raw).decode()


async def test_new_endpoint_secrets(tmp_path: Path) -> None:
    signer = standard(tmp_path)
    secrets = {signer.new_endpoint_secret() for _ in range(20)}
    assert len(secrets) == 20
    for secret in secrets:
        assert secret is not None and secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert standard(tmp_path, scheme="ed25519").new_endpoint_secret() is None
    assert rsa_signer(tmp_path).new_endpoint_secret() is None


@pytest.mark.parametrize(
    "secret",
    [
        None,
        "",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS!",
        whsec(b"k" * 23),
        f"{HMAC_SECRET} whsec_short",
    ],
    ids=["none", "empty", "no-prefix", "not-base64", "23-bytes", "one-of-two-bad"],
)
async def test_a_malformed_secret_is_a_clear_error(tmp_path: Path, secret: str | None) -> None:
    signer = standard(tmp_path)
    await signer.start(MemoryKeyStore())
    with pytest.raises(PluginError, match=r"whsec_|base64|bytes") as raised:
        signer.sign(BODY, SignedMessage("evt_1", NOW, secret))
    assert "MfKQ9r8" not in str(raised.value), "the message never quotes a secret"
    good = signer.sign(BODY, SignedMessage("evt_1", NOW, HMAC_SECRET))
    with pytest.raises(PluginError):
        signer.verify(BODY, good, secret, NOW)


@pytest.mark.parametrize(
    "key",
    [
        "VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=",
        "whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk",
        whsk(b"s" * 31),
        whsk(b"s" * 64),
    ],
    ids=["no-prefix", "bad-padding", "31-bytes", "64-bytes-not-a-pair"],
)
def test_a_malformed_ed25519_key_is_a_clear_error(tmp_path: Path, key: str) -> None:
    with pytest.raises(PluginError, match="private_key"):
        standard(tmp_path, scheme="ed25519", private_key=key)
    with pytest.raises(PluginError, match=r"previous_keys\[0\]"):
        standard(
            tmp_path,
            scheme="ed25519",
            private_key=ED25519_KEY,
            previous_keys=[{"private_key": key, "until": until(NOW)}],
        )


async def test_a_64_byte_seed_and_public_key_is_accepted(tmp_path: Path) -> None:
    reference = standard(tmp_path, scheme="ed25519", private_key=ED25519_KEY)
    await reference.start(MemoryKeyStore())
    public = base64.b64decode((reference.public_key_whpk() or "").removeprefix("whpk_"))
    seed = base64.b64decode(ED25519_KEY.removeprefix("whsk_"))
    long_form = standard(tmp_path, scheme="ed25519", private_key=whsk(seed + public))
    await long_form.start(MemoryKeyStore())
    assert long_form.public_key_whpk() == reference.public_key_whpk()


def test_keys_belong_to_scheme_ed25519(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="applies to scheme ed25519 only"):
        StandardWebhooksConfig.model_validate({"private_key": ED25519_KEY})
    with pytest.raises(ValidationError, match=r"time zone|timezone"):
        StandardWebhooksConfig.model_validate(
            {
                "scheme": "ed25519",
                "previous_keys": [{"private_key": ED25519_KEY, "until": "2030-01-01T00:00:00"}],
            }
        )


async def test_standard_webhooks_needs_start(tmp_path: Path) -> None:
    hmac_signer = standard(tmp_path)
    with pytest.raises(RuntimeError, match="start"):
        hmac_signer.sign(BODY, SignedMessage("evt_1", NOW, HMAC_SECRET))
    ed_signer = standard(tmp_path, scheme="ed25519", private_key=ED25519_KEY)
    for call in (
        lambda: ed_signer.sign(BODY, SignedMessage("evt_1", NOW)),
        ed_signer.public_key_pem,
        ed_signer.public_key_whpk,
    ):
        with pytest.raises(RuntimeError, match="start"):
            call()


# --------------------------------------------------------------------------- rsa_sha256


def rsa_verifies(public_pem: str, signature_b64: str, body: bytes) -> bool:
    public = serialization.load_pem_public_key(public_pem.encode())
    assert isinstance(public, rsa.RSAPublicKey)
    try:
        public.verify(base64.b64decode(signature_b64), body, padding.PKCS1v15(), hashes.SHA256())
    except Exception:
        return False
    return True


async def test_rsa_replicas_share_the_key_made_once_in_the_store(tmp_path: Path) -> None:
    keys = MemoryKeyStore()
    first, second = rsa_signer(tmp_path / "a"), rsa_signer(tmp_path / "b")
    await first.start(keys)
    await second.start(keys)
    assert keys.creations == {"rsa_sha256": 1}
    stored = serialization.load_pem_private_key(keys.keys["rsa_sha256"].encode(), password=None)
    assert keys.keys["rsa_sha256"].startswith("-----BEGIN PRIVATE KEY-----"), "PKCS#8"
    assert isinstance(stored, rsa.RSAPrivateKey) and stored.key_size == 2048
    assert first.public_key_pem() == second.public_key_pem()
    headers = first.sign(BODY, SignedMessage("evt_1", NOW))
    assert second.verify(BODY, headers)
    written = await asyncio.to_thread(os.listdir, tmp_path)
    assert not written, "no key file is written to the data folder"


async def test_rsa_signature_verifies_with_the_published_key(tmp_path: Path) -> None:
    signer = rsa_signer(tmp_path)
    await signer.start(MemoryKeyStore())
    headers = signer.sign(BODY, SignedMessage("evt_1", NOW))
    assert list(headers) == ["videosdk-signature"]
    public_pem = signer.public_key_pem()
    assert public_pem.startswith("-----BEGIN RSA PUBLIC KEY-----"), "PKCS#1, like VideoSDK's"
    assert rsa_verifies(public_pem, headers["videosdk-signature"], BODY)
    assert not rsa_verifies(public_pem, headers["videosdk-signature"], BODY + b" ")

    renamed = rsa_signer(tmp_path, header="X-Callbridge-Signature")
    await renamed.start(MemoryKeyStore())
    assert list(renamed.sign(BODY, SignedMessage("evt_1", NOW))) == ["x-callbridge-signature"]


async def test_rsa_configured_key_is_used_and_the_store_untouched(
    tmp_path: Path, rsa_pems: tuple[str, str]
) -> None:
    keys = MemoryKeyStore()
    signer = rsa_signer(tmp_path, private_key=rsa_pems[0])
    await signer.start(keys)
    assert not keys.creations
    configured = serialization.load_pem_private_key(rsa_pems[0].encode(), password=None)
    expected = configured.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    assert signer.public_key_pem() == expected.decode()


def test_rsa_malformed_keys_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match=r"rsa_sha256\.private_key: not an unencrypted PEM"):
        rsa_signer(tmp_path, private_key="-----BEGIN PRIVATE KEY-----\nnope\n")
    ed = (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    with pytest.raises(PluginError, match="not an RSA key"):
        rsa_signer(tmp_path, private_key=ed)
    with pytest.raises(PluginError, match=r"previous_keys\[0\]\.private_key"):
        rsa_signer(tmp_path, previous_keys=[{"private_key": "x", "until": until(NOW)}])


async def test_rsa_needs_start(tmp_path: Path) -> None:
    signer = rsa_signer(tmp_path)
    for call in (
        lambda: signer.sign(BODY, SignedMessage("evt_1", NOW)),
        lambda: signer.verify(BODY, {"videosdk-signature": "AAAA"}),
        signer.public_key_pem,
    ):
        with pytest.raises(RuntimeError, match="start"):
            call()


async def test_rsa_rotation_sends_the_previous_signature_until_the_grace_ends(
    tmp_path: Path, rsa_pems: tuple[str, str]
) -> None:
    new_pem, old_pem = rsa_pems
    clock = FakeClock(NOW)
    signer = rsa_signer(
        tmp_path,
        clock,
        private_key=new_pem,
        previous_keys=[{"private_key": old_pem, "until": until(NOW + 600)}],
    )
    await signer.start(MemoryKeyStore())
    old = rsa_signer(tmp_path, private_key=old_pem)
    await old.start(MemoryKeyStore())
    new_public, old_public = signer.public_key_pem(), old.public_key_pem()
    assert new_public != old_public

    headers = signer.sign(BODY, SignedMessage("evt_1", NOW))
    assert set(headers) == {"videosdk-signature", "videosdk-signature-previous"}
    assert rsa_verifies(new_public, headers["videosdk-signature"], BODY), "fetched the new key"
    assert rsa_verifies(old_public, headers["videosdk-signature-previous"], BODY), "pinned old"
    assert not rsa_verifies(old_public, headers["videosdk-signature"], BODY)
    assert signer.verify(BODY, headers)
    previous_only = {"videosdk-signature-previous": headers["videosdk-signature-previous"]}
    assert signer.verify(BODY, previous_only, now=NOW + 599)
    assert not signer.verify(BODY, previous_only, now=NOW + 600)
    # The old key's signature in the main header is never the current key's.
    assert not signer.verify(BODY, {"videosdk-signature": headers["videosdk-signature-previous"]})

    clock.advance(599)
    assert "videosdk-signature-previous" in signer.sign(BODY, SignedMessage("evt_2", NOW + 599))
    clock.advance(1)
    after = signer.sign(BODY, SignedMessage("evt_3", NOW + 600))
    assert list(after) == ["videosdk-signature"]
    assert rsa_verifies(new_public, after["videosdk-signature"], BODY)
    assert not signer.verify(BODY, previous_only)


# --------------------------------------------------------------------------- Node.js


NODE_VERIFY = """
const fs = require('fs');
const crypto = require('crypto');
const [pemPath, bodyPath, sig] = process.argv.slice(2);
const pem = fs.readFileSync(pemPath, 'utf8');
const raw = fs.readFileSync(bodyPath, 'utf8');
const signature = Buffer.from(sig, 'base64');
const check = (data) => crypto.verify('RSA-SHA256', data, pem, signature);
console.log(JSON.stringify({
  raw: check(Buffer.from(raw)),
  reserialised: check(Buffer.from(JSON.stringify(JSON.parse(raw)))),
  tampered: check(Buffer.from(raw + ' ')),
}));
"""


async def test_node_verifies_the_rsa_signature_as_videosdk_documents(tmp_path: Path) -> None:
    """VideoSDK's sample verifies ``JSON.stringify(req.body)``, so our compact, non-ASCII-escaping
    JSON must survive a Node round trip byte for byte, and the padding must be PKCS#1 v1.5."""
    node = shutil.which("node")
    if node is None:
        require_or_skip("node is not installed: cannot check the signature with Node's crypto")
    event = {
        "webhookType": "call-ended",
        "data": {
            "callId": "call_1",
            "from": "+14155550100",
            "note": 'Zoë \u2013 東京 📞 line\u2028separator\ttab "quoted" \\ slash',
            "durationMs": 61234,
            "answered": True,
            "roomId": None,
        },
    }
    body = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    signer = rsa_signer(tmp_path)
    await signer.start(MemoryKeyStore())
    signature = signer.sign(body, SignedMessage("evt_1", NOW))["videosdk-signature"]
    (tmp_path / "verify.js").write_text(NODE_VERIFY)
    (tmp_path / "public.pem").write_text(signer.public_key_pem())
    (tmp_path / "body.json").write_bytes(body)
    process = await asyncio.create_subprocess_exec(
        node,
        str(tmp_path / "verify.js"),
        str(tmp_path / "public.pem"),
        str(tmp_path / "body.json"),
        signature,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert json.loads(stdout) == {"raw": True, "reserialised": True, "tampered": False}
