"""What a client plays (tone, WAV file or silence), what it records, and the summary it reports."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from callbridge.media.analysis import summarize, trim_silence
from callbridge.media.resample import StreamResampler
from callbridge.media.tones import ToneGenerator
from callbridge.media.wav import read_wav, write_wav
from callbridge.protocols import Pcm


class AudioSource:
    """Audio a client sends, frame by frame, at ``sample_rate``.

    A tone when ``tone_hz`` is given, else the WAV file at ``play_path`` (resampled to
    ``sample_rate`` on load, then silence once it has played out), else silence.
    """

    def __init__(
        self,
        sample_rate: int,
        *,
        tone_hz: float | None = None,
        play_path: str | Path | None = None,
        amplitude: float = 0.5,
    ) -> None:
        self.sample_rate = sample_rate
        self._tone = ToneGenerator(tone_hz, sample_rate, amplitude) if tone_hz else None
        self._samples: Pcm | None = None
        self._position = 0
        if self._tone is None and play_path is not None:
            self._samples = _load_wav(play_path, sample_rate)

    def next_frame(self, n_samples: int) -> Pcm:
        """The next ``n_samples`` samples of int16 mono PCM."""
        if self._tone is not None:
            return self._tone.next_frame(n_samples)
        frame = np.zeros(n_samples, dtype=np.int16)
        if self._samples is not None:
            chunk = self._samples[self._position : self._position + n_samples]
            frame[: len(chunk)] = chunk
            self._position += len(chunk)
        return frame


def _load_wav(path: str | Path, sample_rate: int) -> Pcm:
    pcm, rate = read_wav(path)
    if rate == sample_rate:
        return pcm
    resampler = StreamResampler(rate, sample_rate)
    return np.concatenate([resampler.process(pcm), resampler.flush()]).astype(np.int16)


class Recorder:
    """Collects the int16 frames a client receives, at ``sample_rate``."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.frames = 0
        self._chunks: list[Pcm] = []

    def append(self, pcm: Pcm) -> None:
        """Add one received frame (any length)."""
        self.frames += 1
        self._chunks.append(pcm)

    def pcm(self) -> Pcm:
        """Everything recorded so far, as one array."""
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._chunks).astype(np.int16, copy=False)

    def write(self, path: str | Path) -> None:
        """Write the recording as a mono 16-bit WAV file."""
        write_wav(path, self.pcm(), self.sample_rate)


@dataclass
class Summary:
    """What a client call or room session did, for people (``format``) and tests (``to_dict``).

    Attributes:
        outcome: ``completed``, ``completed (server closed)``, ``rejected: <Say text>``,
            ``refused: HTTP 403``, ``webhook failed: HTTP 500``...
        frames_sent: audio frames sent.
        frames_received: audio frames received.
        seconds: length of the recording (what was heard), silence included.
        level_dbfs: RMS level of the recording with leading and trailing silence trimmed
            (-120.0 when nothing was heard).
        dominant_hz: strongest frequency of the trimmed recording (0.0 when nothing was heard).
        events: JSON-able events seen during the session, in order.
    """

    outcome: str = "completed"
    frames_sent: int = 0
    frames_received: int = 0
    seconds: float = 0.0
    level_dbfs: float = -120.0
    dominant_hz: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The summary as a JSON-able dict."""
        return asdict(self)

    def format(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"outcome: {self.outcome}",
            f"frames sent: {self.frames_sent}  received: {self.frames_received}  "
            f"heard: {self.seconds:.2f} s  level: {self.level_dbfs:.1f} dBFS  "
            f"dominant: {self.dominant_hz:.1f} Hz",
        ]
        if self.events:
            counts = Counter(str(event.get("event", "?")) for event in self.events)
            listed = ", ".join(f"{name} x{count}" for name, count in counts.items())
            lines.append(f"events: {listed}")
        return "\n".join(lines)


def summarize_recording(
    recorder: Recorder,
    *,
    outcome: str,
    frames_sent: int,
    frames_received: int | None = None,
    events: list[dict[str, Any]] | None = None,
) -> Summary:
    """Build a :class:`Summary` from a recording.

    Level and dominant frequency are measured with leading and trailing silence trimmed, so
    they describe the audio heard rather than the quiet around it. ``frames_received``
    defaults to the number of frames recorded.
    """
    pcm = recorder.pcm()
    rate = recorder.sample_rate
    heard = trim_silence(pcm, rate)
    analysis = summarize(heard, rate) if len(heard) else {}
    return Summary(
        outcome=outcome,
        frames_sent=frames_sent,
        frames_received=recorder.frames if frames_received is None else frames_received,
        seconds=len(pcm) / rate,
        level_dbfs=float(analysis.get("level_dbfs", -120.0)),
        dominant_hz=float(analysis.get("dominant_hz", 0.0)),
        events=list(events or []),
    )
