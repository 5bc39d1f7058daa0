"""The parts of the OpenAPI document that depend on the configuration or that Litestar cannot
express, so that the document refuses exactly what the server refuses.

- ``CreateConnectorRequest`` becomes ``oneOf`` one closed schema per enabled provider,
  discriminated by ``provider``, each with that provider's codecs and rates (and which go
  together), markup styles, credential fields and the rule that ``verifySignatures: true``
  needs ``credentials``.
- ``UpdateConnectorRequest`` (which cannot name the provider) gets what any enabled provider
  accepts; what the connector's own provider cannot take is a 409.
- The provider voice webhook documents its answers: the provider's markup (XML or JSON).

Call :func:`document_api` at start-up (``on_startup``), before the document is first served.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from litestar import Litestar
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Components,
    Discriminator,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Parameter,
    Reference,
    Schema,
)
from litestar.openapi.spec.paths import Paths

from callbridge.api.connector_rules import ProviderOptions
from callbridge.api.connector_shapes import MAX_CREDENTIAL_LENGTH, NO_NUL
from callbridge.api.shapes import error_spec
from callbridge.runtime import Runtime
from callbridge.store.ids import WEBHOOK_KEY_RE

CREATE_SCHEMA: Final = "CreateConnectorRequest"
UPDATE_SCHEMA: Final = "UpdateConnectorRequest"
WEBHOOK_PATH: Final = "/v2/hooks/{provider}/{webhook_key}"
MARKUP_TYPES: Final[Mapping[str, OpenAPIType]] = {
    "text/xml": OpenAPIType.STRING,
    "application/xml": OpenAPIType.STRING,
    "application/json": OpenAPIType.OBJECT,
}
"""What providers answer a voice webhook with: TwiML-style XML (Twilio, Plivo, Telnyx) or, for
callbridge's own protocol, a JSON object."""

WEBHOOK_RESPONSES: Final[dict[int, ResponseSpec]] = {
    200: ResponseSpec(
        data_container=str,
        description="The provider's markup: XML (Twilio, Plivo, Telnyx) or a JSON object "
        "(custom clients). A call that no routing rule places still gets 200, with markup that "
        "tells the caller and hangs up.",
        generate_examples=False,
    ),
    400: error_spec("Not a webhook this provider sends; the message names what is wrong."),
    403: error_spec("The connector verifies signatures and this request's signature is wrong."),
    404: error_spec("Unknown provider, or no connector with this webhook key (or one rotated)."),
    409: error_spec("A retried webhook for a call that is already connected or over."),
    413: error_spec("The body is larger than 64 KiB."),
    429: error_spec(
        "Too many webhooks from this client IP (`security.rate_limits`); see `Retry-After`."
    ),
    503: error_spec("Too many calls are waiting for their media socket; see `Retry-After`."),
}
"""The voice webhook's answers, for its route's ``responses=`` (the markup's media types are
set by :func:`document_api`)."""

_NULL: Final = Schema(type=OpenAPIType.NULL)
_VERIFY_RULE: Final = "`verifySignatures: true` needs `credentials`."


def document_api(app: Litestar) -> None:
    """Rewrite the app's OpenAPI document for the enabled providers (see the module doc).

    Reads ``app.state.runtime`` and ``app.state.provider_names``; use as an ``on_startup``
    hook.
    """
    runtime: Runtime = app.state.runtime
    providers = [
        ProviderOptions.of(name, runtime.providers[name]) for name in app.state.provider_names
    ]
    document = app.openapi_schema
    if document.components.schemas:
        _document_connector_bodies(document.components, providers)
        _document_rule_bodies(document.components.schemas, runtime)
    if document.paths:
        _document_webhook(document.paths, [p.name for p in providers])
        _document_rate_limits(document.paths)


# --------------------------------------------------------------------------- rate limits

_RATE_LIMIT_HEADERS: Final = {
    "Retry-After": "Seconds until the client may try again.",
    "RateLimit-Limit": "Requests allowed per window.",
    "RateLimit-Remaining": "Requests left in this window (0).",
    "RateLimit-Reset": "Seconds until the window has room again.",
    "RateLimit-Policy": "The limit and its window in seconds (`60;w=60`).",
}
_UNAUTHORIZED_LIMITED: Final = (
    "Too many requests with a missing or bad token from this client IP "
    "(`security.rate_limits.unauthorized_per_minute`); see `Retry-After`. A request with a "
    "valid token is never limited."
)


def _document_rate_limits(paths: Paths) -> None:
    """Every operation that may answer 401 may answer 429 past the limit of 401s; the voice
    webhook's 429 (in :data:`WEBHOOK_RESPONSES`) gets its headers too."""
    headers = {
        name: OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING), description=text)
        for name, text in _RATE_LIMIT_HEADERS.items()
    }
    for item in paths.values():
        for operation in (item.get, item.put, item.post, item.patch, item.delete):
            if operation is None or not operation.responses:
                continue
            unauthorized = operation.responses.get("401")
            if isinstance(unauthorized, OpenAPIResponse) and "429" not in operation.responses:
                operation.responses["429"] = OpenAPIResponse(
                    description=_UNAUTHORIZED_LIMITED, content=unauthorized.content
                )
            limited = operation.responses.get("429")
            if isinstance(limited, OpenAPIResponse):
                limited.headers = dict(headers)


# --------------------------------------------------------------------------- routing rules

_CLOSED_RULE_SCHEMAS: Final = (
    "MatchShape",
    "TimeWindowShape",
    "RoomDispatch",
    "CallerDispatch",
    "CalleeDispatch",
    "ExplainRequest",
)
_ADDRESS_ITEM: Final = Schema(
    type=OpenAPIType.STRING, min_length=1, max_length=255, pattern=r"^[^\x00]*\S[^\x00]*$"
)


def _document_rule_bodies(schemas: dict[str, Any], runtime: Runtime) -> None:
    """Routing rule bodies name only this server's transports, regions and providers; the
    item constraints of their lists (which Litestar drops) are restored; nested objects are
    closed, as the server refuses unknown fields."""
    settings = runtime.settings
    for name in _CLOSED_RULE_SCHEMAS:
        schema = schemas.get(name)
        if isinstance(schema, Schema):
            schema.additional_properties = False
    match = schemas.get("MatchShape")
    if isinstance(match, Schema) and match.properties is not None:
        for field in ("to", "from"):
            _set_items(match.properties, field, _ADDRESS_ITEM)
        for field in ("toPrefixes", "fromPrefixes"):
            _set_items(
                match.properties,
                field,
                Schema(type=OpenAPIType.STRING, pattern=r"^\+?[0-9]{1,15}$"),
            )
        _set_items(
            match.properties,
            "connectorIds",
            Schema(type=OpenAPIType.STRING, min_length=1, max_length=64, pattern=NO_NUL),
        )
        _set_items(
            match.properties,
            "providers",
            Schema(type=OpenAPIType.STRING, enum=list(settings.providers.enabled)),
        )
    window = schemas.get("TimeWindowShape")
    if isinstance(window, Schema) and window.properties is not None:
        day = "(mon|tue|wed|thu|fri|sat|sun)"
        _set_items(
            window.properties, "days", Schema(type=OpenAPIType.STRING, pattern=f"^{day}(-{day})?$")
        )
    for body in ("RuleBody", "RulePatch"):
        schema = schemas.get(body)
        if not isinstance(schema, Schema) or schema.properties is None:
            continue
        for field, choices in (
            ("transport", list(settings.rooms.enabled)),
            ("region", list(settings.routing.regions)),
        ):
            if field in schema.properties:
                schema.properties[field] = Schema(
                    one_of=[
                        *([Schema(type=OpenAPIType.STRING, enum=choices)] if choices else []),
                        Schema(type=OpenAPIType.NULL),
                    ],
                    description=_description(schema.properties, field),
                )


def _set_items(properties: dict[str, Any], field: str, items: Schema) -> None:
    prop = properties.get(field)
    if isinstance(prop, Schema):
        prop.items = items


# --------------------------------------------------------------------------- connector bodies


def create_body_schema(base: Schema, options: ProviderOptions) -> Schema:
    """The create body of one provider's connectors, from the generated ``base`` schema."""
    properties = dict(base.properties or {})
    properties["provider"] = Schema(
        type=OpenAPIType.STRING,
        const=options.name,
        description=_description(properties, "provider"),
    )
    codec_names = options.codec_names()
    properties["codec"] = _nullable(
        _description(properties, "codec"),
        *([Schema(type=OpenAPIType.STRING, enum=list(codec_names))] if codec_names else []),
    )
    rates = options.rates_of(None)
    properties["sampleRate"] = _nullable(
        _description(properties, "sampleRate"),
        *([Schema(type=OpenAPIType.INTEGER, enum=list(rates))] if rates else []),
    )
    properties["markupStyle"] = _markup_style_schema(
        _description(properties, "markupStyle"), options.markup_styles, options.name
    )
    rules: list[Schema] = []
    codec_rule = _codec_rule(options)
    if codec_rule is not None:
        rules.append(codec_rule)
    if options.credential_fields:
        properties["credentials"] = _nullable(
            _description(properties, "credentials"), credentials_schema(options)
        )
        rules.append(_verify_rule(create=True))
    else:
        properties["credentials"] = Schema(
            type=OpenAPIType.NULL, description=f"{options.name} takes no credentials."
        )
        properties["verifySignatures"] = Schema(
            type=OpenAPIType.BOOLEAN,
            const=False,
            description=f"{options.name} takes no credentials, so signatures cannot be checked.",
        )
    return Schema(
        type=OpenAPIType.OBJECT,
        title=f"Create a {options.name} connector",
        properties=properties,
        required=["provider"],
        additional_properties=False,
        all_of=rules or None,
    )


def update_option_schemas(providers: Sequence[ProviderOptions]) -> dict[str, Schema]:
    """Schemas of ``codec``, ``sampleRate``, ``markupStyle`` and ``credentials`` on update: what
    any enabled provider accepts (each value is then checked against the connector's own)."""
    codecs = _union(p.codec_names() for p in providers)
    rates = _union(p.rates_of(None) for p in providers)
    styles = _union(p.markup_styles for p in providers)
    same_credentials: dict[tuple[Any, ...], list[ProviderOptions]] = {}
    for options in providers:
        if options.credential_fields:
            key = (options.credential_fields, tuple(sorted(options.credential_patterns.items())))
            same_credentials.setdefault(key, []).append(options)
    credential_objects = [
        credentials_schema(group[0], title=f"{', '.join(p.name for p in group)} credentials")
        for group in same_credentials.values()
    ]
    return {
        "codec": Schema(
            one_of=[Schema(type=OpenAPIType.STRING, enum=list(codecs)), _NULL] if codecs else None,
            type=None if codecs else OpenAPIType.NULL,
        ),
        "sampleRate": Schema(
            one_of=[Schema(type=OpenAPIType.INTEGER, enum=list(rates)), _NULL] if rates else None,
            type=None if rates else OpenAPIType.NULL,
        ),
        "markupStyle": _markup_style_schema(None, styles, "no enabled provider"),
        "credentials": Schema(any_of=[*credential_objects, _NULL]),
    }


def credentials_schema(options: ProviderOptions, title: str | None = None) -> Schema:
    """The closed object of one provider's credentials (values the provider's patterns, or any
    1-512 characters without NUL)."""
    return Schema(
        type=OpenAPIType.OBJECT,
        title=title or f"{options.name} credentials",
        properties={
            field: Schema(
                type=OpenAPIType.STRING,
                min_length=1,
                max_length=MAX_CREDENTIAL_LENGTH,
                pattern=options.credential_patterns.get(field, NO_NUL),
            )
            for field in options.credential_fields
        },
        required=list(options.credential_fields),
        additional_properties=False,
    )


def _document_connector_bodies(
    components: Components, providers: Sequence[ProviderOptions]
) -> None:
    schemas = components.schemas
    create = schemas.get(CREATE_SCHEMA)
    if isinstance(create, Schema) and create.properties is not None:  # not yet rewritten
        branches: dict[str, str] = {}
        for options in providers:
            component = _component_name(options.name, schemas)
            schemas[component] = create_body_schema(create, options)
            branches[options.name] = f"#/components/schemas/{component}"
        schemas[CREATE_SCHEMA] = Schema(
            one_of=[Reference(ref=ref) for ref in branches.values()],
            discriminator=Discriminator(property_name="provider", mapping=branches),
            description=f"Body of `POST /v2/connectors`: one provider's connector. {_VERIFY_RULE}",
        )
    update = schemas.get(UPDATE_SCHEMA)
    if isinstance(update, Schema) and update.properties is not None:
        for field, schema in update_option_schemas(providers).items():
            if field in update.properties:
                schema.description = _description(update.properties, field)
                update.properties[field] = schema
        update.all_of = [_verify_rule(create=False)]


def _component_name(provider: str, taken: Mapping[str, Any]) -> str:
    words = re.split(r"[^A-Za-z0-9]+", provider)
    stem = "Create" + "".join(word[:1].upper() + word[1:] for word in words) + "Connector"
    name, number = stem, 1
    while name in taken:
        number += 1
        name = f"{stem}{number}"
    return name


def _codec_rule(options: ProviderOptions) -> Schema | None:
    rates = set(options.rates_of(None))
    codecs = options.codec_names()
    if all(set(options.rates_of(codec)) == rates for codec in codecs):
        return None  # every codec has every rate: the two enums say it all
    branches = [
        Schema(
            properties={
                "codec": Schema(type=OpenAPIType.STRING, const=codec),
                "sampleRate": _nullable(
                    None, Schema(type=OpenAPIType.INTEGER, enum=list(options.rates_of(codec)))
                ),
            },
            required=["codec"],
        )
        for codec in codecs
    ]
    branches.append(Schema(properties={"codec": _NULL}))
    return Schema(
        any_of=branches,
        description="`sampleRate` must be a rate of `codec`: "
        + ", ".join(f"{spec.name}/{spec.sample_rate}" for spec in options.codecs)
        + ".",
    )


def _verify_rule(*, create: bool) -> Schema:
    with_credentials = Schema(properties={"credentials": Schema(type=OpenAPIType.OBJECT)})
    if create:
        with_credentials.required = ["credentials"]
    return Schema(
        any_of=[
            Schema(properties={"verifySignatures": Schema(type=OpenAPIType.BOOLEAN, const=False)}),
            with_credentials,
        ],
        description=_VERIFY_RULE
        if create
        else f"{_VERIFY_RULE[:-1]} (in the body or already on the connector: 409 otherwise).",
    )


def _markup_style_schema(description: str | None, styles: Sequence[str], owner: str) -> Schema:
    if not styles:
        return Schema(
            type=OpenAPIType.NULL,
            description=description or f"{owner} has no markup styles; only `null`.",
        )
    return _nullable(description, Schema(type=OpenAPIType.STRING, enum=list(styles)))


def _nullable(description: str | None, *choices: Schema) -> Schema:
    if not choices:
        return Schema(type=OpenAPIType.NULL, description=description)
    return Schema(one_of=[*choices, _NULL], description=description)


def _description(properties: Mapping[str, Any], field: str) -> str | None:
    schema = properties.get(field)
    return schema.description if isinstance(schema, Schema) else None


def _union(groups: Iterable[Iterable[Any]]) -> list[Any]:
    return list(dict.fromkeys(item for group in groups for item in group))


# --------------------------------------------------------------------------- voice webhook


def _document_webhook(paths: Paths, provider_names: Sequence[str]) -> None:
    item = paths.get(WEBHOOK_PATH)
    if item is None:
        return
    for operation in (item.get, item.post):
        if operation is None:
            continue
        responses = operation.responses or {}
        markup = responses.get("200")
        if isinstance(markup, OpenAPIResponse):
            markup.content = {
                media_type: OpenAPIMediaType(schema=Schema(type=schema_type))
                for media_type, schema_type in MARKUP_TYPES.items()
            }
        busy = responses.get("503")
        if isinstance(busy, OpenAPIResponse):
            busy.headers = {
                "Retry-After": OpenAPIHeader(
                    schema=Schema(type=OpenAPIType.STRING),
                    description="Seconds to wait before retrying.",
                )
            }
        for parameter in operation.parameters or []:
            if not isinstance(parameter, Parameter):
                continue
            if parameter.name == "provider":
                parameter.schema = Schema(type=OpenAPIType.STRING, enum=list(provider_names))
            elif parameter.name == "webhook_key":
                parameter.schema = Schema(
                    type=OpenAPIType.STRING,
                    pattern=WEBHOOK_KEY_RE.pattern,
                    description="The secret key from the connector's `webhookUrl`.",
                )
