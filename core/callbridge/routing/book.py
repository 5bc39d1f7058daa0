"""The rule book: every routing rule of every API key, the YAML's (kept in memory, read-only)
and the API's (in the store). Routing strategies read it through their plugin context."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from callbridge.routing.codec import rule_from_spec
from callbridge.routing.rules import RoutingRule
from callbridge.store.db import Database
from callbridge.store.models import RoutingRuleRow
from callbridge.store.repository import transaction

MAX_CACHED_RULES: Final = 10_000
"""Decoded stored rules kept; beyond, the cache starts over."""
EVERY_API_KEY: Final = "*"
"""The ``apikey`` of a YAML rule that names none: it applies to every API key's calls."""


class RuleBook:
    """Reads rules (a :class:`~callbridge.protocols.RuleReader`)."""

    def __init__(self, db: Database, config_rules: Sequence[RoutingRule] = ()) -> None:
        self._db = db
        self._config_rules: tuple[RoutingRule, ...] = tuple(config_rules)
        self._cache: dict[str, tuple[str, RoutingRule]] = {}

    @property
    def config_rules(self) -> tuple[RoutingRule, ...]:
        """The YAML's rules."""
        return self._config_rules

    def set_config_rules(self, rules: Sequence[RoutingRule]) -> None:
        """Replace the YAML's rules (at start-up)."""
        self._config_rules = tuple(rules)

    def config_rules_of(self, apikey: str) -> list[RoutingRule]:
        """The YAML rules that apply to ``apikey``'s calls."""
        return [rule for rule in self._config_rules if rule.apikey in (apikey, EVERY_API_KEY)]

    async def rules_for(self, apikey: str) -> list[RoutingRule]:
        """Every rule that applies to ``apikey``'s calls, YAML's first (unordered otherwise:
        :func:`~callbridge.routing.rules.precedence` orders them)."""
        async with transaction(self._db) as repo:
            rows = await repo.list_rules(apikey)
        return self.config_rules_of(apikey) + [self._decoded(row) for row in rows]

    async def rule(self, apikey: str, rule_id: str) -> RoutingRule | None:
        """One rule that applies to ``apikey``'s calls, or ``None``."""
        for rule in self.config_rules_of(apikey):
            if rule.id == rule_id:
                return rule
        async with transaction(self._db) as repo:
            row = await repo.get_rule(apikey, rule_id)
        if row is None:
            return None
        return self._decoded(row)

    def _decoded(self, row: RoutingRuleRow) -> RoutingRule:
        """The engine's rule of a stored row, decoded once per content of the row: decoding
        re-checks every number with ``phonenumbers``, too dear for every webhook."""
        cached = self._cache.get(row.id)
        if cached is not None and cached[0] == row.spec and cached[1].apikey == row.apikey:
            return cached[1]
        if len(self._cache) >= MAX_CACHED_RULES:
            self._cache.clear()
        rule = rule_from_spec(
            row.spec, rule_id=row.id, apikey=row.apikey, created_at=row.created_at
        )
        self._cache[row.id] = (row.spec, rule)
        return rule
