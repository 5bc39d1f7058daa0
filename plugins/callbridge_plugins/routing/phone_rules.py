"""The ``phone_rules`` strategy: the API key's routing rules, in precedence order.

Rules without any condition are skipped here: they would take every call and shadow the rest
of the chain, so such a rule serves only as a connector's ``defaultRuleId`` (``default_rule``).
"""

from __future__ import annotations

from collections.abc import Iterator

from callbridge import hookimpl
from callbridge.plugin_types import EmptyConfig, RoutingStrategyPlugin
from callbridge.protocols import PluginContext, RouteDecision, RoutingContext
from callbridge.routing.rules import RuleMatch, evaluate, precedence
from callbridge_plugins.routing._rule_route import route_of

_NO_CONDITION = RuleMatch()


class PhoneRulesStrategy:
    """Routes by the first rule whose conditions the call meets."""

    name = "phone_rules"

    def __init__(self, config: EmptyConfig, context: PluginContext) -> None:
        self._rules = context.rules

    async def route(self, context: RoutingContext) -> RouteDecision:
        if self._rules is None or context.facts is None:
            return RouteDecision(None, ("no rule store in this context",))
        rules = [
            rule
            for rule in await self._rules.rules_for(context.connector.apikey)
            if rule.match != _NO_CONDITION
        ]
        if not rules:
            return RouteDecision(None, ("this API key has no routing rule with conditions",))
        verdicts = []
        for rule in precedence(rules):
            verdict = evaluate(rule, context.facts)
            verdicts.append(verdict)
            if verdict.matched and verdict.room_id is not None:
                route = route_of(rule, verdict.room_id, self.name)
                return RouteDecision(route, (f"rule {rule.id} matched",), tuple(verdicts))
        return RouteDecision(None, ("no rule matched",), tuple(verdicts))


@hookimpl
def callbridge_routing_strategies() -> Iterator[RoutingStrategyPlugin]:
    """Register the ``phone_rules`` strategy."""
    yield RoutingStrategyPlugin(
        name="phone_rules",
        factory=PhoneRulesStrategy,
        description="The API key's routing rules: numbers, prefixes, connectors, providers, hours",
    )
