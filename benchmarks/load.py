"""The load generator: N simulated Twilio calls, each echoed back by a room participant.

Run by the orchestrator (``benchmarks.run``) as ``python -m benchmarks.load``, one process per
share of the calls, talking JSON lines over stdin/stdout:

1. stdin: the spec (:class:`LoadSpec` as JSON); the process sets every call up (participant
   joins, caller's webhook and media socket) and prints ``{"ready": true, ...}`` (or
   ``{"ready": false, "failures": [...]}``);
2. stdin: ``{"t0": <wall-clock time>}`` (or ``{"abort": true}``); every caller then sends one
   20 ms frame per period on an absolute clock ``t0 + phase + k * 20 ms`` (phases spread
   over the 20 ms in 1 ms slots) for ``seconds + tail`` seconds, hangs up, and the process
   prints ``{"results": ...}`` with the raw per-call measurements (see :meth:`Call.result`)
   and exits.

Audio: silence with a 40 ms tone burst at -12 dBFS every 250 ms (alternately 12 and 13 frames
apart), at a per-call phase. Bursts cycle through eight frequencies around 1 kHz (600-2000 Hz,
multiples of 50 Hz so every 20 ms frame holds whole periods); the caller tells which burst it
heard by its frequency, so a round trip longer than the 250 ms burst spacing (up to the 2 s
loss limit) is still matched to the right burst.

What the caller hears is played out like a phone: received frame k starts playing at
``max(arrival, end of frame k-1)``, from an empty queue at t0. A burst's latency is the play
time of the first sample of its echo (first frame whose energy crosses the threshold, first
sample over a quarter of the burst amplitude) minus the send time of its first frame.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gc
import json
import math
import secrets
import sys
import time
import xml.etree.ElementTree as ET
from array import array
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from benchmarks.wsclient import WsClient, connect
from callbridge.media.g711 import ulaw_decode, ulaw_encode

FRAME_SECONDS = 0.02
CALLER_RATE = 8000
FRAME_SAMPLES = 160
BURST_PERIOD_FRAMES = 12.5
"""Bursts every 250 ms: alternately 12 and 13 frames apart."""
BURST_FRAMES = 2
TONE_AMPLITUDE = 8192
"""About -12 dBFS (peak)."""
TONE_FREQUENCIES = (600, 800, 1000, 1200, 1400, 1600, 1800, 2000)
SETUP_TIMEOUT = 30.0
"""Per setup stage (join, webhook, media socket); calls set up earlier already load the server."""
PHASE_SLOTS = 20
"""Calls are spread over 20 send phases 1 ms apart (call i in slot i * 20 // N)."""
TIMER_TOLERANCE = 0.001
QUEUE_JUMP = 0.005
"""A caller's playout queue growing by more than this at once is recorded: when (seconds from
t0, negative before it) and how deep (ms)."""
MAX_QUEUE_JUMPS = 20

_n = np.arange(FRAME_SAMPLES)
_TONE_FRAMES = [
    np.round(TONE_AMPLITUDE * np.cos(2 * np.pi * f * _n / CALLER_RATE)).astype(np.int16)
    for f in TONE_FREQUENCIES
]
SILENCE_FRAME = ulaw_encode(np.zeros(FRAME_SAMPLES, dtype=np.int16))
_SILENCE_B64 = base64.b64encode(SILENCE_FRAME).decode("ascii")
_TONE_B64 = [base64.b64encode(ulaw_encode(frame)).decode("ascii") for frame in _TONE_FRAMES]

_DECODE = ulaw_decode(bytes(range(256))).astype(np.float64)
_POWER = _DECODE**2
_LOUD = np.abs(_DECODE) > TONE_AMPLITUDE / 4
_THRESHOLD_POWER = TONE_AMPLITUDE**2 / 2 / 16
"""A frame is loud when its mean power is within 12 dB of a whole burst frame's."""
_BASIS = np.exp(-2j * np.pi * np.outer(TONE_FREQUENCIES, _n) / CALLER_RATE)

_MEDIA = (
    '{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d",'
    '"timestamp":"%d","payload":"%s"},"streamSid":"%s"}'
)


@dataclass
class LoadSpec:
    """What one load process runs."""

    system: str
    """``floor`` or ``callbridge``."""
    base_url: str
    calls: list[int]
    """Global indices of this process's calls."""
    total_calls: int
    seconds: float
    warmup: float
    tail: float
    members: int = 2
    stall: bool = False
    stall_at: float = 0.0
    stall_seconds: float = 0.2
    webhook_url: str = ""
    token: str = ""
    setup_concurrency: int = 8


def burst_frames(index: int, total_frames: int) -> list[int]:
    """Frame numbers at which call ``index``'s bursts start (a per-call phase, every 250 ms)."""
    offset = 1 + (index * 7) % 12
    starts: list[int] = []
    j = 0
    while True:
        frame = offset + math.ceil(j * BURST_PERIOD_FRAMES)
        if frame + BURST_FRAMES > total_frames:
            return starts
        starts.append(frame)
        j += 1


def classify(codes: npt.NDArray[np.uint8]) -> int:
    """Index into :data:`TONE_FREQUENCIES` of the strongest tone in 160 μ-law samples."""
    magnitudes = np.abs(_BASIS @ _DECODE[codes])
    return int(magnitudes.argmax())


class Clock:
    """The process's time base: seconds since the shared ``t0``, from ``time.monotonic``
    (uvloop's own loop time only has millisecond resolution)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic() + 3600.0

    def start_at(self, wall_t0: float) -> None:
        self.t0 = time.monotonic() + (wall_t0 - time.time())

    def now(self) -> float:
        return time.monotonic() - self.t0


class Caller(WsClient):
    """Twilio's side of the media socket: sends paced μ-law frames, plays out what it hears."""

    def __init__(self, url: str, call: Call) -> None:
        super().__init__(url)
        self.call = call
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.call_sid = "CA" + secrets.token_hex(16)
        self.sequence = 0
        self.play_end = -math.inf
        self.loud = False
        self.pending: list[npt.NDArray[np.uint8]] | None = None
        self.pending_onset: tuple[float, float] = (0.0, 0.0)
        self.onsets: list[tuple[float, float, int]] = []
        self.rx_units = 0.0
        self.clears = 0
        self.marks = 0
        self.bad_messages = 0
        self.max_queue = 0.0
        self.queue_jumps: list[tuple[float, float]] = []

    def send_event(self, event: str, body: dict[str, Any]) -> None:
        message: dict[str, Any] = {"event": event}
        if event != "connected":
            self.sequence += 1
            message["sequenceNumber"] = str(self.sequence)
            message["streamSid"] = self.stream_sid
        message.update(body)
        self.send_text(json.dumps(message, separators=(",", ":")))

    def send_start(self) -> None:
        self.send_event("connected", {"protocol": "Call", "version": "1.0.0"})
        start = {
            "accountSid": "AC" + "0" * 32,
            "streamSid": self.stream_sid,
            "callSid": self.call_sid,
            "tracks": ["inbound"],
            "customParameters": {},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        self.send_event("start", {"start": start})

    def send_media(self, chunk: int, payload_b64: str) -> None:
        self.sequence += 1
        self.send_text(_MEDIA % (self.sequence, chunk, chunk * 20, payload_b64, self.stream_sid))

    def send_stop(self) -> None:
        self.send_event("stop", {"stop": {"accountSid": "AC" + "0" * 32, "callSid": self.call_sid}})

    def on_text(self, payload: bytes) -> None:
        now = self.call.clock.now()
        # Fast path for the common message; anything else goes through the JSON parser.
        start = payload.find(b'"payload":"')
        if start >= 0 and b'"event":"media"' in payload:
            start += 11
            end = payload.find(b'"', start)
            if end > 0:
                try:
                    raw = binascii.a2b_base64(payload[start:end])
                except binascii.Error:
                    self.bad_messages += 1
                    return
                self.hear(raw, now)
                return
        try:
            message = json.loads(payload)
            event = message["event"]
            if event == "media":
                raw = binascii.a2b_base64(message["media"]["payload"])
            elif event == "clear":
                self.clears += 1
                self.play_end = now  # Twilio drops what it had queued
                return
            elif event == "mark":
                self.marks += 1
                return
            else:
                self.bad_messages += 1
                return
        except (ValueError, KeyError, TypeError):
            self.bad_messages += 1
            return
        self.hear(raw, now)

    def on_binary(self, payload: bytes) -> None:
        self.bad_messages += 1

    def on_closed(self) -> None:
        self.call.socket_closed("caller", self)

    def hear(self, raw: bytes, now: float) -> None:
        """Play ``raw`` (μ-law) out after what is queued; detect burst onsets in it."""
        size = len(raw)
        start = now if now > self.play_end else self.play_end
        queued = start - now
        if queued > self.max_queue:
            if queued - self.max_queue > QUEUE_JUMP and len(self.queue_jumps) < MAX_QUEUE_JUMPS:
                # Monotonic, not ``now``: jumps may come before t0 is known.
                self.queue_jumps.append((time.monotonic(), queued * 1000))
            self.max_queue = queued
        self.play_end = start + size / CALLER_RATE
        call = self.call
        if call.warmup <= now < call.seconds:
            self.rx_units += size / FRAME_SAMPLES
        if raw == SILENCE_FRAME:
            if self.pending is not None:
                self._collect(np.full(FRAME_SAMPLES, 0xFF, dtype=np.uint8))
            self.loud = False
            return
        codes = np.frombuffer(raw, dtype=np.uint8)
        if self.pending is not None:
            self._collect(codes)
        if _POWER[codes].sum() > _THRESHOLD_POWER * size:
            if not self.loud:
                self.loud = True
                index = int(_LOUD[codes].argmax())
                self.pending_onset = (start + index / CALLER_RATE, now)
                self.pending = []
                self._collect(codes[index:])
        else:
            self.loud = False

    def _collect(self, codes: npt.NDArray[np.uint8]) -> None:
        assert self.pending is not None
        self.pending.append(codes)
        if sum(len(part) for part in self.pending) >= FRAME_SAMPLES:
            window = np.concatenate(self.pending)[:FRAME_SAMPLES]
            heard, arrival = self.pending_onset
            self.onsets.append((heard, arrival, classify(window)))
            self.pending = None

    def flush(self) -> None:
        """Classify an onset still waiting for samples (end of the call)."""
        if self.pending is not None:
            self._collect(np.full(FRAME_SAMPLES, 0xFF, dtype=np.uint8))


class Participant(WsClient):
    """A room member: echoes every binary frame it hears (unless ``silent``)."""

    def __init__(self, url: str, call: Call, role: str) -> None:
        super().__init__(url)
        self.call = call
        self.role = role
        self.echo = role == "echo"
        self.joined: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.frame_bytes = 640
        self.rx_units = 0.0
        self.holding = False
        self.held: list[bytes] = []
        self.stall_end: float | None = None

    def on_text(self, payload: bytes) -> None:
        if self.joined.done():
            return
        try:
            event = json.loads(payload)
        except ValueError:
            event = None
        if not isinstance(event, dict) or event.get("event") != "joined":
            self.joined.set_exception(RuntimeError(f"first message was not joined: {payload!r}"))
            self.joined.exception()  # marked retrieved: setup may have given up already
            return
        self.frame_bytes = int(event.get("sampleRate", 16000)) * 2 // 50
        self.joined.set_result(event)

    def on_binary(self, payload: bytes) -> None:
        call = self.call
        now = call.clock.now()
        if call.warmup <= now < call.seconds:
            self.rx_units += len(payload) / self.frame_bytes
        if not self.echo:
            return
        if self.holding:
            self.held.append(payload)
        else:
            self.send_binary(payload)

    def on_closed(self) -> None:
        self.call.socket_closed(self.role, self)

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        self.holding = False
        self.stall_end = self.call.clock.now()
        for payload in self.held:
            self.send_binary(payload)
        self.held = []


class Ticker:
    """Sends the next frame of every call sharing one phase slot, on the absolute clock
    ``t0 + phase + k * 20 ms``: one timer per slot rather than per call, and every frame that
    is due (a late wake-up sends the missed frames at once; the schedule never drifts)."""

    def __init__(self, calls: list[Call], phase: float, clock: Clock, total_frames: int) -> None:
        self.calls = calls
        self.phase = phase
        self.clock = clock
        self.total_frames = total_frames
        self.frame = 0
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()

    def start(self) -> None:
        self.loop.call_later(max(0.0, self.phase - self.clock.now()), self._tick)

    def _tick(self) -> None:
        now = self.clock.now()
        frame = self.frame
        while frame < self.total_frames:
            deadline = self.phase + frame * FRAME_SECONDS
            # uvloop's timers have 1 ms resolution and may fire up to 1 ms early.
            if deadline > now + TIMER_TOLERANCE:
                break
            for call in self.calls:
                call.send_frame(frame, now, deadline)
            frame += 1
        self.frame = frame
        if frame < self.total_frames:
            delay = self.phase + frame * FRAME_SECONDS - self.clock.now()
            self.loop.call_later(max(delay, 0.0), self._tick)
        elif not self.done.done():
            self.done.set_result(None)


class Call:
    """One bridged call: caller, echo participant and optionally a silent member."""

    def __init__(self, index: int, spec: LoadSpec, clock: Clock, lateness: array[float]) -> None:
        self.index = index
        self.spec = spec
        self.clock = clock
        self.lateness = lateness
        self.warmup = spec.warmup
        self.seconds = spec.seconds
        self.room = f"bench-{index}"
        self.slot = index * PHASE_SLOTS // max(spec.total_calls, 1)
        self.phase = self.slot * FRAME_SECONDS / PHASE_SLOTS
        self.total_frames = round((spec.seconds + spec.tail) / FRAME_SECONDS)
        burst_limit = int((spec.seconds - self.phase) / FRAME_SECONDS)
        self.burst_tags: dict[int, int] = {}
        for j, frame in enumerate(burst_frames(index, burst_limit)):
            for k in range(BURST_FRAMES):
                self.burst_tags[frame + k] = j % len(TONE_FREQUENCIES) if k == 0 else -1
        self.bursts: list[tuple[float, int]] = []
        self.caller: Caller | None = None
        self.participant: Participant | None = None
        self.silent: Participant | None = None
        self.failure: str | None = None
        self.stage = "not started"
        self.ending = False
        self.stalls = spec.stall and index == 0

    # --- setup -------------------------------------------------------------------------------

    async def setup(self, http: httpx.AsyncClient) -> None:
        self.stage = "starting"
        try:
            await self._setup(http)
        except Exception as exc:  # reported; the orchestrator fails the run
            detail = f"timed out after {SETUP_TIMEOUT:g} s" if isinstance(exc, TimeoutError) else ""
            self.fail(f"setup ({self.stage}): {type(exc).__name__}: {exc or detail}")

    async def _setup(self, http: httpx.AsyncClient) -> None:
        spec = self.spec
        ws_base = "ws://" + spec.base_url.split("://", 1)[1].rstrip("/")
        if spec.system == "callbridge":
            member_url = f"{ws_base}/v2/rooms/{self.room}/participants?token={spec.token}"
        else:
            member_url = f"{ws_base}/participant/{self.room}"
        self.stage = "echo participant joining"
        self.participant = await self._join(member_url, "echo")
        if spec.members >= 3:
            self.stage = "silent member joining"
            self.silent = await self._join(member_url, "silent")
        if spec.system == "callbridge":
            self.stage = "voice webhook"
            stream_url = await self._webhook(http)
        else:
            stream_url = f"{ws_base}/twilio/{self.room}"
        self.stage = "media socket handshake"
        caller = Caller(stream_url, self)
        self.caller = caller
        await connect(caller, SETUP_TIMEOUT)
        caller.send_start()
        self.stage = "done"

    async def _join(self, url: str, role: str) -> Participant:
        member = Participant(url, self, role)
        await connect(member, SETUP_TIMEOUT)
        await asyncio.wait_for(member.joined, SETUP_TIMEOUT)
        return member

    async def _webhook(self, http: httpx.AsyncClient) -> str:
        url = self.spec.webhook_url
        url += ("&" if "?" in url else "?") + f"roomId={self.room}"
        form = {
            "AccountSid": "AC" + "0" * 32,
            "ApiVersion": "2010-04-01",
            "CallSid": "CA" + secrets.token_hex(16),
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": "+14155550100",
            "To": "+14155550199",
        }
        response = await http.post(url, data=form, timeout=SETUP_TIMEOUT)
        if response.status_code != 200:
            raise RuntimeError(f"webhook HTTP {response.status_code}: {response.text[:200]}")
        stream = ET.fromstring(response.text).find("./Connect/Stream")
        if stream is None or not stream.get("url"):
            raise RuntimeError(f"TwiML without <Connect><Stream>: {response.text[:200]}")
        return str(stream.get("url"))

    # --- running -----------------------------------------------------------------------------

    def schedule_stall(self) -> None:
        """Call 0's participant holds what it hears from ``stall_at`` for ``stall_seconds``."""
        if self.stalls and self.participant is not None:
            loop = asyncio.get_running_loop()
            at = self.spec.stall_at
            loop.call_later(at - self.clock.now(), self.participant.hold)
            loop.call_later(
                at + self.spec.stall_seconds - self.clock.now(), self.participant.release
            )

    def send_frame(self, frame: int, now: float, deadline: float) -> None:
        """Send frame ``frame`` (due at ``deadline``) now."""
        caller = self.caller
        if caller is None or self.failure is not None:
            return
        tag = self.burst_tags.get(frame)
        if tag is None:
            caller.send_media(frame + 1, _SILENCE_B64)
        else:
            if tag >= 0:
                self.bursts.append((self.clock.now(), tag))
            else:
                tag = self.bursts[-1][1] if self.bursts else 0
            caller.send_media(frame + 1, _TONE_B64[tag])
        if self.warmup <= deadline < self.seconds:
            self.lateness.append(now - deadline)

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason

    def socket_closed(self, role: str, socket: WsClient) -> None:
        if self.ending:
            return
        code = socket.close_code
        detail = f"code {code}" + (f" {socket.close_reason!r}" if socket.close_reason else "")
        self.fail(f"{role} socket closed at t={self.clock.now():.2f}s ({detail})")

    async def hang_up(self) -> None:
        self.ending = True
        sockets: list[WsClient] = []
        if self.caller is not None:
            self.caller.flush()
            self.caller.send_stop()
            self.caller.close()
            sockets.append(self.caller)
        for member in (self.participant, self.silent):
            if member is not None:
                member.close()
                sockets.append(member)
        if sockets:
            await asyncio.wait([asyncio.ensure_future(s.closed) for s in sockets], timeout=3.0)

    def result(self) -> dict[str, Any]:
        caller, participant = self.caller, self.participant
        return {
            "index": self.index,
            "failure": self.failure,
            "bursts": [[round(t, 6), tag] for t, tag in self.bursts],
            "onsets": [
                [round(h, 6), round(a, 6), tag] for h, a, tag in (caller.onsets if caller else [])
            ],
            "rx_caller_units": caller.rx_units if caller else 0.0,
            "rx_participant_units": participant.rx_units if participant else 0.0,
            "caller_max_queue_ms": round(caller.max_queue * 1000, 3) if caller else None,
            "caller_queue_jumps": [
                [round(t - self.clock.t0, 4), round(depth, 2)]
                for t, depth in (caller.queue_jumps if caller else [])
            ],
            "clears": caller.clears if caller else 0,
            "marks": caller.marks if caller else 0,
            "bad_messages": caller.bad_messages if caller else 0,
            "stall_end": participant.stall_end if participant and self.stalls else None,
        }


def _empty_playout_queues(calls: list[Call]) -> None:
    for call in calls:
        if call.caller is not None:
            call.caller.play_end = -math.inf


async def run_load(spec: LoadSpec, read_line: Any, write_line: Any) -> None:
    """Set up, wait for ``t0``, run, report (``read_line``/``write_line`` carry JSON lines)."""
    clock = Clock()
    lateness: array[float] = array("d")
    calls = [Call(index, spec, clock, lateness) for index in spec.calls]
    gate = asyncio.Semaphore(spec.setup_concurrency)
    started = time.monotonic()

    async def setup(call: Call, http: httpx.AsyncClient) -> None:
        async with gate:
            await call.setup(http)

    limits = httpx.Limits(max_connections=spec.setup_concurrency)
    async with httpx.AsyncClient(limits=limits) as http:
        await asyncio.gather(*(setup(call, http) for call in calls))
    failures = [f"call {call.index}: {call.failure}" for call in calls if call.failure]
    write_line({"ready": not failures, "failures": failures, "setup_seconds": _since(started)})
    command = json.loads(await read_line())
    if "t0" not in command:
        await asyncio.gather(*(call.hang_up() for call in calls))
        return
    clock.start_at(float(command["t0"]))
    # A full collection walks every object of the process (tens of ms with numpy, httpx...
    # loaded); the run makes little cyclic garbage, so none runs until the calls end.
    gc.collect()
    gc.freeze()
    gc.disable()
    # The callers' playout queues start empty at t0: what this process did before it (the
    # collection above, setting up) may have read the server's frames late, and a queue that
    # the generator's own pause left would otherwise be counted as the server's delay.
    asyncio.get_running_loop().call_later(max(0.0, -clock.now()), _empty_playout_queues, calls)
    slots: dict[int, list[Call]] = {}
    for call in calls:
        slots.setdefault(call.slot, []).append(call)
    total_frames = calls[0].total_frames if calls else 0
    tickers = [Ticker(group, group[0].phase, clock, total_frames) for group in slots.values()]
    for ticker in tickers:
        ticker.start()
    for call in calls:
        call.schedule_stall()
    await asyncio.gather(*(ticker.done for ticker in tickers))
    gc.enable()
    await asyncio.gather(*(call.hang_up() for call in calls))
    late = np.array(lateness) * 1000 if len(lateness) else np.zeros(1)
    write_line(
        {
            "results": [call.result() for call in calls],
            "lateness_ms": {
                "p50": float(np.percentile(late, 50)),
                "p99": float(np.percentile(late, 99)),
                "max": float(late.max()),
            },
        }
    )


def _since(start: float) -> float:
    return round(time.monotonic() - start, 3)


def main() -> None:
    """Entry point of one load process (see the module docstring)."""
    import uvloop

    spec = LoadSpec(**json.loads(sys.stdin.readline()))

    async def read_line() -> str:
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        return line or '{"abort": true}'

    def write_line(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    uvloop.run(run_load(spec, read_line, write_line))


def spec_json(spec: LoadSpec) -> str:
    """The spec as the JSON line a load process reads first."""
    return json.dumps(asdict(spec))


if __name__ == "__main__":
    main()
