"""The SIP side of a server: its endpoint, and who may use it (digest auth against the API
keys' SIP credentials).

``INVITE`` and ``REGISTER`` are challenged (401 with ``WWW-Authenticate``): no credentials → a
challenge; an expired or used nonce with the right password → a challenge with ``stale=true``;
a wrong password, a forged nonce or an address outside the credential's allow-list → 403 (no
endless 401 loop). An authenticated ``REGISTER`` is answered 200 and stored nowhere: callbridge
never calls a registered client, rooms are dialled at ``sip:<roomId>@<domain>``; it only keeps
softphones that insist on registering happy. An ``INVITE`` without credentials from a network
of a credential that authenticates by source (a carrier trunk that never answers a challenge)
is that credential's, unchallenged; two such credentials matching equally → 403. An
authenticated ``INVITE`` becomes a call (:mod:`callbridge.sip.calls`); requests inside its
dialog are never challenged again.
"""

from __future__ import annotations

import re
from typing import Final

import structlog

from callbridge.runtime import Runtime
from callbridge.sip.auth import (
    SipPrincipal,
    authenticate,
    authenticate_by_source,
    load_digest_auth,
)
from callbridge.sip.calls import SipCalls
from callbridge.sip.digest import DigestAuth, Verdict
from callbridge.sip.endpoint import Incoming, SipCounters, SipEndpoint, reason_header
from callbridge.sip.transactions import Key
from callbridge.webhooks.keys import StoredKeys

log = structlog.get_logger("callbridge.sip")

MAX_REGISTER_SECONDS: Final = 3600
_EXPIRES = re.compile(r";\s*expires\s*=\s*([0-9]{1,10})", re.I)


class SipService:
    """The endpoint (``sip.enabled``) and its authentication, started with the server."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._settings = runtime.settings.sip
        self._digest: DigestAuth | None = None
        self.endpoint = SipEndpoint(
            self._settings,
            on_invite=self._invite,
            on_register=self._register,
            on_dialog=self._in_dialog,
            on_cancel=self._cancel,
        )
        self.calls = SipCalls(runtime, self.endpoint)

    @property
    def counters(self) -> SipCounters:
        return self.endpoint.counters

    async def start(self) -> None:
        runtime = self._runtime
        keys = StoredKeys(runtime.db, runtime.clock)
        self._digest = await load_digest_auth(keys, self._settings, runtime.clock)
        await self.endpoint.start()

    async def stop(self) -> None:
        await self.calls.stop()
        await self.endpoint.stop()

    async def _authenticated(self, incoming: Incoming) -> SipPrincipal | None:
        """The request's principal, or ``None`` once it was answered 401 or 403."""
        assert self._digest is not None, "start() first"
        settings, request = self._settings, incoming.parsed.request
        authorization = request.headers.get("Authorization")
        runtime = self._runtime
        if not authorization and request.method == "INVITE":
            by_source = await authenticate_by_source(
                runtime.db, source_ip=incoming.source[0], clock=runtime.clock
            )
            if by_source.ok:
                return by_source.principal
            if by_source.verdict is Verdict.FORBIDDEN:
                incoming.answer(
                    403, "Forbidden", headers=[("Reason", reason_header(by_source.reason))]
                )
                return None
        if not authorization:
            challenge = self._digest.challenge(settings.domain, settings.digest_algorithm)
            incoming.answer(401, "Unauthorized", headers=[("WWW-Authenticate", challenge)])
            return None
        result = await authenticate(
            runtime.db,
            runtime.credential_box,
            self._digest,
            authorization=authorization,
            method=request.method,
            source_ip=incoming.source[0],
            realm=settings.domain,
            algorithm=settings.digest_algorithm,
            clock=runtime.clock,
        )
        if result.ok:
            return result.principal
        if result.stale:
            stale = self._digest.challenge(settings.domain, settings.digest_algorithm, stale=True)
            incoming.answer(401, "Unauthorized", headers=[("WWW-Authenticate", stale)])
            return None
        log.info("SIP request refused", method=request.method, reason=result.reason)
        incoming.answer(403, "Forbidden")
        return None

    async def _register(self, incoming: Incoming) -> None:
        principal = await self._authenticated(incoming)
        if principal is None:
            return
        request = incoming.parsed.request
        contact = request.headers.get("Contact")
        requested = _requested_expiry(contact, request.headers.get("Expires"))
        expires = min(requested, MAX_REGISTER_SECONDS)
        headers = [("Expires", str(expires))]
        if contact and contact.strip() != "*":
            headers.append(("Contact", f"{_EXPIRES.sub('', contact)};expires={expires}"))
        log.info("SIP registration accepted (not stored)", username=principal.username)
        incoming.answer(200, "OK", headers=headers)

    async def _invite(self, incoming: Incoming) -> None:
        key = incoming.transaction.key
        self.calls.starting(key)
        try:
            principal = await self._authenticated(incoming)
            if principal is not None:
                await self.calls.invite(incoming, principal)
        finally:
            self.calls.started(key)

    async def _in_dialog(self, incoming: Incoming) -> None:
        await self.calls.in_dialog(incoming)

    def _cancel(self, key: Key) -> None:
        self.calls.cancel(key)


def _requested_expiry(contact: str | None, expires: str | None) -> int:
    """The expiry a REGISTER asks for: the Contact's ``expires`` parameter, else the Expires
    header, else an hour."""
    for text in (contact or "", f";expires={expires}" if expires else ""):
        match = _EXPIRES.search(text)
        if match is not None:
            return int(match.group(1))
    return MAX_REGISTER_SECONDS
