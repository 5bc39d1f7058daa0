"""``/v2/routing-rules``: the API key's routing rules, and ``/v2/routing/explain``: why a call
would go where it goes.

Rules the YAML declares (``routing_rules:``) are listed with ``source: config`` and cannot be
changed or deleted here (409). A rule whose match and priority equal another's of the same API
key is refused with 409 naming the other. A rule that connectors name as their
``defaultRuleId`` cannot be deleted (409 listing them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Final

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.di import Provide
from litestar.params import Body
from msgspec import UNSET

from callbridge.api.auth import SECURITY_REQUIREMENT, Principal, auth_guard, authenticate
from callbridge.api.connector_shapes import MessageResponse
from callbridge.api.errors import ApiError
from callbridge.api.rule_shapes import (
    ExplainRequest,
    ExplainResponse,
    RuleData,
    RuleListResponse,
    RulePatch,
    RuleResponse,
)
from callbridge.api.shapes import (
    UNAUTHORIZED,
    PageInfo,
    PageNumber,
    PerPage,
    error_spec,
    format_timestamp,
    request_clock,
    runtime_of,
)
from callbridge.calls.intake import call_region, routing_context
from callbridge.protocols import CallInfo
from callbridge.routing.chain import route_call
from callbridge.routing.codec import RuleError, body_of, build_rule, match_key, spec_json
from callbridge.routing.config import rule_checks
from callbridge.routing.rules import RoutingRule, precedence
from callbridge.routing.shapes import RuleBody
from callbridge.sip.calls import SipConnector
from callbridge.sip.store import get_credential
from callbridge.store.ids import new_rule_id
from callbridge.store.repository import Repository, transaction

_NO_EXTRA_FIELDS: Final = {"additional_properties": False}
_BAD_REQUEST = error_spec(
    "Invalid request: a field the schema refuses, or a rule that can never match (a number "
    "that is not one, an unknown time zone, transport or region); the message names the field."
)
_NOT_FOUND = error_spec("No such routing rule for this API key.")
_CONFLICT = error_spec(
    "Another rule has the same match and priority (named in the message), the rule comes from "
    "the configuration (read-only), or connectors name it as their defaultRuleId (listed)."
)


def rule_data(rule: RoutingRule) -> RuleData:
    """The API's view of ``rule``."""
    body = body_of(rule)
    return RuleData(
        id=rule.id,
        name=rule.name,
        priority=rule.priority,
        match=body.match,
        dispatch=body.dispatch,
        transport=rule.transport,
        region=rule.region,
        codec=rule.codec,
        metadata=dict(rule.metadata),
        source=rule.source,
        created_at=None if rule.created_at is None else format_timestamp(rule.created_at),
    )


def _build(request: Request[Any, Any, Any], body: RuleBody, **identity: Any) -> RoutingRule:
    try:
        return build_rule(body, checks=rule_checks(runtime_of(request).settings), **identity)
    except RuleError as error:
        raise ApiError(400, str(error)) from None


async def _refuse_conflicts(
    request: Request[Any, Any, Any], repo: Repository, rule: RoutingRule
) -> None:
    runtime = runtime_of(request)
    for other in runtime.rules.config_rules_of(rule.apikey):
        if other.priority == rule.priority and other.match.identity() == rule.match.identity():
            raise ApiError(
                409, f"routing rule {other.id} (configuration) has the same match and priority"
            )
    clashing = await repo.rules_in_conflict(
        rule.apikey, match_key(rule.match), rule.priority, other_than=rule.id
    )
    if clashing:
        raise ApiError(409, f"routing rule {clashing[0].id} has the same match and priority")


def _read_only(rule_id: str) -> ApiError:
    return ApiError(
        409,
        f"routing rule {rule_id} is defined in the configuration (routing_rules:); change it there",
    )


class RoutingRuleController(Controller):
    """The Routing Rules API."""

    path = "/v2/routing-rules"
    tags = ["routing"]
    guards = [auth_guard]
    dependencies = {"principal": Provide(authenticate)}
    security = SECURITY_REQUIREMENT

    @post(
        "/",
        status_code=201,
        summary="Create a routing rule",
        description="Numbers are stored in E.164 (national formats read with "
        "`match.defaultCountry`, else `routing.default_country`); identities (`client:…`, "
        "`sip:…`) are kept as given and match only exactly.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 409: _CONFLICT},
    )
    async def create_rule(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        data: Annotated[RuleBody, Body(schema_extra=_NO_EXTRA_FIELDS)],
    ) -> RuleResponse:
        clock = request_clock(request)
        rule = _build(
            request,
            data,
            rule_id=new_rule_id(),
            apikey=principal.apikey,
            source="api",
            created_at=datetime.fromtimestamp(clock(), UTC),
        )
        async with transaction(request.app.state.db, clock, write=True) as repo:
            await _refuse_conflicts(request, repo, rule)
            row = await repo.create_rule(
                rule.id,
                rule.apikey,
                rule.name,
                rule.priority,
                match_key(rule.match),
                spec_json(rule),
            )
        stored = runtime_of(request).rules
        created = await stored.rule(principal.apikey, row.id)
        assert created is not None
        return RuleResponse(message="Routing rule created successfully", data=rule_data(created))

    @get(
        "/",
        summary="List routing rules",
        description="In the order they are tried: higher priority first, then older, then by "
        "id. Rules from the configuration are included (`source: config`).",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED},
    )
    async def list_rules(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        page: PageNumber = 1,
        perPage: PerPage = 20,
    ) -> RuleListResponse:
        rules = precedence(await runtime_of(request).rules.rules_for(principal.apikey))
        start = (page - 1) * perPage
        return RuleListResponse(
            message="Routing rules fetched successfully",
            page_info=PageInfo.of(page, perPage, len(rules)),
            data=[rule_data(rule) for rule in rules[start : start + perPage]],
        )

    @get(
        "/{rule_id:str}",
        summary="Get a routing rule",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: _NOT_FOUND},
    )
    async def get_rule(
        self, request: Request[Any, Any, Any], principal: Principal, rule_id: str
    ) -> RuleResponse:
        rule = await runtime_of(request).rules.rule(principal.apikey, rule_id)
        if rule is None:
            raise ApiError(404, "Not found")
        return RuleResponse(message="Routing rule fetched successfully", data=rule_data(rule))

    @patch(
        "/{rule_id:str}",
        summary="Update a routing rule",
        description="Absent fields stay; `match` and `dispatch` are replaced as a whole; "
        "`null` clears `transport`, `region` or `codec`.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: _NOT_FOUND, 409: _CONFLICT},
    )
    async def update_rule(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        rule_id: str,
        data: Annotated[RulePatch, Body(schema_extra=_NO_EXTRA_FIELDS)],
    ) -> RuleResponse:
        runtime = runtime_of(request)
        if any(rule.id == rule_id for rule in runtime.rules.config_rules_of(principal.apikey)):
            raise _read_only(rule_id)
        async with transaction(request.app.state.db, request_clock(request), write=True) as repo:
            current = await runtime.rules.rule(principal.apikey, rule_id)
            if current is None or current.source != "api":
                raise ApiError(404, "Not found")
            changes = {
                field: getattr(data, field)
                for field in RulePatch.__struct_fields__
                if getattr(data, field) is not UNSET
            }
            body = msgspec.structs.replace(body_of(current), **changes)
            rule = _build(
                request,
                body,
                rule_id=current.id,
                apikey=current.apikey,
                source="api",
                created_at=current.created_at,
            )
            await _refuse_conflicts(request, repo, rule)
            await repo.update_rule(
                principal.apikey,
                rule_id,
                name=rule.name,
                priority=rule.priority,
                match_key=match_key(rule.match),
                spec=spec_json(rule),
            )
        return RuleResponse(message="Routing rule updated successfully", data=rule_data(rule))

    @delete(
        "/{rule_id:str}",
        status_code=200,
        summary="Delete a routing rule",
        description="409 while connectors name it as their defaultRuleId (they are listed).",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: _NOT_FOUND, 409: _CONFLICT},
    )
    async def delete_rule(
        self, request: Request[Any, Any, Any], principal: Principal, rule_id: str
    ) -> MessageResponse:
        runtime = runtime_of(request)
        if any(rule.id == rule_id for rule in runtime.rules.config_rules_of(principal.apikey)):
            raise _read_only(rule_id)
        async with transaction(request.app.state.db, request_clock(request), write=True) as repo:
            if await repo.get_rule(principal.apikey, rule_id) is None:
                raise ApiError(404, "Not found")
            users = await repo.connectors_with_default_rule(principal.apikey, rule_id)
            if users:
                raise ApiError(
                    409,
                    f"routing rule {rule_id} is the defaultRuleId of connector(s) "
                    f"{', '.join(users)}; change them first",
                )
            await repo.delete_rule(principal.apikey, rule_id)
        return MessageResponse(message="Routing rule deleted successfully")


class RoutingExplainController(Controller):
    """``POST /v2/routing/explain``."""

    path = "/v2/routing"
    tags = ["routing"]
    guards = [auth_guard]
    dependencies = {"principal": Provide(authenticate)}
    security = SECURITY_REQUIREMENT

    @post(
        "/explain",
        status_code=200,
        summary="Explain where a call would go",
        description="Runs the routing chain on a call described by `connectorId`, `from`, `to` "
        "and optional `roomId` (the webhook URL's parameter) and `at` (for time windows), "
        "without placing it: the decision, the region and its ingest URL, and for every "
        "strategy and every rule it checked, whether it matched and why not.",
        responses={400: _BAD_REQUEST, 401: UNAUTHORIZED, 404: error_spec("No such connector.")},
    )
    async def explain(
        self,
        request: Request[Any, Any, Any],
        principal: Principal,
        data: Annotated[ExplainRequest, Body(schema_extra=_NO_EXTRA_FIELDS)],
    ) -> ExplainResponse:
        runtime = runtime_of(request)
        at = None
        if data.at is not None:
            try:
                at = datetime.fromisoformat(data.at.replace("Z", "+00:00"))
            except ValueError:
                raise ApiError(400, "at: not an ISO 8601 timestamp") from None
            if at.tzinfo is None:
                raise ApiError(400, "at: needs a time zone offset or Z")
        async with request.app.state.db.session() as session:
            connector: Any = await Repository(session).get_connector(
                principal.apikey, data.connector_id
            )
            if connector is None:  # a SIP call's "connector" is its SIP credential
                credential = await get_credential(session, principal.apikey, data.connector_id)
                if credential is not None:
                    connector = SipConnector(id=credential.id, apikey=credential.apikey)
        if connector is None:
            raise ApiError(404, "connectorId: no such connector or SIP credential for this API key")
        call = CallInfo(
            provider=connector.provider,
            provider_call_id="explain",
            from_number=data.from_,
            to_number=data.to,
        )
        query = {} if data.room_id is None else {"roomId": data.room_id}
        context = routing_context(runtime, call, connector, query, at)
        outcome = await route_call(runtime.routing_chain, context)
        facts = context.facts
        assert facts is not None
        decision: dict[str, Any] | None = None
        region: dict[str, Any] | None = None
        if outcome.route is not None:
            route = outcome.route
            region = call_region(runtime, route, context).to_json()
            decision = {
                "roomId": route.room_id,
                "strategy": route.strategy,
                "ruleId": route.rule_id,
                "transport": route.transport or runtime.settings.rooms.default,
                "codec": None if route.codec is None else route.codec.name,
                "metadata": dict(route.metadata),
            }
        return ExplainResponse(
            message="Routing explained",
            data={
                "decision": decision,
                "region": region,
                "explanation": outcome.reason,
                "call": {
                    "connectorId": connector.id,
                    "provider": connector.provider,
                    "from": _party(data.from_, facts.from_),
                    "to": _party(data.to, facts.to),
                    "at": format_timestamp(facts.at),
                },
                "steps": [step.to_json() for step in outcome.steps],
            },
        )


def _party(given: str | None, normalised: Any) -> dict[str, Any] | None:
    if given is None:
        return None
    return {"given": given, "e164": None if normalised is None else normalised.e164}
