"""Kamailio (Debian ``kamailio`` 5.6) as a carrier-trunk stand-in, as the research note on SIP
(§3.4) ran it: a stateful proxy on a free port (UDP and TCP) that Record-Routes every INVITE,
forwards everything to callbridge's SIP endpoint over the transport it came on, and answers
callbridge's digest challenge itself with the trunk's credentials (``uac_auth``), the way a
carrier with credentials does. A request callbridge does not answer at all times out after
1.5 s (``fr_timer``), so a caller behind it is not kept waiting. It runs in the foreground
(``-DD -E``) with its runtime folder in the test's folder, its config checked with ``-c``
first, and is stopped by its process id."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port
from tests.services import require_or_skip

CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
tcp_children=1
auto_aliases=no
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "uac.so"
modparam("tm", "fr_timer", 1500)
modparam("rr", "append_fromtag", 1)
modparam("uac", "credential", "{username}:{realm}:{password}")
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here"); exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) t_relay(); exit; }}
    t_check_trans();
    if (is_method("INVITE")) record_route();
    $du = "sip:127.0.0.1:{target}" + ";transport=" + $pr;
    t_on_failure("AUTH");
    if (!t_relay()) sl_reply_error();
    exit;
}}
failure_route[AUTH] {{
    if (t_is_canceled()) exit;
    if (t_check_status("401|407")) {{ if (uac_auth()) {{ t_relay(); exit; }} }}
}}
"""


@dataclass
class Kamailio:
    """A running Kamailio: its SIP port (UDP and TCP), process and log file."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _configure(
    binary: str,
    folder: Path,
    port: int,
    target_port: int,
    username: str,
    password: str,
    realm: str,
) -> Path:
    """Kamailio's config file in ``folder``, checked (``kamailio -c``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run").mkdir(exist_ok=True)
    config = folder / "kamailio.cfg"
    config.write_text(
        CONFIG.format(
            port=port, target=target_port, username=username, password=password, realm=realm
        ),
        encoding="utf-8",
    )
    checked = subprocess.run(
        [binary, "-c", "-f", str(config)], capture_output=True, text=True, timeout=20
    )
    if checked.returncode != 0:
        raise RuntimeError("kamailio -c refused the config:\n" + checked.stderr[-3000:])
    return config


def _start(binary: str, config: Path, port: int) -> Kamailio:
    """Kamailio in the foreground (``-DD``), logging to stderr (``-E``) into a file."""
    folder = config.parent
    log_path = folder / "kamailio.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                "-f",
                str(config),
                "-DD",
                "-E",
                "-m",
                "32",
                "-M",
                "8",
                "-Y",
                str(folder / "run"),
            ],
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its children share its process group, stopped with it
        )
    return Kamailio(port, process, log_path)


@contextlib.asynccontextmanager
async def kamailio(
    folder: Path, *, target_port: int, username: str, password: str, realm: str
) -> AsyncIterator[Kamailio]:
    """Kamailio listening on a free port of 127.0.0.1 (UDP and TCP), forwarding to
    ``target_port`` there and answering a 401/407 with ``username``/``password`` for
    ``realm``; stopped on exit."""
    binary = shutil.which("kamailio")
    if binary is None:
        require_or_skip("kamailio (Debian kamailio) is not installed")
    port = free_port()
    config = await asyncio.to_thread(
        _configure, binary, folder, port, target_port, username, password, realm
    )
    running = _start(binary, config, port)
    try:
        await _until_listening(running)
        yield running
    finally:
        _stop(running.process)


async def _until_listening(running: Kamailio) -> None:
    for _ in range(200):
        if running.process.poll() is not None:
            raise RuntimeError("kamailio exited:\n" + running.log()[-3000:])
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", running.port)
        except OSError:
            await asyncio.sleep(0.025)
            continue
        writer.close()
        return
    raise RuntimeError("kamailio never listened:\n" + running.log()[-3000:])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop Kamailio (its main process stops its children) and, if that fails, its process
    group: every process in it was started by this harness."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # a child that outlived its parent
