"""The shipped Grafana dashboard fills after a few simulated calls: every panel queries at least
one metric family that the server's ``GET /metrics`` then holds samples of."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx

from tests import twilio_wire as tw
from tests.live_calls import tone_participant, twilio_caller
from tests.servers import create_connector, running_in_process
from tests.webhook_receiver import receiving

DASHBOARD = (
    Path(__file__).parent.parent
    / "deploy"
    / "observability"
    / "grafana"
    / "dashboards"
    / "callbridge.json"
)
_SERIES_SUFFIX = re.compile(r"_(bucket|count|sum)$")


def mark_echo(stream_sid: str, name: str) -> str:
    return json.dumps(
        {"event": "mark", "streamSid": stream_sid, "sequenceNumber": "900", "mark": {"name": name}}
    )


def sampled_families(text: str) -> set[str]:
    """Metric families with at least one sample line in Prometheus text."""
    families = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][\w:]*", line)
            if name is not None:
                families.add(_SERIES_SUFFIX.sub("", name.group(0)))
    return families


async def test_every_panel_has_data_after_a_few_simulated_calls(tmp_path: Path) -> None:
    overrides = {"webhooks": {"allow_networks": ["127.0.0.0/8"], "poll_interval_seconds": 0.1}}
    with running_in_process(tmp_path, overrides) as server:
        token = server.token()
        headers = {"Authorization": f"Bearer {token}"}
        async with receiving() as receiver, httpx.AsyncClient(headers=headers) as client:
            created = await client.post(
                f"{server.url}/v2/webhooks",
                json={"url": f"{receiver.url}/hook", "events": ["call-started", "call-hangup"]},
            )
            assert created.status_code == 201
            connector = create_connector(server.url, token, defaultRoomId="dash")
            room_url = f"ws://127.0.0.1:{server.port}/v2/rooms/dash/participants?token={token}"
            for _ in range(2):  # two answered calls with a room member talking back
                form = tw.voice_webhook_form()
                answer = await tw.post_webhook(connector.webhook_url, form)
                assert answer.stream_url is not None
                async with (
                    tone_participant(room_url) as participant,
                    twilio_caller(answer.stream_url, form["CallSid"]) as caller,
                ):
                    await asyncio.sleep(0.5)
                    # a mark, echoed by the provider as played, then a clear confirmed by
                    # the echo of the next mark (Twilio's way): both latencies measured
                    for name in ("played", "flushed"):
                        await participant.send({"event": "mark", "name": name})
                        await asyncio.sleep(0.1)
                        if name == "flushed":
                            await participant.send({"event": "clear"})
                            await asyncio.sleep(0.05)
                        await caller.inject(mark_echo(caller.stream_sid, name))
                    await asyncio.sleep(0.5)
                    await caller.stop(final=tw.stop(caller.stream_sid, form["CallSid"], 9999))
            # and a call nothing routes: a failure by reason
            unrouted = create_connector(server.url, token)
            await tw.post_webhook(unrouted.webhook_url, tw.voice_webhook_form())
            await receiver.wait_for(4)
            await asyncio.sleep(0.5)
            text = (await client.get(f"{server.url}/metrics")).text

    sampled = sampled_families(text)
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    empty = []
    for panel in dashboard["panels"]:
        queried = {
            _SERIES_SUFFIX.sub("", token)
            for target in panel["targets"]
            for token in re.findall(r"callbridge_\w+", target["expr"])
        }
        if not queried & sampled:
            empty.append((panel["title"], sorted(queried)))
    assert not empty, f"panels without data: {empty}"
    assert re.search(r'callbridge_calls_total\{[^}]*outcome="failed"[^}]*\} 1\.0', text)
