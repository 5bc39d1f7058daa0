"""Connectors the YAML declares (``connectors:``): checked like the API's when the app is
built, written to the store at start-up (marked ``source: config``, read-only through the
API), and removed from it when the YAML no longer declares them.

An entry is a connector in the API's shape plus ``id`` (``cn_`` and up to 29 of ``a-z 0-9 _``),
``apikey`` (required when the YAML configures more than one API key, else the one) and
``webhookKey`` (``whk_`` + 32 letters and digits, from ``{$env: …}`` or ``{$file: …}``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog

from callbridge.api.connector_rules import (
    NEEDS_CREDENTIALS,
    ProviderOptions,
    RuleError,
    check_room_id,
)
from callbridge.api.connector_shapes import CreateConnectorRequest
from callbridge.protocols import Provider
from callbridge.redaction import remember_secrets
from callbridge.routing.book import EVERY_API_KEY
from callbridge.routing.rules import RoutingRule
from callbridge.runtime import Runtime
from callbridge.settings import ConfigError, Settings
from callbridge.store.ids import CONNECTOR_ID_RE, is_webhook_key
from callbridge.store.repository import transaction

log = structlog.get_logger("callbridge.config")


@dataclass(frozen=True)
class ConfigConnector:
    """One checked ``connectors:`` entry, ready to be written."""

    id: str
    apikey: str
    provider: str
    webhook_key: str
    fields: Mapping[str, Any]
    credentials: Mapping[str, str] | None

    def __repr__(self) -> str:  # never show the key or credentials
        return f"ConfigConnector(id={self.id!r}, provider={self.provider!r})"


def check_config_connectors(
    settings: Settings, providers: Mapping[str, Provider], rules: Sequence[RoutingRule]
) -> list[ConfigConnector]:
    """Every ``connectors:`` entry, checked against the enabled ``providers`` and the YAML's
    ``rules``. Raises :class:`ConfigError` naming the entry."""
    configured_keys = [key.apikey for key in settings.auth.api_keys]
    regions = settings.routing.regions
    checked: list[ConfigConnector] = []
    seen: set[str] = set()
    for index, entry in enumerate(settings.connectors):
        where = f"connectors[{index}]"
        body = dict(entry)
        connector_id = body.pop("id", None)
        apikey = body.pop("apikey", None)
        webhook_key = body.pop("webhookKey", None)
        if not isinstance(connector_id, str) or CONNECTOR_ID_RE.fullmatch(connector_id) is None:
            raise ConfigError(f"{where}.id: required, cn_ and 1-29 characters of a-z 0-9 _")
        if connector_id in seen:
            raise ConfigError(f"{where}.id: {connector_id!r} is used twice")
        seen.add(connector_id)
        if apikey is None and len(configured_keys) == 1:
            apikey = configured_keys[0]
        if not isinstance(apikey, str) or apikey not in configured_keys:
            raise ConfigError(f"{where}.apikey: must be one of auth.api_keys")
        if not isinstance(webhook_key, str) or not is_webhook_key(webhook_key):
            raise ConfigError(
                f"{where}.webhookKey: required, whk_ and 32 letters or digits "
                "(from {$env: NAME} or {$file: PATH})"
            )
        remember_secrets([webhook_key])
        try:
            data = msgspec.convert(body, CreateConnectorRequest)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        provider = providers.get(data.provider)
        if provider is None:
            raise ConfigError(f"{where}.provider: must be one of providers.enabled")
        options = ProviderOptions.of(data.provider, provider)
        try:
            check_room_id(data.default_room_id)
            codec, sample_rate = options.resolve_codec(data.codec, data.sample_rate)
            options.check_markup_style(data.markup_style)
            credentials = (
                None if data.credentials is None else options.check_credentials(data.credentials)
            )
            if data.verify_signatures and credentials is None:
                raise RuleError("verifySignatures", NEEDS_CREDENTIALS)
        except RuleError as error:
            raise ConfigError(f"{where}.{error}") from None
        if data.region is not None and regions and data.region not in regions:
            raise ConfigError(f"{where}.region: must be one of routing.regions")
        if data.default_rule_id is not None and not any(
            rule.id == data.default_rule_id and rule.apikey in (apikey, EVERY_API_KEY)
            for rule in rules
        ):
            raise ConfigError(
                f"{where}.defaultRuleId: must name a rule of routing_rules for this API key"
            )
        if credentials is not None:
            remember_secrets(credentials.values())
        checked.append(
            ConfigConnector(
                id=connector_id,
                apikey=apikey,
                provider=data.provider,
                webhook_key=webhook_key,
                fields={
                    "name": data.name,
                    "default_room_id": data.default_room_id,
                    "default_rule_id": data.default_rule_id,
                    "region": data.region,
                    "codec": codec,
                    "sample_rate": sample_rate,
                    "markup_style": data.markup_style,
                    "verify_signatures": data.verify_signatures,
                },
                credentials=credentials,
            )
        )
    return checked


async def sync_config_connectors(runtime: Runtime, connectors: list[ConfigConnector]) -> None:
    """Write the YAML's connectors to the store and remove those it no longer declares.

    Raises:
        ConfigError: an entry's id is taken by a connector made through the API.
    """
    async with transaction(runtime.db, runtime.clock, write=True) as repo:
        for connector in connectors:
            token = None
            if connector.credentials is not None:
                token = runtime.credential_box.encrypt(dict(connector.credentials), connector.id)
            try:
                await repo.upsert_config_connector(
                    connector.id,
                    connector.apikey,
                    connector.provider,
                    connector.webhook_key,
                    credentials_token=token,
                    **connector.fields,
                )
            except ValueError as exc:
                raise ConfigError(f"connectors: {exc}") from None
        removed = await repo.delete_config_connectors_except([c.id for c in connectors])
    if connectors or removed:
        log.info("configured connectors in place", connectors=len(connectors), removed=removed)
