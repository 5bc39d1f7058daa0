"""Every provider through the real CLI and a real server process: the two-tone test, DTMF and
the freed room leg, with each provider's simulator playing the provider."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callbridge.media.analysis import dominant_frequency, level_dbfs, trim_silence
from callbridge.media.wav import read_wav
from tests.servers import ServerProcess, create_connector, popen_cli, start_process

pytestmark = pytest.mark.e2e

PROVIDERS = ["twilio", "plivo", "telnyx", "custom"]
SENT_LEVEL_DBFS = 20 * math.log10(0.5 / math.sqrt(2))


@pytest.fixture(scope="module")
def all_providers_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_process(tmp_path_factory.mktemp("server"), {"providers": {"enabled": PROVIDERS}})
    try:
        yield server
    finally:
        server.stop()


def assert_tone(path: Path, rate: int, frequency: float) -> None:
    heard, actual_rate = read_wav(path)
    assert actual_rate == rate
    tone = trim_silence(heard, rate)
    assert len(tone) > rate * 2.5, "most of the call was heard"
    assert abs(dominant_frequency(tone, rate) - frequency) <= 10
    assert abs(level_dbfs(tone) - SENT_LEVEL_DBFS) <= 6


@pytest.mark.parametrize("provider", [p for p in PROVIDERS if p != "twilio"])
def test_provider_end_to_end(
    all_providers_server: ServerProcess, tmp_path: Path, provider: str
) -> None:
    server = all_providers_server
    token = server.token()
    room = f"e2e-{provider}"
    connector = create_connector(server.url, token, provider=provider, defaultRoomId=room)
    participant_wav, caller_wav = tmp_path / "participant.wav", tmp_path / "caller.wav"
    participant = popen_cli(
        "room",
        "join",
        room,
        "--server",
        server.url,
        "--token",
        token,
        "--tone",
        "1000",
        "--record",
        str(participant_wav),
        "--seconds",
        "6",
        "--json",
    )
    time.sleep(0.8)
    caller = popen_cli(
        "call",
        "--provider",
        provider,
        "--webhook-url",
        connector.webhook_url,
        "--tone",
        "440",
        "--record",
        str(caller_wav),
        "--seconds",
        "3.5",
        "--dtmf",
        "47",
        "--json",
    )
    caller_out, caller_err = caller.communicate(timeout=60)
    participant_out, participant_err = participant.communicate(timeout=60)
    assert caller.returncode == 0, caller_out + caller_err
    assert participant.returncode == 0, participant_out + participant_err
    caller_summary = json.loads(caller_out.strip().splitlines()[-1])
    participant_summary = json.loads(participant_out.strip().splitlines()[-1])

    assert_tone(participant_wav, 16000, 440)
    heard_rate = read_wav(caller_wav)[1]
    assert_tone(caller_wav, heard_rate, 1000)
    problems = [
        e
        for e in caller_summary["events"]
        if e.get("event") in {"protocol-error", "bad-frame-size"}
    ]
    assert problems == []

    events = participant_summary["events"]
    assert [e["digit"] for e in events if e.get("event") == "dtmf"] == ["4", "7"]
    joined = [e["participantId"] for e in events if e.get("event") == "participant-joined"]
    left = [e["participantId"] for e in events if e.get("event") == "participant-left"]
    assert len(joined) == 1 and left == joined, "the call joined once and its leg was freed"
