"""SIP credentials: the ``/v2/sip/credentials`` API over real HTTP, and authenticating SIP
requests with them (:func:`callbridge.sip.auth.authenticate`), on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import pytest_asyncio
from litestar import Litestar
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from callbridge.crypto import CredentialBox
from callbridge.settings import SipSettings
from callbridge.sip import store
from callbridge.sip.auth import (
    LAST_USED_RESOLUTION,
    NONCE_KEY_NAME,
    SipAuthResult,
    authenticate,
    authenticate_by_source,
    load_digest_auth,
)
from callbridge.sip.digest import DigestAuth, Verdict, parse_auth_params
from callbridge.store.db import Database
from callbridge.store.models import ApiKey, Base
from callbridge.store.repository import transaction
from tests.api_app import ApiServer, ApiUnderTest, new_tenant, serving_app
from tests.keystores import MemoryKeyStore
from tests.stores import START, StepClock, clock, database, db

__all__ = ["clock", "database", "db"]  # fixtures

DOMAIN = "sip.example.test"
CREDENTIAL_ID = re.compile(r"^sc_[a-z0-9]{16}$")
USERNAME = re.compile(r"^sip[a-z0-9]{17}$")
PASSWORD = re.compile(r"^[A-Za-z0-9]{32}$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
PUBLIC_FIELDS = {
    "id",
    "name",
    "authenticateBy",
    "username",
    "domain",
    "sipUri",
    "allowedNetworks",
    "createdAt",
    "rotatedAt",
    "lastUsedAt",
}
BASE = "/v2/sip/credentials"
TRUNK_NETWORKS = ["203.0.113.0/24", "2001:db8::/32"]
CLIENT_IP = "127.0.0.1"

# The API tests share one server per module (each test has its own API keys); the store
# tests below run on their own fresh database, SQLite and PostgreSQL.
module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[ApiServer, Litestar]]:
    overrides = {"sip": {"domain": DOMAIN}}
    async with serving_app(tmp_path_factory.mktemp("sip-api"), overrides) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def box(served: tuple[ApiServer, Litestar]) -> CredentialBox:
    credential_box = served[1].state.runtime.credential_box
    assert isinstance(credential_box, CredentialBox)
    return credential_box


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def digest(served: tuple[ApiServer, Litestar]) -> DigestAuth:
    runtime = served[1].state.runtime
    return DigestAuth(
        b"n" * 32, nonce_seconds=runtime.settings.sip.nonce_seconds, clock=served[0].clock
    )


@pytest_asyncio.fixture(loop_scope="module")
async def api(served: tuple[ApiServer, Litestar]) -> ApiUnderTest:
    return await new_tenant(served[0])


# --------------------------------------------------------------------------- a SIP client


def answer(
    challenge: str,
    username: str,
    password: str,
    *,
    method: str = "INVITE",
    uri: str = f"sip:room42@{DOMAIN}",
    nc: int = 1,
) -> str:
    """The ``Authorization`` a client sends in answer to ``challenge`` (RFC 7616, MD5 or
    SHA-256, qop=auth), computed here independently of the server's code."""
    fields = parse_auth_params(challenge.removeprefix("Digest "))
    name = "md5" if fields["algorithm"] == "MD5" else "sha256"

    def h(value: str) -> str:
        return hashlib.new(name, value.encode()).hexdigest()

    cnonce, count = "8a7f2c1e", f"{nc:08x}"
    ha1 = h(f"{username}:{fields['realm']}:{password}")
    ha2 = h(f"{method}:{uri}")
    response = h(f"{ha1}:{fields['nonce']}:{count}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{username}", realm="{fields["realm"]}", nonce="{fields["nonce"]}", '
        f'uri="{uri}", response="{response}", algorithm={fields["algorithm"]}, qop=auth, '
        f'nc={count}, cnonce="{cnonce}", opaque="{fields["opaque"]}"'
    )


async def sip_login(
    database: Database,
    box: CredentialBox,
    digest: DigestAuth,
    username: str,
    password: str,
    *,
    source_ip: str = CLIENT_IP,
    clock: Any = None,
    algorithm: str = "MD5",
) -> SipAuthResult:
    """One challenge and answer, checked by :func:`authenticate` as the SIP endpoint would."""
    challenge = digest.challenge(DOMAIN, algorithm)  # type: ignore[arg-type]
    return await authenticate(
        database,
        box,
        digest,
        authorization=answer(challenge, username, password),
        method="INVITE",
        source_ip=source_ip,
        realm=DOMAIN,
        algorithm=algorithm,  # type: ignore[arg-type]
        **({} if clock is None else {"clock": clock}),
    )


async def _create(api: ApiUnderTest, body: dict[str, Any] | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {} if body is None else {"json": body}
    response = await api.client.post(BASE, headers=api.headers, **kwargs)
    assert response.status_code == 201, response.text
    assert response.json()["message"] == "SIP credential created successfully"
    data: dict[str, Any] = response.json()["data"]
    return data


# --------------------------------------------------------------------------- the API


@module_loop
async def test_create_shows_the_password_once(api: ApiUnderTest) -> None:
    created = await _create(api)
    assert set(created) == PUBLIC_FIELDS | {"password"}
    assert CREDENTIAL_ID.fullmatch(created["id"])
    assert USERNAME.fullmatch(created["username"])
    assert PASSWORD.fullmatch(created["password"])
    assert created["domain"] == DOMAIN
    assert created["sipUri"] == f"sip:<roomId>@{DOMAIN}"
    assert created["name"] is None and created["allowedNetworks"] is None
    assert created["authenticateBy"] == "digest"
    assert TIMESTAMP.fullmatch(created["createdAt"])
    assert created["rotatedAt"] is None and created["lastUsedAt"] is None

    listed = await api.client.get(BASE, headers=api.headers)
    one = await api.client.get(f"{BASE}/{created['id']}", headers=api.headers)
    assert listed.status_code == 200 and one.status_code == 200
    assert listed.json()["data"] == [one.json()["data"]]
    assert set(one.json()["data"]) == PUBLIC_FIELDS
    assert one.json()["data"] == {k: v for k, v in created.items() if k != "password"}
    for response in (listed, one):
        assert created["password"] not in response.text and '"password"' not in response.text


@module_loop
async def test_create_with_a_name_and_an_allow_list(api: ApiUnderTest) -> None:
    created = await _create(
        api,
        {
            "name": "carrier trunk",
            "allowedNetworks": ["203.0.113.7/24", "203.0.113.0/24", "2001:DB8::/32", "192.0.2.1"],
        },
    )
    assert created["name"] == "carrier trunk"
    # Host bits cleared, duplicates dropped, a single address is a /32.
    assert created["allowedNetworks"] == [*TRUNK_NETWORKS, "192.0.2.1/32"]
    empty_body = await api.client.post(BASE, headers=api.headers, content=b"")
    assert empty_body.status_code == 201
    assert (await _create(api, {}))["allowedNetworks"] is None
    assert (await _create(api, {"allowedNetworks": None}))["allowedNetworks"] is None


@module_loop
async def test_a_credential_that_authenticates_by_source(api: ApiUnderTest) -> None:
    created = await _create(
        api,
        {
            "name": "carrier",
            "authenticateBy": "source",
            "allowedNetworks": ["203.0.113.0/24", "2001:db8:1::/48"],
        },
    )
    assert created["authenticateBy"] == "source"
    assert created["allowedNetworks"] == ["203.0.113.0/24", "2001:db8:1::/48"]
    shown = await api.client.get(f"{BASE}/{created['id']}", headers=api.headers)
    assert shown.json()["data"]["authenticateBy"] == "source"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"allowedNetworks": ["10.0.0.0/33"]},
            "allowedNetworks[0]: not a network in CIDR notation (e.g. 203.0.113.0/24 or "
            "2001:db8::/32)",
        ),
        (
            {"allowedNetworks": ["10.0.0.0/8", "trunk.example.com"]},
            "allowedNetworks[1]: not a network in CIDR notation",
        ),
        ({"allowedNetworks": ["256.1.1.1"]}, "allowedNetworks[0]: not a network"),
        ({"allowedNetworks": ["fe80::1%eth0"]}, "allowedNetworks[0]: not a network"),
        ({"allowedNetworks": ["2001:db8::/129"]}, "allowedNetworks[0]: not a network"),
        ({"allowedNetworks": []}, "allowedNetworks: list at least one network"),
        ({"allowedNetworks": "10.0.0.0/8"}, "allowedNetworks: Expected `array | null`"),
        ({"allowedNetworks": [10]}, "allowedNetworks[0]: Expected `str`"),
        ({"name": 5}, "name: Expected `str | null`"),
        ({"password": "mine"}, "password: unknown field"),
        ({"authenticateBy": "ip"}, "authenticateBy: "),
        (
            {"authenticateBy": "source"},
            "allowedNetworks: authenticateBy source needs the trunk's networks",
        ),
        (
            {"authenticateBy": "source", "allowedNetworks": None},
            "allowedNetworks: authenticateBy source needs the trunk's networks",
        ),
        (
            {"authenticateBy": "source", "allowedNetworks": ["203.0.113.0/24", "10.0.0.0/8"]},
            "allowedNetworks[1]: wider than /16",
        ),
        ({"authenticateBy": "source", "allowedNetworks": ["2001:db8::/32"]}, "allowedNetworks[0]"),
        ([], "body: Expected `object`"),
    ],
)
@module_loop
async def test_bad_bodies_are_400(api: ApiUnderTest, body: Any, message: str) -> None:
    response = await api.client.post(BASE, json=body, headers=api.headers)
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith(message)


@module_loop
async def test_another_keys_credential_is_not_found(api: ApiUnderTest) -> None:
    created = await _create(api)
    url = f"{BASE}/{created['id']}"
    for response in (
        await api.client.get(url, headers=api.other_headers),
        await api.client.post(f"{url}/rotate", headers=api.other_headers),
        await api.client.delete(url, headers=api.other_headers),
        await api.client.get(f"{BASE}/sc_0000000000000000", headers=api.headers),
        await api.client.post(f"{BASE}/sc_0000000000000000/rotate", headers=api.headers),
        await api.client.delete(f"{BASE}/sc_0000000000000000", headers=api.headers),
    ):
        assert response.status_code == 404
        assert response.json() == {"message": "Not found"}
    others = await api.client.get(BASE, headers=api.other_headers)
    assert others.json()["data"] == []
    assert (await api.client.get(url, headers=api.headers)).status_code == 200


@module_loop
async def test_a_token_is_required(api: ApiUnderTest) -> None:
    for response in (
        await api.client.get(BASE),
        await api.client.post(BASE, json={}),
        await api.client.post(f"{BASE}/sc_0000000000000000/rotate"),
        await api.client.delete(f"{BASE}/sc_0000000000000000"),
    ):
        assert response.status_code == 401


@module_loop
async def test_list_pages_newest_first(api: ApiUnderTest) -> None:
    ids = []
    for _ in range(3):
        ids.append((await _create(api))["id"])
        api.clock.offset += 1
    page = await api.client.get(BASE, params={"perPage": 2, "page": 2}, headers=api.headers)
    body = page.json()
    assert body["pageInfo"] == {"currentPage": 2, "perPage": 2, "lastPage": 2, "total": 3}
    assert [item["id"] for item in body["data"]] == [ids[0]]


@module_loop
async def test_the_password_authenticates_sip_requests(
    api: ApiUnderTest, box: CredentialBox, digest: DigestAuth
) -> None:
    created = await _create(api)
    result = await sip_login(api.db, box, digest, created["username"], created["password"])
    assert result.ok, result.reason
    assert result.principal is not None
    assert result.principal.apikey == api.apikey
    assert result.principal.credential_id == created["id"]
    got = (await api.client.get(f"{BASE}/{created['id']}", headers=api.headers)).json()["data"]
    assert TIMESTAMP.fullmatch(got["lastUsedAt"])
    wrong = await sip_login(api.db, box, digest, created["username"], "x" * 32)
    assert wrong.verdict is Verdict.REFUSED


@module_loop
async def test_rotate_replaces_the_password_at_once(
    api: ApiUnderTest, box: CredentialBox, digest: DigestAuth
) -> None:
    created = await _create(api, {"name": "pbx"})
    api.clock.offset += 5
    response = await api.client.post(f"{BASE}/{created['id']}/rotate", headers=api.headers)
    assert response.status_code == 200, response.text
    assert response.json()["message"] == "SIP credential rotated successfully"
    rotated = response.json()["data"]
    assert set(rotated) == PUBLIC_FIELDS | {"password"}
    assert PASSWORD.fullmatch(rotated["password"]) and rotated["password"] != created["password"]
    assert rotated["username"] == created["username"] and rotated["name"] == "pbx"
    assert (
        TIMESTAMP.fullmatch(rotated["rotatedAt"]) and rotated["createdAt"] == created["createdAt"]
    )

    old = await sip_login(api.db, box, digest, created["username"], created["password"])
    assert old.verdict is Verdict.REFUSED
    new = await sip_login(api.db, box, digest, created["username"], rotated["password"])
    assert new.ok, new.reason
    shown = (await api.client.get(f"{BASE}/{created['id']}", headers=api.headers)).text
    assert rotated["password"] not in shown


@module_loop
async def test_delete(api: ApiUnderTest, box: CredentialBox, digest: DigestAuth) -> None:
    created = await _create(api)
    url = f"{BASE}/{created['id']}"
    response = await api.client.delete(url, headers=api.headers)
    assert response.status_code == 200
    assert response.json() == {"message": "SIP credential deleted successfully"}
    assert (await api.client.get(url, headers=api.headers)).status_code == 404
    assert (await api.client.delete(url, headers=api.headers)).status_code == 404
    gone = await sip_login(api.db, box, digest, created["username"], created["password"])
    assert gone.verdict is Verdict.REFUSED and gone.reason == "unknown username"


@module_loop
async def test_the_allow_list_refuses_other_source_addresses(
    api: ApiUnderTest, box: CredentialBox, digest: DigestAuth
) -> None:
    created = await _create(api, {"allowedNetworks": TRUNK_NETWORKS})
    user, password = created["username"], created["password"]
    for inside in ("203.0.113.9", "::ffff:203.0.113.200", "2001:db8::5", "2001:db8:ffff::1"):
        result = await sip_login(api.db, box, digest, user, password, source_ip=inside)
        assert result.ok, (inside, result.reason)
    for outside in ("198.51.100.1", "203.0.114.1", "2001:db9::1", "::1", "not-an-ip"):
        result = await sip_login(api.db, box, digest, user, password, source_ip=outside)
        assert result.verdict is Verdict.FORBIDDEN, outside
        assert result.principal is None
    # Even a wrong password from outside is FORBIDDEN: no password oracle for other addresses.
    result = await sip_login(api.db, box, digest, user, "x" * 32, source_ip="198.51.100.1")
    assert result.verdict is Verdict.FORBIDDEN


@module_loop
async def test_passwords_are_encrypted_and_never_logged(
    api: ApiUnderTest,
    box: CredentialBox,
    digest: DigestAuth,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await _create(api, {"allowedNetworks": ["127.0.0.0/8"]})
    rotated = (await api.client.post(f"{BASE}/{created['id']}/rotate", headers=api.headers)).json()[
        "data"
    ]
    passwords = [created["password"], rotated["password"]]
    user = created["username"]
    await sip_login(api.db, box, digest, user, rotated["password"])
    await sip_login(api.db, box, digest, user, created["password"])
    await sip_login(api.db, box, digest, user, rotated["password"], source_ip="192.0.2.1")
    await api.client.get(BASE, headers=api.headers)

    async with api.db.session() as session:
        token = (
            await session.execute(
                text("SELECT password FROM sip_credentials WHERE id = :id"), {"id": created["id"]}
            )
        ).scalar_one()
    assert token.startswith("v1.")
    assert box.decrypt(token, created["id"]) == {"password": rotated["password"]}
    with pytest.raises(ValueError, match="cannot be decrypted"):
        box.decrypt(token, "sc_0000000000000000")  # bound to its credential
    dump: list[str] = []
    async with api.db.engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            for row in await connection.execute(select(table)):
                dump.extend(str(value) for value in row)
    schema = (await api.client.get("/schema/openapi.json")).text
    for password in passwords:
        assert password not in "\n".join(dump)
        assert password not in schema

    # Generated passwords are redacted even where code would log them.
    logging.getLogger("tests.sip").warning("leak attempt: %s", rotated["password"])
    logged = caplog.text + "".join(capfd.readouterr())
    assert "leak attempt: [redacted]" in caplog.text
    for password in passwords:
        assert password not in logged


@module_loop
async def test_the_api_is_documented(api: ApiUnderTest) -> None:
    doc = (await api.client.get("/schema/openapi.json")).json()
    collection = doc["paths"][BASE]
    assert set(collection) == {"get", "post"}
    assert collection["post"]["requestBody"]["required"] is False
    assert set(doc["paths"][f"{BASE}/{{credential_id}}"]) == {"get", "delete"}
    assert set(doc["paths"][f"{BASE}/{{credential_id}}/rotate"]) == {"post"}
    request = doc["components"]["schemas"]["CreateSipCredentialRequest"]
    assert request["additionalProperties"] is False
    networks = request["properties"]["allowedNetworks"]
    assert networks["minItems"] == 1 and networks["items"]["pattern"].startswith("^")
    with_password = doc["components"]["schemas"]["SipCredentialWithPassword"]
    assert "password" in with_password["properties"]
    assert "password" not in doc["components"]["schemas"]["SipCredentialData"]["properties"]


# --------------------------------------------------------------------------- the store


async def _apikey(database: Database, clock: StepClock, name: str = "k") -> str:
    async with transaction(database, clock) as repo:
        return (await repo.create_api_key(name)).apikey


async def _stored(
    database: Database,
    clock: StepClock,
    box: CredentialBox,
    apikey: str,
    networks: list[str] | None = None,
    by: str = store.DIGEST,
) -> tuple[store.SipCredential, str]:
    credential_id, password = store.new_credential_id(), store.new_password()
    async with transaction(database, clock, write=True) as repo:
        row = await store.create_credential(
            repo.session,
            credential_id=credential_id,
            apikey=apikey,
            username=store.new_username(),
            password_token=store.seal_password(box, password, credential_id),
            now=repo.now(),
            allowed_networks=None
            if networks is None
            else [store.parse_network(n) for n in networks],
            authenticate_by=by,
        )
    return row, password


@pytest.fixture
def local_box() -> CredentialBox:
    return CredentialBox(b"k" * 32)


async def test_store_queries(db: Database, clock: StepClock, local_box: CredentialBox) -> None:
    apikey, other = await _apikey(db, clock), await _apikey(db, clock, "other")
    first, password = await _stored(db, clock, local_box, apikey, ["10.0.0.0/8"])
    clock.advance(1)
    second, _ = await _stored(db, clock, local_box, apikey)
    await _stored(db, clock, local_box, other)
    async with transaction(db, clock) as repo:
        total, rows = await store.list_credentials(repo.session, apikey, limit=10)
        assert total == 2 and [r.id for r in rows] == [second.id, first.id]
        found = await store.get_by_username(repo.session, first.username)
        assert found is not None and found.id == first.id
        assert store.open_password(local_box, found) == password
        assert store.shown_networks(found) == ["10.0.0.0/8"]
        assert await store.get_credential(repo.session, other, first.id) is None
        assert await store.get_by_username(repo.session, "nobody\x00") is None
        assert await store.get_credential(repo.session, apikey, "sc_\x00") is None
    async with transaction(db, clock, write=True) as repo:
        row = await store.get_credential(repo.session, apikey, first.id)
        assert row is not None
        store.set_password(
            row, store.seal_password(local_box, "new-password-123", row.id), repo.now()
        )
        await store.touch_last_used(repo.session, row.id, repo.now())
    async with transaction(db, clock) as repo:
        row = await store.get_credential(repo.session, apikey, first.id)
        assert row is not None and store.open_password(local_box, row) == "new-password-123"
        assert row.rotated_at == row.last_used_at == datetime.fromtimestamp(clock.now, UTC)
    async with transaction(db, clock, write=True) as repo:
        assert not await store.delete_credential(repo.session, other, first.id)
        assert await store.delete_credential(repo.session, apikey, first.id)
        assert not await store.delete_credential(repo.session, apikey, first.id)


async def test_usernames_are_unique(
    db: Database, clock: StepClock, local_box: CredentialBox
) -> None:
    apikey = await _apikey(db, clock)
    row, _ = await _stored(db, clock, local_box, apikey)
    with pytest.raises(IntegrityError):
        async with transaction(db, clock, write=True) as repo:
            await store.create_credential(
                repo.session,
                credential_id=store.new_credential_id(),
                apikey=apikey,
                username=row.username,
                password_token="v1.x",
                now=repo.now(),
            )


async def test_credentials_go_with_their_api_key(
    db: Database, clock: StepClock, local_box: CredentialBox
) -> None:
    apikey = await _apikey(db, clock)
    await _stored(db, clock, local_box, apikey)
    async with transaction(db, clock) as repo:
        await repo.session.delete(await repo.session.get(ApiKey, apikey))
    async with transaction(db, clock) as repo:
        assert (await store.list_credentials(repo.session, apikey, limit=10))[0] == 0


async def test_the_narrowest_source_network_names_the_credential(
    db: Database, clock: StepClock, local_box: CredentialBox
) -> None:
    apikey, other = await _apikey(db, clock), await _apikey(db, clock, "other")
    wide, _ = await _stored(db, clock, local_box, apikey, ["198.51.0.0/16"], by=store.SOURCE)
    narrow, _ = await _stored(db, clock, local_box, other, ["198.51.100.0/24"], by=store.SOURCE)
    await _stored(db, clock, local_box, apikey, ["198.51.100.7/32"])  # digest: never by source

    async def by_source(ip: str) -> SipAuthResult:
        return await authenticate_by_source(db, source_ip=ip, clock=clock)

    inside = await by_source("198.51.100.7")
    assert inside.ok and inside.principal is not None
    assert (inside.principal.apikey, inside.principal.credential_id) == (other, narrow.id)
    mapped = await by_source("::ffff:198.51.7.1")
    assert mapped.ok and mapped.principal is not None and mapped.principal.credential_id == wide.id
    assert (await by_source("192.0.2.1")).verdict is Verdict.REFUSED
    assert (await by_source("not an address")).verdict is Verdict.REFUSED

    await _stored(db, clock, local_box, apikey, ["198.51.100.0/24"], by=store.SOURCE)
    tie = await by_source("198.51.100.7")
    assert tie.verdict is Verdict.FORBIDDEN and "several" in tie.reason
    async with transaction(db, clock) as repo:
        used = await store.get_by_username(repo.session, narrow.username)
    assert used is not None and used.last_used_at is not None


async def test_authenticate_on_the_store(
    db: Database, clock: StepClock, local_box: CredentialBox
) -> None:
    keys = MemoryKeyStore()
    digest = await load_digest_auth(keys, SipSettings(nonce_seconds=30), clock)
    # Replicas sharing the store share the nonce key: they accept each other's nonces.
    twin = await load_digest_auth(keys, SipSettings(nonce_seconds=30), clock)
    assert keys.creations[NONCE_KEY_NAME] == 1
    apikey = await _apikey(db, clock)
    row, password = await _stored(db, clock, local_box, apikey, ["127.0.0.1/32"])

    challenge = digest.challenge(DOMAIN, "SHA-256")
    authorization = answer(
        challenge, row.username, password, uri=f"sip:r@{DOMAIN}:5070;transport=tcp"
    )

    async def check(header: str, ip: str = CLIENT_IP, checker: DigestAuth = twin) -> SipAuthResult:
        return await authenticate(
            db,
            local_box,
            checker,
            authorization=header,
            method="INVITE",
            source_ip=ip,
            realm=DOMAIN,
            algorithm="SHA-256",
            clock=clock,
        )

    result = await check(authorization)
    assert result.ok and result.principal is not None and result.principal.apikey == apikey
    assert (await check(authorization)).verdict is Verdict.STALE  # replayed (nonce, nc)
    assert (await check(authorization, "10.0.0.1")).verdict is Verdict.FORBIDDEN
    assert (await check("Basic dTpw")).verdict is Verdict.REFUSED
    assert (await check(authorization.replace(row.username, "sipnobody"))).reason == (
        "unknown username"
    )
    clock.advance(31)
    stale = await check(answer(challenge, row.username, password, nc=2))
    assert stale.stale and stale.reason == "nonce expired"

    async with transaction(db, clock) as repo:
        used = await store.get_by_username(repo.session, row.username)
    assert used is not None and used.last_used_at == datetime.fromtimestamp(START, UTC)
    # last_used_at is written at most once per LAST_USED_RESOLUTION (from START).
    clock.now = START + LAST_USED_RESOLUTION.total_seconds() - 1
    assert (await check(answer(digest.challenge(DOMAIN, "SHA-256"), row.username, password))).ok
    async with transaction(db, clock) as repo:
        used = await store.get_by_username(repo.session, row.username)
    assert used is not None and used.last_used_at == datetime.fromtimestamp(START, UTC)
    clock.advance(1)
    assert (await check(answer(digest.challenge(DOMAIN, "SHA-256"), row.username, password))).ok
    async with transaction(db, clock) as repo:
        used = await store.get_by_username(repo.session, row.username)
    assert used is not None and used.last_used_at == datetime.fromtimestamp(clock.now, UTC)

    # A token that no longer decrypts (the credentials key changed) refuses, never raises.
    other_box = CredentialBox(b"o" * 32)
    undecryptable = await authenticate(
        db,
        other_box,
        twin,
        authorization=answer(digest.challenge(DOMAIN, "SHA-256"), row.username, password),
        method="INVITE",
        source_ip=CLIENT_IP,
        realm=DOMAIN,
        algorithm="SHA-256",
        clock=clock,
    )
    assert undecryptable.verdict is Verdict.REFUSED
