"""A real headless Chromium (Debian's ``chromium``, installed by scripts/install-test-packages.sh)
joins a room through the room page, with a simulated phone caller in the room. The browser runs
in a network namespace made here (``unshare -n``): ``lo`` and a veth pair carrying 10.77.0.1,
so both ICE agents find a non-loopback host candidate without patching a library (this kernel
has no ``dummy`` link type; a veth end serves the same purpose). The run itself is
``tests/browser_room.py``; this test checks what it measured."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.services import require_or_skip

pytestmark = [pytest.mark.timeout(120), pytest.mark.e2e]

NAMESPACE_SETUP = (
    "ip link set lo up"
    " && ip link add cb0 type veth peer name cb1"
    " && ip addr add 10.77.0.1/24 dev cb0"
    " && ip link set cb0 up && ip link set cb1 up"
)


@pytest.fixture(scope="module")
def browser_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if shutil.which("chromium") is None:
        require_or_skip("chromium (Debian chromium) is not installed")
    if shutil.which("unshare") is None or shutil.which("ip") is None or os.geteuid() != 0:
        require_or_skip("a network namespace needs root, unshare and ip")
    workdir = tmp_path_factory.mktemp("browser")
    command = f'{NAMESPACE_SETUP} && exec "$0" -m tests.browser_room "$1"'
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", command, sys.executable, str(workdir)],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result: dict[str, Any] = json.loads((workdir / "result.json").read_text())
    return result


def test_the_browser_hears_the_caller_and_the_caller_hears_the_browser(
    browser_run: dict[str, Any],
) -> None:
    """The caller hears the browser's fake microphone (1000 Hz) at a sensible level; the page
    hears the caller's 440 Hz (its analyser: frequency within 6 Hz, well above silence)."""
    caller = browser_run["caller_heard"]
    assert abs(caller["hz"] - 1000) <= 10 and caller["seconds"] >= 1.2, caller
    assert -20 <= caller["dbfs"] <= 0, caller
    browser = browser_run["browser_heard"]
    assert browser is not None and abs(browser["hz"] - 440) <= 6, browser
    assert browser["db"] is not None and browser["db"] > -60, browser


def test_mute_stops_the_browsers_audio_reaching_the_caller(browser_run: dict[str, Any]) -> None:
    """Muted, the caller hears silence (frames still come); unmuted, the tone is back."""
    muted = browser_run["caller_heard_muted"]
    assert muted["samples"] > 4000 and muted["mean_abs"] < 50, muted
    unmuted = browser_run["caller_heard_unmuted"]
    assert abs(unmuted["hz"] - 1000) <= 10 and unmuted["seconds"] >= 0.8, unmuted


def test_hold_silences_the_room_for_the_browser_and_unhold_resumes(
    browser_run: dict[str, Any],
) -> None:
    held, resumed = browser_run["browser_heard_held"], browser_run["browser_heard_resumed"]
    assert held is None or held["db"] is None or held["db"] < -90, held
    assert resumed is not None and abs(resumed["hz"] - 440) <= 6 and resumed["db"] > -60, resumed


def test_the_dial_pad_reaches_the_phone_leg(browser_run: dict[str, Any]) -> None:
    """Digit 5 from the page's dial pad reaches the Plivo caller as ``sendDTMF``."""
    sent = browser_run["caller_texts"]
    assert [text.get("event") for text in sent] == ["sendDTMF"], sent
    assert sent[0].get("dtmf") == "5" or "5" in json.dumps(sent[0]), sent


def test_the_page_lists_the_members_and_the_callers_number(browser_run: dict[str, Any]) -> None:
    """During the call the page lists the browser itself and the caller (with the caller's live
    level), and the room's calls with the caller's number; the screenshot of that moment is a
    real PNG."""
    assert "Browser (you)" in browser_run["members_text"], browser_run["members_text"]
    assert "14155550100" in browser_run["members_text"]
    assert "14155550100" in browser_run["calls_text"], browser_run["calls_text"]
    assert -15 <= browser_run["caller_level"] <= 0, "the caller's live level (440 Hz at -6 dBFS)"
    png = Path(browser_run["screenshot"]).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_a_room_token_for_another_room_is_refused(browser_run: dict[str, Any]) -> None:
    assert browser_run["other_room_status"].startswith("Refused"), browser_run


def test_reconnecting_within_the_grace_period_keeps_the_member(
    browser_run: dict[str, Any],
) -> None:
    """The page's signalling socket is closed under it: the page resumes as the same member,
    the room's other members see no ``participant-left``, and the caller still hears it."""
    assert "reconnected" in browser_run["status_after_reconnect"]
    assert browser_run["member_after_reconnect"] == browser_run["participant_id"]
    assert "participant-left" not in browser_run["observer_saw"], browser_run["observer_saw"]
    heard = browser_run["caller_heard_reconnected"]
    assert abs(heard["hz"] - 1000) <= 10 and heard["seconds"] >= 0.8, heard
