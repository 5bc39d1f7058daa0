"""The Calls API over real HTTP (uvicorn on loopback, httpx client)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from litestar import Litestar

from callbridge.api.errors import NOT_FOUND_BODY
from callbridge.calls.state import CallLifecycle, EndReason
from callbridge.store.ids import new_call_id
from callbridge.store.repository import transaction
from tests.api_app import ApiServer, ApiUnderTest, new_tenant, serving_app

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
CALL_FIELDS = {
    "id",
    "connectorId",
    "provider",
    "providerCallId",
    "from",
    "to",
    "roomId",
    "region",
    "routeStrategy",
    "routeRuleId",
    "metadata",
    "media",
    "status",
    "endReason",
    "endDetail",
    "createdAt",
    "answeredAt",
    "endedAt",
}

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[ApiServer, Litestar]]:
    async with serving_app(tmp_path_factory.mktemp("calls")) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def api(served: tuple[ApiServer, Litestar]) -> ApiUnderTest:
    return await new_tenant(served[0])


@pytest.fixture
def active_calls(served: tuple[ApiServer, Litestar]) -> dict[str, Any]:
    calls: dict[str, Any] = served[1].state.runtime.active_calls
    return calls


class FakeBridge:
    """Stands in for a running CallBridge."""

    def __init__(self) -> None:
        self.hangups = 0

    def request_hangup(self, reason: EndReason) -> None:
        assert reason == EndReason.API_HANGUP
        self.hangups += 1


async def _connector(api: ApiUnderTest, *, other: bool = False) -> str:
    response = await api.client.post(
        "/v2/connectors",
        json={"provider": "twilio"},
        headers=api.other_headers if other else api.headers,
    )
    assert response.status_code == 201, response.text
    connector_id: str = response.json()["data"]["id"]
    return connector_id


async def _call(
    api: ApiUnderTest,
    connector_id: str,
    provider_call_id: str,
    *,
    apikey: str | None = None,
    status: str = "routed",
    **fields: Any,
) -> str:
    """A call in ``status``, brought there through the state machine."""
    lifecycle = CallLifecycle(api.db, api.clock, instance_id="inst_api_test")
    common = {
        "apikey": apikey or api.apikey,
        "connector_id": connector_id,
        "provider": "twilio",
        "provider_call_id": provider_call_id,
        **fields,
    }
    if status == "failed":
        failed = await lifecycle.refuse(detail="no routing strategy chose a room", **common)
        return failed.id
    room_id = common.pop("room_id", None) or "room"
    call = await lifecycle.route(
        call_id=new_call_id(), room_id=room_id, ref_ttl_seconds=90, **common
    )
    if status in ("answered", "ended"):
        assert await lifecycle.answer(call.id) is not None
    if status == "ended":
        assert await lifecycle.end(call.id, EndReason.CALLER_HANGUP) is not None
    return call.id


# --------------------------------------------------------------------------- list and get


async def test_get_call_shape(api: ApiUnderTest) -> None:
    connector_id = await _connector(api)
    call_id = await _call(
        api,
        connector_id,
        "CA0001",
        from_number="+15550001111",
        to_number="+15550002222",
        room_id="room-1",
        account_id="AC123",
    )
    response = await api.client.get(f"/v2/calls/{call_id}", headers=api.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"] == "Call fetched successfully"
    data = body["data"]
    assert set(data) == CALL_FIELDS
    assert data["id"] == call_id
    assert (data["connectorId"], data["provider"], data["providerCallId"]) == (
        connector_id,
        "twilio",
        "CA0001",
    )
    assert (data["from"], data["to"], data["roomId"]) == ("+15550001111", "+15550002222", "room-1")
    assert (data["status"], data["endReason"], data["endDetail"]) == ("routed", None, None)
    assert TIMESTAMP.fullmatch(data["createdAt"])
    assert data["answeredAt"] is None and data["endedAt"] is None

    ended_id = await _call(api, connector_id, "CA0002", status="ended")
    ended = (await api.client.get(f"/v2/calls/{ended_id}", headers=api.headers)).json()["data"]
    assert (ended["status"], ended["endReason"]) == ("ended", "caller-hangup")
    assert TIMESTAMP.fullmatch(ended["answeredAt"]) and TIMESTAMP.fullmatch(ended["endedAt"])
    assert (ended["from"], ended["to"], ended["roomId"]) == (None, None, "room")


async def test_list_newest_first_with_filters_and_pages(api: ApiUnderTest) -> None:
    first, second = await _connector(api), await _connector(api)
    ids = []
    for n, status in enumerate(["routed", "ended", "answered", "failed", "ended"]):
        api.clock.offset += 1
        ids.append(await _call(api, first if n % 2 == 0 else second, f"CA{n}", status=status))
    newest_first = list(reversed(ids))

    listed = await api.client.get("/v2/calls", headers=api.headers)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["message"] == "Calls fetched successfully"
    assert body["pageInfo"] == {"currentPage": 1, "perPage": 20, "lastPage": 1, "total": 5}
    assert [c["id"] for c in body["data"]] == newest_first
    assert all(set(c) == CALL_FIELDS for c in body["data"])

    paged = await api.client.get("/v2/calls", params={"page": 2, "perPage": 2}, headers=api.headers)
    assert paged.json()["pageInfo"] == {"currentPage": 2, "perPage": 2, "lastPage": 3, "total": 5}
    assert [c["id"] for c in paged.json()["data"]] == newest_first[2:4]

    by_connector = await api.client.get(
        "/v2/calls", params={"connectorId": first}, headers=api.headers
    )
    assert [c["id"] for c in by_connector.json()["data"]] == [ids[4], ids[2], ids[0]]
    ended = await api.client.get("/v2/calls", params={"status": "ended"}, headers=api.headers)
    assert [c["id"] for c in ended.json()["data"]] == [ids[4], ids[1]]
    both = await api.client.get(
        "/v2/calls", params={"status": "ended", "connectorId": second}, headers=api.headers
    )
    assert [c["id"] for c in both.json()["data"]] == [ids[1]]
    assert both.json()["pageInfo"]["total"] == 1
    none = await api.client.get(
        "/v2/calls", params={"connectorId": "cn_0000000000000000"}, headers=api.headers
    )
    assert none.status_code == 200 and none.json()["data"] == []
    assert none.json()["pageInfo"] == {"currentPage": 1, "perPage": 20, "lastPage": 1, "total": 0}


@pytest.mark.parametrize(
    ("params", "starts_with"),
    [
        ({"perPage": 0}, "perPage:"),
        ({"perPage": 101}, "perPage:"),
        ({"page": 0}, "page:"),
        ({"page": "x"}, "page:"),
        ({"status": "ringing"}, "status:"),
        ({"connectorId": "c" * 33}, "connectorId:"),
        ({"connectorId": ""}, "connectorId:"),
        ({"connectorId": "cn_\x00"}, "connectorId:"),
    ],
)
async def test_list_validation(api: ApiUnderTest, params: dict[str, Any], starts_with: str) -> None:
    response = await api.client.get("/v2/calls", params=params, headers=api.headers)
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith(starts_with)


async def test_tenant_isolation(api: ApiUnderTest, active_calls: dict[str, Any]) -> None:
    mine = await _call(api, await _connector(api), "CA-mine")
    theirs_connector = await _connector(api, other=True)
    theirs = await _call(api, theirs_connector, "CA-theirs", apikey=api.other_apikey)
    bridge = FakeBridge()
    active_calls[mine] = bridge
    try:
        unknown = await api.client.get("/no/such/path", headers=api.other_headers)
        attempts = [
            await api.client.get(f"/v2/calls/{mine}", headers=api.other_headers),
            await api.client.post(f"/v2/calls/{mine}/hangup", headers=api.other_headers),
            await api.client.get(f"/v2/calls/{theirs}", headers=api.headers),
            await api.client.post(f"/v2/calls/{theirs}/hangup", headers=api.headers),
            await api.client.get("/v2/calls/call_unknown", headers=api.headers),
            await api.client.post("/v2/calls/call_unknown/hangup", headers=api.headers),
        ]
        for response in attempts:
            assert response.status_code == 404
            assert response.content == unknown.content
            assert response.json() == NOT_FOUND_BODY
        assert bridge.hangups == 0
    finally:
        active_calls.pop(mine, None)

    mine_listed = await api.client.get("/v2/calls", headers=api.headers)
    assert [c["id"] for c in mine_listed.json()["data"]] == [mine]
    theirs_listed = await api.client.get(
        "/v2/calls", params={"connectorId": theirs_connector}, headers=api.headers
    )
    assert theirs_listed.json()["data"] == []
    other_listed = await api.client.get("/v2/calls", headers=api.other_headers)
    assert [c["id"] for c in other_listed.json()["data"]] == [theirs]
    async with transaction(api.db) as repo:
        theirs_row = await repo.get_call(api.other_apikey, theirs)
        assert theirs_row is not None and theirs_row.status == "routed"


async def test_authentication_is_required(api: ApiUnderTest) -> None:
    call_id = await _call(api, await _connector(api), "CA-auth")
    for method, url in (
        ("GET", "/v2/calls"),
        ("GET", f"/v2/calls/{call_id}"),
        ("POST", f"/v2/calls/{call_id}/hangup"),
    ):
        response = await api.client.request(method, url)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        bad = await api.client.request(method, url, headers={"Authorization": "Bearer x.y.z"})
        assert bad.status_code == 401
    async with transaction(api.db) as repo:
        row = await repo.get_call(api.apikey, call_id)
        assert row is not None and row.status == "routed"


# --------------------------------------------------------------------------- hang-up


async def test_hangup_of_an_active_call_asks_its_bridge(
    api: ApiUnderTest, active_calls: dict[str, Any]
) -> None:
    call_id = await _call(api, await _connector(api), "CA-live", status="answered")
    bridge = FakeBridge()
    active_calls[call_id] = bridge
    try:
        response = await api.client.post(f"/v2/calls/{call_id}/hangup", headers=api.headers)
    finally:
        active_calls.pop(call_id, None)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["message"] == "Hang-up requested"
    assert body["data"]["id"] == call_id and body["data"]["status"] == "answered"
    assert set(body["data"]) == CALL_FIELDS
    assert bridge.hangups == 1
    async with transaction(api.db) as repo:  # the bridge, not the API, records the end
        row = await repo.get_call(api.apikey, call_id)
        assert row is not None and row.status == "answered"


async def test_hangup_of_a_routed_call_ends_it(api: ApiUnderTest) -> None:
    call_id = await _call(api, await _connector(api), "CA-early")
    api.clock.offset += 3
    response = await api.client.post(f"/v2/calls/{call_id}/hangup", headers=api.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"] == "Call ended"
    data = body["data"]
    assert (data["status"], data["endReason"]) == ("ended", "api-hangup")
    assert TIMESTAMP.fullmatch(data["endedAt"]) and data["answeredAt"] is None
    got = (await api.client.get(f"/v2/calls/{call_id}", headers=api.headers)).json()["data"]
    assert got == data
    again = await api.client.post(f"/v2/calls/{call_id}/hangup", headers=api.headers)
    assert again.status_code == 409
    assert again.json() == {"message": "call already ended"}


async def test_hangup_of_an_answered_call_not_bridged_here_ends_it(api: ApiUnderTest) -> None:
    call_id = await _call(api, await _connector(api), "CA-stale", status="answered")
    response = await api.client.post(f"/v2/calls/{call_id}/hangup", headers=api.headers)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["endReason"] == "api-hangup"


@pytest.mark.parametrize("status", ["ended", "failed"])
async def test_hangup_of_an_ended_call_is_409(api: ApiUnderTest, status: str) -> None:
    call_id = await _call(api, await _connector(api), f"CA-{status}", status=status)
    response = await api.client.post(f"/v2/calls/{call_id}/hangup", headers=api.headers)
    assert response.status_code == 409
    assert response.json() == {"message": "call already ended"}
    async with transaction(api.db) as repo:
        row = await repo.get_call(api.apikey, call_id)
        assert row is not None and row.status == status


async def test_openapi_document(api: ApiUnderTest) -> None:
    doc = (await api.client.get("/schema/openapi.json")).json()
    paths = doc["paths"]
    expected = {
        ("/v2/calls", "get"): {"200", "400", "401", "429"},
        ("/v2/calls/{call_id}", "get"): {"200", "400", "401", "429", "404"},
        ("/v2/calls/{call_id}/hangup", "post"): {"200", "202", "400", "401", "429", "404", "409"},
    }
    for (path, method), statuses in expected.items():
        operation = paths[path][method]
        assert set(operation["responses"]) == statuses, (path, method)
        assert operation["security"] == [{"apiToken": []}]
        for status in statuses - {"200", "202"}:
            schema = operation["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}
    hangup = paths["/v2/calls/{call_id}/hangup"]["post"]["responses"]
    for status in ("200", "202"):
        schema = hangup[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/CallResponse"}
    list_params = {p["name"]: p for p in paths["/v2/calls"]["get"]["parameters"]}
    assert set(list_params) == {"page", "perPage", "connectorId", "status"}
    call = doc["components"]["schemas"]["CallData"]
    assert set(call["required"]) == CALL_FIELDS
    assert call["properties"]["status"]["allOf"] == [{"$ref": "#/components/schemas/CallStatus"}]
    statuses = doc["components"]["schemas"]["CallStatus"]["enum"]
    assert statuses == ["routed", "answered", "ended", "failed"]
    reasons = doc["components"]["schemas"]["EndReason"]["enum"]
    assert reasons == [reason.value for reason in EndReason]
