"""The routing chain: strategies in configured order, the first decision wins, and every
strategy's reasoning is kept so the chain can explain the call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from callbridge.protocols import Route, RouteDecision, RoutingContext, RoutingStrategy
from callbridge.routing.rules import RuleVerdict


@dataclass(frozen=True)
class StrategyStep:
    """One strategy's part in a call's routing."""

    strategy: str
    decided: bool
    reasons: tuple[str, ...]
    rules: tuple[RuleVerdict, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "decided": self.decided,
            "reasons": list(self.reasons),
            "rules": [verdict.to_json() for verdict in self.rules],
        }

    def summary(self) -> str:
        """``phone_rules: rr_1 (support): to +1… not in [+1…]; …``"""
        parts = list(self.reasons)
        parts += [
            f"{verdict.rule_id}{f' ({verdict.name})' if verdict.name else ''}: "
            + "; ".join(verdict.reasons)
            for verdict in self.rules
        ]
        return f"{self.strategy}: " + (" | ".join(parts) if parts else "passed")


@dataclass(frozen=True)
class RoutingOutcome:
    """The chain's decision: a route, or none, with every step that led there."""

    route: Route | None
    steps: tuple[StrategyStep, ...]

    @property
    def reason(self) -> str:
        """One line: who routed the call, or why nobody did (each strategy's reasons)."""
        if self.route is not None:
            return f"routed by {self.route.strategy}"
        if not self.steps:
            return "no routing strategy chose a room (no strategies configured)"
        return "no routing strategy chose a room: " + "; ".join(
            step.summary() for step in self.steps
        )


def as_decision(answer: RouteDecision | Route | None) -> RouteDecision:
    """A strategy's answer as a decision (plain routes and ``None`` carry no reasoning)."""
    if isinstance(answer, RouteDecision):
        return answer
    return RouteDecision(answer)


async def route_call(chain: Sequence[RoutingStrategy], context: RoutingContext) -> RoutingOutcome:
    """Ask each strategy in turn; the first route wins."""
    steps: list[StrategyStep] = []
    for strategy in chain:
        decision = as_decision(await strategy.route(context))
        decided = decision.route is not None
        steps.append(StrategyStep(strategy.name, decided, decision.reasons, decision.rules))
        if decision.route is not None:
            return RoutingOutcome(decision.route, tuple(steps))
    return RoutingOutcome(None, tuple(steps))
