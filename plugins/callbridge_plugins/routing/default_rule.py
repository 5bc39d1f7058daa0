"""The ``default_rule`` strategy: the connector's ``defaultRuleId`` decides where its calls go,
whatever the rule's conditions (they are for ``phone_rules``)."""

from __future__ import annotations

from collections.abc import Iterator

from callbridge import hookimpl
from callbridge.plugin_types import EmptyConfig, RoutingStrategyPlugin
from callbridge.protocols import PluginContext, RouteDecision, RoutingContext
from callbridge.routing.rules import RuleVerdict, room_for
from callbridge_plugins.routing._rule_route import route_of


class DefaultRuleStrategy:
    """Routes by the connector's default rule's dispatch."""

    name = "default_rule"

    def __init__(self, config: EmptyConfig, context: PluginContext) -> None:
        self._rules = context.rules

    async def route(self, context: RoutingContext) -> RouteDecision:
        rule_id = context.connector.default_rule_id
        if not rule_id:
            return RouteDecision(None, ("the connector has no defaultRuleId",))
        if self._rules is None or context.facts is None:
            return RouteDecision(None, ("no rule store in this context",))
        rule = await self._rules.rule(context.connector.apikey, rule_id)
        if rule is None:
            return RouteDecision(None, (f"the connector's defaultRuleId {rule_id} does not exist",))
        room_id, problem = room_for(rule.dispatch, context.facts)
        if room_id is None:
            verdict = RuleVerdict(rule.id, rule.name, rule.priority, False, (problem,))
            return RouteDecision(None, (f"default rule {rule.id} gives no room",), (verdict,))
        verdict = RuleVerdict(
            rule.id, rule.name, rule.priority, True, ("the connector's default rule",), room_id
        )
        route = route_of(rule, room_id, self.name)
        return RouteDecision(route, (f"the connector's defaultRuleId is {rule.id}",), (verdict,))


@hookimpl
def callbridge_routing_strategies() -> Iterator[RoutingStrategyPlugin]:
    """Register the ``default_rule`` strategy."""
    yield RoutingStrategyPlugin(
        name="default_rule",
        factory=DefaultRuleStrategy,
        description="The connector's defaultRuleId rule",
    )
