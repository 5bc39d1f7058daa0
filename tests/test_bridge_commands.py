"""What the call bridge does with room members' commands: transfer handed to the call,
keypad digits played where the provider can and counted where it cannot, a hang-up's reason
kept, and commands for other calls ignored."""

from __future__ import annotations

import json

from callbridge.calls.bridge import CallBridge
from callbridge.calls.state import EndReason
from callbridge.protocols import CodecSpec, StreamStarted
from callbridge_plugins.providers.custom import CustomMediaStream
from callbridge_plugins.providers.twilio import TwilioMediaStream
from tests.channels import FakeChannel

STARTED = StreamStarted("S1", "C1", CodecSpec("PCMU", 8000))


async def _custom_bridge() -> tuple[CallBridge, FakeChannel]:
    channel = FakeChannel([json.dumps({"event": "start", "callId": "pbx-1"})])
    stream = CustomMediaStream(channel)
    await stream.receive()
    return CallBridge("call_1", stream, STARTED, 16000), channel


async def test_digits_are_played_to_a_caller_whose_stream_can() -> None:
    bridge, channel = await _custom_bridge()
    bridge.notify({"event": "dtmf", "digits": "12#"})
    bridge.notify({"event": "dtmf", "digit": "5", "callId": "call_2"})  # another call's press
    assert channel.sent == ['{"event":"dtmf","digits":"12#"}']
    assert (bridge.stats.dtmf_out, bridge.stats.dtmf_out_unsupported) == (1, 0)


async def test_digits_are_counted_where_the_stream_cannot_send_them() -> None:
    channel = FakeChannel([])
    bridge = CallBridge("call_1", TwilioMediaStream(channel), STARTED, 16000)
    bridge.notify({"event": "dtmf", "digits": "9"})
    assert channel.sent == []
    assert (bridge.stats.dtmf_out, bridge.stats.dtmf_out_unsupported) == (0, 1)
    assert bridge.stats.as_dict(0, 0)["dtmf_out_unsupported"] == 1


async def test_a_transfer_goes_to_the_call_and_only_for_its_own_call_id() -> None:
    bridge, _ = await _custom_bridge()
    moves: list[tuple[str, str | None]] = []
    bridge.on_transfer = lambda room, transport: moves.append((room, transport))
    bridge.notify({"event": "transfer", "roomId": "support", "callId": "call_other"})
    bridge.notify({"event": "transfer", "roomId": "support"})
    bridge.notify(
        {"event": "transfer", "roomId": "desk", "transport": "agents", "callId": "call_1"}
    )
    assert moves == [("support", None), ("desk", "agents")]
    assert bridge.stats.transfers == 2


async def test_a_hangup_keeps_its_reason() -> None:
    bridge, _ = await _custom_bridge()
    bridge.notify({"event": "hangup", "reason": "caller pressed #"})
    end = bridge._end  # decided at once, before any run
    assert end is not None
    assert (end.reason, end.detail) == (EndReason.ROOM_HANGUP, "caller pressed #")


async def test_retune_follows_the_new_rooms_rate() -> None:
    bridge, _ = await _custom_bridge()
    assert bridge._to_room.out_rate == 16000
    bridge.retune(8000)
    assert (bridge._to_room.out_rate, bridge._to_caller.in_rate) == (8000, 8000)
    bridge.detach()
    assert bridge.leg is None
