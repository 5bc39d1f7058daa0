"""``callbridge routes explain``: ask a server why a call would go where it goes, and print
the answer of ``POST /v2/routing/explain`` as a table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class ExplainOptions:
    """What to explain, and where to ask."""

    server_url: str
    token: str
    connector_id: str
    from_number: str | None = None
    to_number: str | None = None
    room_id: str | None = None
    at: str | None = None


class ExplainFailed(Exception):
    """The server refused the question; the message is its answer."""


def explain(options: ExplainOptions) -> dict[str, Any]:
    """The server's explanation (its ``data``). Raises :class:`ExplainFailed`."""
    body: dict[str, Any] = {"connectorId": options.connector_id}
    for key, value in (
        ("from", options.from_number),
        ("to", options.to_number),
        ("roomId", options.room_id),
        ("at", options.at),
    ):
        if value is not None:
            body[key] = value
    try:
        response = httpx.post(
            f"{options.server_url.rstrip('/')}/v2/routing/explain",
            json=body,
            headers={"Authorization": f"Bearer {options.token}"},
            timeout=10,
        )
    except httpx.HTTPError as exc:
        raise ExplainFailed(f"cannot reach {options.server_url}: {exc}") from None
    if response.status_code != 200:
        try:
            message = response.json().get("message", response.text)
        except ValueError:
            message = response.text
        raise ExplainFailed(f"{response.status_code}: {message}")
    data: dict[str, Any] = response.json()["data"]
    return data


def render(data: Mapping[str, Any]) -> str:
    """The explanation as text: the call, every strategy and rule with its verdict, the
    decision and the region."""
    call = data["call"]
    lines = [
        f"call      {_party(call.get('from'))} → {_party(call.get('to'))}"
        f" on {call['connectorId']} ({call['provider']}) at {call['at']}",
        "",
    ]
    rows: list[tuple[str, str, str, str]] = []
    for step in data["steps"]:
        mark = "✔ decided" if step["decided"] else "· passed"
        rows.append((step["strategy"], "", mark, "; ".join(step["reasons"])))
        for rule in step["rules"]:
            label = rule["ruleId"] + (f" ({rule['name']})" if rule["name"] else "")
            verdict = f"✔ → {rule['roomId']}" if rule["matched"] else "✘"
            rows.append(("", f"{label} p{rule['priority']}", verdict, "; ".join(rule["reasons"])))
    headers = ("STRATEGY", "RULE", "VERDICT", "WHY")
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(3)]
    for row in [headers, *rows]:
        lines.append(
            "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3]
        )
    lines.append("")
    decision = data.get("decision")
    if decision is None:
        lines.append(f"decision  none: {data['explanation']}")
    else:
        rule = f", rule {decision['ruleId']}" if decision.get("ruleId") else ""
        lines.append(
            f"decision  room {decision['roomId']} on {decision['transport']}"
            f" (by {decision['strategy']}{rule})"
        )
        region = data.get("region") or {}
        name, url, why = region.get("region") or "-", region.get("ingestUrl"), region.get("reason")
        lines.append(f"region    {name}: {url} ({why})")
    return "\n".join(lines)


def _party(party: Mapping[str, Any] | None) -> str:
    if party is None:
        return "(none)"
    e164 = party.get("e164")
    given = party["given"]
    return given if e164 in (None, given) else f"{given} [{e164}]"
