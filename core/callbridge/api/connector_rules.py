"""What a connector may hold, beyond the types of its fields: the provider's codecs, markup
styles and credentials, a well-formed default room id, and signatures only with credentials.

Checks raise :class:`RuleError` naming the field; the controller decides the status (400 for
a body that is wrong on its own, 409 for a body that conflicts with the connector it updates).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from msgspec import UNSET

from callbridge.api.connector_shapes import (
    CODECS,
    MAX_CREDENTIAL_LENGTH,
    SAMPLE_RATES,
    UpdateConnectorRequest,
)
from callbridge.protocols import CodecSpec, CredentialsError, Provider
from callbridge.store.ids import is_room_id
from callbridge.store.models import Connector

NEEDS_CREDENTIALS: Final = "requires credentials"
_MAX_ECHOED_NAME: Final = 64


class RuleError(ValueError):
    """A connector field whose value cannot be accepted.

    Attributes:
        field: the field as a dotted path (``codec``, ``credentials.publicKey``).
        problem: what is wrong and what would be accepted; never quotes a credential.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class ProviderOptions:
    """What connectors of one enabled provider accept.

    Attributes:
        name: the provider's name (``twilio``).
        codecs: the codecs it can stream; the first is its default.
        markup_styles: its answer styles (empty when it has only one).
        credential_fields: the names of its credentials.
        credential_patterns: JSON-Schema patterns (never matching NUL) of the credential values
            the provider's ``validate_credentials`` accepts, for the fields it restricts.
        provider: the provider, whose ``validate_credentials`` checks credential values.
    """

    name: str
    codecs: tuple[CodecSpec, ...]
    markup_styles: tuple[str, ...]
    credential_fields: tuple[str, ...]
    credential_patterns: Mapping[str, str]
    provider: Provider

    @classmethod
    def of(cls, name: str, provider: Provider) -> ProviderOptions:
        return cls(
            name=name,
            codecs=tuple(spec for spec in provider.supported_codecs if _documentable(spec)),
            markup_styles=tuple(provider.markup_styles),
            credential_fields=tuple(provider.credential_fields),
            credential_patterns=dict(provider.credential_patterns),
            provider=provider,
        )

    def rates_of(self, codec: str | None) -> tuple[int, ...]:
        """The sample rates of ``codec`` (of any codec when ``None``), in the provider's order."""
        rates: list[int] = []
        for spec in self.codecs:
            if (codec is None or spec.name == codec) and spec.sample_rate not in rates:
                rates.append(spec.sample_rate)
        return tuple(rates)

    def codec_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(spec.name for spec in self.codecs))

    def _choices(self) -> str:
        specs = ", ".join(f"{spec.name}/{spec.sample_rate}" for spec in self.codecs)
        return f"{self.name} supports {specs}"

    def resolve_codec(
        self, codec: str | None, sample_rate: int | None
    ) -> tuple[str | None, int | None]:
        """The ``(codec, sample_rate)`` to store; ``(None, None)`` for the provider's default.

        A codec without a rate takes the codec's first rate; a rate without a codec takes the
        provider's first codec at that rate.

        Raises:
            RuleError: naming ``codec`` or ``sampleRate`` and listing the provider's choices.
        """
        if codec is None:
            if sample_rate is None:
                return None, None
            for spec in self.codecs:
                if spec.sample_rate == sample_rate:
                    return spec.name, sample_rate
            raise RuleError("sampleRate", self._choices())
        rates = self.rates_of(codec)
        if not rates:
            raise RuleError("codec", self._choices())
        if sample_rate is None:
            return codec, rates[0]
        if sample_rate not in rates:
            raise RuleError("sampleRate", self._choices())
        return codec, sample_rate

    def check_markup_style(self, style: str | None) -> None:
        """Raises :class:`RuleError` naming ``markupStyle`` when the provider has no such style."""
        if style is None:
            return
        if not self.markup_styles:
            raise RuleError("markupStyle", f"{self.name} has no markup styles")
        if style not in self.markup_styles:
            raise RuleError("markupStyle", f"must be one of: {', '.join(self.markup_styles)}")

    def check_credentials(self, values: Mapping[str, Any]) -> dict[str, str]:
        """Exactly the provider's credential fields, each 1-512 characters without NUL, with
        values the provider accepts (``validate_credentials``).

        Raises:
            RuleError: naming ``credentials.<field>`` (never a value).
        """
        fields = self.credential_fields
        if not fields:
            raise RuleError("credentials", f"{self.name} takes no credentials")
        takes = f"{self.name} takes {', '.join(fields)}"
        for name in values:
            if name not in fields:
                raise RuleError(_credential_path(name), f"unknown field ({takes})")
        for name in fields:
            if name not in values:
                raise RuleError(f"credentials.{name}", "is required")
        checked = check_credential_values(values)
        try:
            self.provider.validate_credentials(checked)
        except CredentialsError as error:
            raise RuleError(_credential_path(error.field), error.problem) from None
        return checked


def _documentable(spec: CodecSpec) -> bool:
    # The API can only name the codecs and rates its shapes know.
    return spec.name in CODECS and spec.sample_rate in SAMPLE_RATES


def _credential_path(name: str) -> str:
    if len(name) > _MAX_ECHOED_NAME or not name.isprintable():
        return "credentials"
    return f"credentials.{name}"


def check_credential_values(values: Mapping[str, Any]) -> dict[str, str]:
    """The credentials as strings, each 1-512 characters without NUL.

    Raises:
        RuleError: naming ``credentials.<field>``.
    """
    checked: dict[str, str] = {}
    for name, value in values.items():
        if not isinstance(value, str):
            raise RuleError(_credential_path(name), "must be a string")
        if not 1 <= len(value) <= MAX_CREDENTIAL_LENGTH or "\x00" in value:
            raise RuleError(
                _credential_path(name),
                f"must be 1-{MAX_CREDENTIAL_LENGTH} characters without NUL",
            )
        checked[name] = value
    return checked


def check_room_id(value: str | None) -> None:
    """Raises :class:`RuleError` naming ``defaultRoomId`` unless ``value`` is a room id."""
    if value is not None and not is_room_id(value):
        raise RuleError(
            "defaultRoomId",
            "must be 1-128 characters of A-Z a-z 0-9 _ . : - starting with a letter or digit",
        )


def check_update_body(data: UpdateConnectorRequest, providers: Sequence[ProviderOptions]) -> None:
    """What an update body must satisfy whichever enabled provider the connector has: the room
    id, codecs, rates and markup styles of some enabled provider, the credentials of one, and
    no ``verifySignatures: true`` with ``credentials: null``.

    Raises:
        RuleError: naming the field.
    """
    if data.default_room_id is not UNSET:
        check_room_id(data.default_room_id)
    if isinstance(data.codec, str):
        _check_one_of("codec", data.codec, _union(p.codec_names() for p in providers))
    if isinstance(data.sample_rate, int):
        _check_one_of("sampleRate", data.sample_rate, _union(p.rates_of(None) for p in providers))
    if isinstance(data.markup_style, str):
        styles = _union(p.markup_styles for p in providers)
        if not styles:
            raise RuleError("markupStyle", "no enabled provider has markup styles")
        _check_one_of("markupStyle", data.markup_style, styles)
    if isinstance(data.credentials, dict):
        _check_some_provider_credentials(data.credentials, providers)
    if data.verify_signatures is True and data.credentials is None:
        raise RuleError("verifySignatures", f"{NEEDS_CREDENTIALS}; turn it off to remove them")


def _union(groups: Iterable[Iterable[Any]]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(item for group in groups for item in group))


def _check_one_of(field: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise RuleError(field, f"must be one of: {', '.join(str(c) for c in choices)}")


def _check_some_provider_credentials(
    values: Mapping[str, Any], providers: Sequence[ProviderOptions]
) -> None:
    check_credential_values(values)
    candidates = [
        p for p in providers if p.credential_fields and set(p.credential_fields) == set(values)
    ]
    if not candidates:
        sets = "; ".join(
            f"{p.name}: {', '.join(p.credential_fields)}" for p in providers if p.credential_fields
        )
        raise RuleError("credentials", f"must be the fields of one provider ({sets})")
    refusals: list[RuleError] = []
    for options in candidates:
        try:
            options.check_credentials(values)
            return
        except RuleError as error:
            refusals.append(error)
    raise refusals[0]


def check_update(
    enabled: ProviderOptions | None, connector: Connector, data: UpdateConnectorRequest
) -> dict[str, Any]:
    """The provider-dependent fields an update stores, checked against the stored ``connector``:
    ``codec`` and ``sample_rate`` (resolved together), ``verify_signatures``, and
    ``credentials`` (the checked values, or ``None`` to remove them).

    Args:
        enabled: what the connector's provider accepts; ``None`` when it is no longer enabled.

    Raises:
        RuleError: the connector's provider cannot take a value (or is no longer enabled), or
            signatures would be verified without credentials.
    """

    def provider() -> ProviderOptions:
        if enabled is None:
            raise RuleError("provider", f"{connector.provider} is not enabled on this server")
        return enabled

    fields: dict[str, Any] = {}
    if data.codec is not UNSET or data.sample_rate is not UNSET:
        codec = connector.codec if data.codec is UNSET else data.codec
        rate: int | None
        if data.sample_rate is not UNSET:
            rate = data.sample_rate
        elif data.codec is not UNSET:
            rate = None  # a new codec takes its own default rate
        else:
            rate = connector.sample_rate
        fields["codec"], fields["sample_rate"] = provider().resolve_codec(codec, rate)
    if data.markup_style is not UNSET:
        provider().check_markup_style(data.markup_style)
    if data.credentials is not UNSET:
        fields["credentials"] = (
            None if data.credentials is None else provider().check_credentials(data.credentials)
        )
    has_credentials = (
        connector.credentials is not None
        if data.credentials is UNSET
        else data.credentials is not None
    )
    verify = (
        connector.verify_signatures if data.verify_signatures is UNSET else data.verify_signatures
    )
    if verify and not has_credentials:
        if data.credentials is UNSET:
            raise RuleError("verifySignatures", NEEDS_CREDENTIALS)
        raise RuleError("verifySignatures", f"{NEEDS_CREDENTIALS}; turn it off to remove them")
    if data.verify_signatures is not UNSET:
        fields["verify_signatures"] = data.verify_signatures
    return fields
