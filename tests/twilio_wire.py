"""A hand-driven Twilio peer for tests that need to misbehave on purpose."""

from __future__ import annotations

import base64
import json
import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import httpx


def voice_webhook_form(call_sid: str | None = None, **extra: str) -> dict[str, str]:
    return {
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid or "CA" + secrets.token_hex(16),
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+14155550100",
        "To": "+14155550199",
        **extra,
    }


@dataclass
class TwimlAnswer:
    status: int
    body: str
    stream_url: str | None
    parameters: dict[str, str]
    say: str | None


async def post_webhook(url: str, form: dict[str, str]) -> TwimlAnswer:
    async with httpx.AsyncClient() as client:
        response = await client.post(url, data=form)
    stream_url, parameters, say = None, {}, None
    if response.status_code == 200 and response.text.lstrip().startswith("<"):
        root = ET.fromstring(response.text)
        stream = root.find("./Connect/Stream")
        if stream is not None:
            stream_url = stream.get("url")
            parameters = {
                p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")
            }
        say_element = root.find("./Say")
        say = say_element.text if say_element is not None else None
    return TwimlAnswer(response.status_code, response.text, stream_url, parameters, say)


def connected() -> str:
    return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start(stream_sid: str, call_sid: str, sequence: int = 1) -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": str(sequence),
            "streamSid": stream_sid,
            "start": {
                "accountSid": "AC" + "0" * 32,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


def media(stream_sid: str, payload: bytes, sequence: int, chunk: int) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(sequence),
            "streamSid": stream_sid,
            "media": {
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str(chunk * 20),
                "payload": base64.b64encode(payload).decode(),
            },
        }
    )


def stop(stream_sid: str, call_sid: str, sequence: int) -> str:
    return json.dumps(
        {
            "event": "stop",
            "sequenceNumber": str(sequence),
            "streamSid": stream_sid,
            "stop": {"accountSid": "AC" + "0" * 32, "callSid": call_sid},
        }
    )
