"""Routing rules the YAML declares (``routing_rules:``), checked like the API's."""

from __future__ import annotations

import msgspec

from callbridge.routing.book import EVERY_API_KEY
from callbridge.routing.codec import RuleChecks, RuleError, build_rule
from callbridge.routing.rules import RoutingRule
from callbridge.routing.shapes import RuleBody
from callbridge.settings import ConfigError, Settings
from callbridge.store.ids import RULE_ID_RE


def rule_checks(settings: Settings) -> RuleChecks:
    """What rules may name on a server with ``settings``."""
    return RuleChecks(
        transports=settings.rooms.enabled,
        regions=settings.routing.regions,
        providers=settings.providers.enabled,
        default_country=settings.routing.default_country,
    )


def config_rules(settings: Settings) -> list[RoutingRule]:
    """The YAML's rules, normalised. Raises :class:`ConfigError` naming the entry and field."""
    checks = rule_checks(settings)
    rules: list[RoutingRule] = []
    seen: set[str] = set()
    for index, entry in enumerate(settings.routing_rules):
        where = f"routing_rules[{index}]"
        body = dict(entry)
        rule_id = body.pop("id", None)
        apikey = body.pop("apikey", None)
        if not isinstance(rule_id, str) or RULE_ID_RE.fullmatch(rule_id) is None:
            raise ConfigError(f"{where}.id: required, 1-64 characters of A-Z a-z 0-9 _ . : -")
        if rule_id in seen:
            raise ConfigError(f"{where}.id: {rule_id!r} is used twice")
        seen.add(rule_id)
        if apikey is not None and not isinstance(apikey, str):
            raise ConfigError(f"{where}.apikey: must be an API key id")
        try:
            shape = msgspec.convert(body, RuleBody)
            rule = build_rule(
                shape,
                rule_id=rule_id,
                apikey=apikey or EVERY_API_KEY,
                source="config",
                created_at=None,
                checks=checks,
            )
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{where}: {_located(exc)}") from None
        except RuleError as exc:
            raise ConfigError(f"{where}.{exc}") from None
        rules.append(rule)
    _check_conflicts(rules)
    return rules


def _located(exc: msgspec.ValidationError) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.priority`": lead with the path
    message = str(exc)
    text, _, path = message.partition(" - at `$")
    return f"{path.rstrip('`').lstrip('.')}: {text}" if path else message


def _check_conflicts(rules: list[RoutingRule]) -> None:
    seen: dict[tuple[object, ...], str] = {}
    for rule in rules:
        key = (rule.apikey, rule.priority, rule.match.identity())
        other = seen.get(key)
        if other is not None:
            raise ConfigError(
                f"routing_rules: {rule.id} has the same match and priority as {other}"
            )
        seen[key] = rule.id
