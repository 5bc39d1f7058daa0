"""The OpenAPI document agrees with the server: schemathesis runs every phase (examples,
coverage, fuzzing, stateful) with its default checks against the real app on loopback and
must find nothing.

The budget is fixed and the run derandomized (``--generation-deterministic``: Hypothesis
derives every example from the test itself, so no seed is involved and no example database is
kept; one worker), so a failure reproduces; the run takes about 25 s on two cores.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.api_app import new_tenant, serving_app

MAX_EXAMPLES = 70
TIME_LIMIT_SECONDS = 240
# A connector's defaultRuleId must name an existing routing rule of its API key, and the
# answer when it does not is 400 (the contract); no schema can say which ids exist,
# so on the two operations that take one a 400 is an expected answer to schema-valid data.
# The same holds for webhook URLs, refused with 400 when the SSRF rules refuse where they lead.
CONFIG = """
[[operations]]
include-path = "/v2/connectors"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = [
  "2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"
]

[[operations]]
include-path = "/v2/connectors/{connector_id}"
include-method = "PATCH"
checks.positive_data_acceptance.expected-statuses = [
  "2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"
]

[[operations]]
include-path-regex = "^/v2/(sip/)?webhooks/?$"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = [
  "2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"
]

[[operations]]
include-path-regex = "^/v2/(sip/)?webhooks/[{]webhook_id[}]$"
include-method = "PATCH"
checks.positive_data_acceptance.expected-statuses = [
  "2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"
]
"""


def _schemathesis() -> str:
    return str(Path(sys.executable).with_name("schemathesis"))


@pytest.mark.timeout(TIME_LIMIT_SECONDS)
async def test_schemathesis_finds_no_disagreement(tmp_path: Path) -> None:
    # Its authentication checks send hundreds of token-less requests a minute, each of which
    # must be a 401: the limit of 401s per client IP (tests/test_rate_limits.py) is off here.
    no_limit = {"security": {"rate_limits": {"unauthorized_per_minute": 0}}}
    async with serving_app(tmp_path / "server", no_limit) as (server, _):
        api = await new_tenant(server)
        config = tmp_path / "schemathesis.toml"
        config.write_text(CONFIG, encoding="utf-8")
        process = await asyncio.create_subprocess_exec(
            _schemathesis(),
            "--config-file",
            str(config),
            "run",
            f"{server.base_url}/schema/openapi.json",
            "--header",
            f"Authorization: Bearer {api.token()}",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--generation-deterministic",
            "--workers",
            "1",  # two workers hit CPython 3.11's thread-unsafe ast.parse inside hypothesis
            "--no-color",
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
    report = output.decode("utf-8", "replace")
    assert process.returncode == 0, report


async def test_the_webhook_documents_every_answer(tmp_path: Path) -> None:
    async with serving_app(tmp_path / "server") as (server, _):
        doc = (await server.client.get("/schema/openapi.json")).json()
    item = doc["paths"]["/v2/hooks/{provider}/{webhook_key}"]
    for method in ("get", "post"):
        responses = item[method]["responses"]
        assert set(responses) == {"200", "400", "403", "404", "409", "413", "429", "503"}
        assert set(responses["200"]["content"]) == {
            "text/xml",
            "application/xml",
            "application/json",
        }
        for status in set(responses) - {"200"}:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}
        assert "Retry-After" in responses["503"]["headers"]
        assert "Retry-After" in responses["429"]["headers"]
        parameters = {p["name"]: p["schema"] for p in item[method]["parameters"]}
        assert parameters["provider"]["enum"] == ["twilio", "plivo", "telnyx", "custom"]
        assert parameters["webhook_key"]["pattern"] == "^whk_[A-Za-z0-9]{32}$"
