"""End to end over loopback: `callbridge serve`, `callbridge room join` and `callbridge call`.

A 440 Hz caller and a 1000 Hz room participant each hear the other at the right frequency and
level, DTMF reaches the participant, and the caller's stop frees the room leg.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from callbridge.media.analysis import dominant_frequency, level_dbfs, trim_silence
from callbridge.media.wav import read_wav
from tests.servers import ServerProcess, create_connector, popen_cli

pytestmark = pytest.mark.e2e

SENT_LEVEL_DBFS = 20 * math.log10(0.5 / math.sqrt(2))  # a sine at half of full scale


def test_two_tones_cross_the_bridge(server_process: ServerProcess, tmp_path: Path) -> None:
    token = server_process.token()
    connector = create_connector(server_process.url, token, defaultRoomId="e2e-room")
    participant_wav, caller_wav = tmp_path / "participant.wav", tmp_path / "caller.wav"

    participant = popen_cli(
        "room",
        "join",
        "e2e-room",
        "--server",
        server_process.url,
        "--token",
        token,
        "--tone",
        "1000",
        "--record",
        str(participant_wav),
        "--seconds",
        "7",
        "--json",
    )
    time.sleep(1.0)
    caller = popen_cli(
        "call",
        "--webhook-url",
        connector.webhook_url,
        "--tone",
        "440",
        "--record",
        str(caller_wav),
        "--seconds",
        "4",
        "--dtmf",
        "12#",
        "--json",
    )
    caller_out, caller_err = caller.communicate(timeout=60)
    participant_out, participant_err = participant.communicate(timeout=60)
    assert caller.returncode == 0, caller_out + caller_err
    assert participant.returncode == 0, participant_out + participant_err
    caller_summary = json.loads(caller_out.strip().splitlines()[-1])
    participant_summary = json.loads(participant_out.strip().splitlines()[-1])

    # The participant hears the caller's 440 Hz within 10 Hz and 6 dB.
    heard, rate = read_wav(participant_wav)
    assert rate == 16000
    tone = trim_silence(heard)
    assert len(tone) > rate * 3
    assert abs(dominant_frequency(tone, rate) - 440) <= 10
    assert abs(level_dbfs(tone) - SENT_LEVEL_DBFS) <= 6

    # The caller hears the participant's 1000 Hz within 10 Hz and 6 dB.
    heard, rate = read_wav(caller_wav)
    assert rate == 8000
    tone = trim_silence(heard)
    assert len(tone) > rate * 3
    assert abs(dominant_frequency(tone, rate) - 1000) <= 10
    assert abs(level_dbfs(tone) - SENT_LEVEL_DBFS) <= 6

    # Twilio's protocol was respected on the way out: streamSid on every message, whole frames.
    problems = [
        e
        for e in caller_summary["events"]
        if e.get("event") in {"protocol-error", "bad-frame-size"}
    ]
    assert problems == []
    assert caller_summary["frames_received"] >= 150

    # DTMF reached the participant in order, tagged with the call; stop freed the room leg.
    events = participant_summary["events"]
    digits = [e["digit"] for e in events if e.get("event") == "dtmf"]
    assert digits == ["1", "2", "#"]
    call_ids = {e["callId"] for e in events if e.get("event") == "dtmf"}
    assert len(call_ids) == 1
    joined = [e for e in events if e.get("event") == "participant-joined"]
    left = [e for e in events if e.get("event") == "participant-left"]
    assert [e["participantId"] for e in joined] == list(call_ids)
    assert [e["participantId"] for e in left] == list(call_ids)

    # No secret reached the logs.
    logs = server_process.logs()
    webhook_key = connector.webhook_url.rsplit("/", 1)[1]
    assert webhook_key not in logs
    assert token not in logs
    call_lines = [
        line
        for line in map(json.loads, filter(str.strip, logs.splitlines()))
        if line.get("event") in {"call routed", "call answered", "call media ended", "call ended"}
    ]
    assert [line["event"] for line in call_lines] == [
        "call routed",
        "call answered",
        "call media ended",
        "call ended",
    ]
    assert {line["call_id"] for line in call_lines} == {call_lines[0]["call_id"]}
    assert {line["trace_id"] for line in call_lines} == {call_lines[0]["trace_id"]}, (
        "one trace per call"
    )
    assert call_lines[-1]["reason"] == "caller-hangup"
