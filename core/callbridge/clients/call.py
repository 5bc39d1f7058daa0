"""Options shared by every provider simulator (``callbridge call --provider NAME``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CallOptions:
    """One simulated phone call against a callbridge server.

    Attributes:
        webhook_url: the connector's voice-webhook URL (``…/v2/hooks/{provider}/{whk_key}``).
        provider: which provider to play (selects the simulator).
        from_number: the caller's number, as the provider would send it.
        to_number: the called number.
        tone_hz: the caller sends a sine tone at this frequency...
        play_path: ...else this WAV file (resampled to the provider's rate), else silence.
        record_path: write what the caller heard to this WAV file.
        seconds: how long the caller sends audio before hanging up.
        dtmf: keys the caller presses (``0-9``, ``*``, ``#``, ``A-D``), in order.
        dtmf_delay: seconds into the stream of the first key press; the next ones follow
            250 ms apart.
        method: HTTP method of the voice webhook (``POST`` form body, or ``GET`` query).
        extra_params: more webhook parameters; they override the simulator's own values.
        credentials: provider credentials the simulator signs its requests with, by name
            (Twilio: ``accountSid``, ``authToken``); empty means requests go unsigned.
    """

    webhook_url: str
    provider: str = "twilio"
    from_number: str = "+14155550100"
    to_number: str = "+14155550199"
    tone_hz: float | None = None
    play_path: str | None = None
    record_path: str | None = None
    seconds: float = 5.0
    dtmf: str = ""
    dtmf_delay: float = 1.0
    method: str = "POST"
    extra_params: dict[str, str] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)
