"""The contract: /openapi.json describes every endpoint, and schemathesis holds the server to it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from conftest import ROOT

from store import format_timestamp

TOKEN = "contract-token-7f3a"
SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
# A fixed seed keeps CI repeatable; set CONTRACT_SEED to explore other inputs locally.
SEED = os.environ.get("CONTRACT_SEED", "20260512")
# Routes that are not the JSON API: the HTML dashboard and its static files.
NOT_API = re.compile(r"^(ui\.|static$)")


def openapi() -> dict:
    return json.loads((ROOT / "openapi.json").read_text(encoding="utf-8"))


def openapi_path(rule: str) -> str:
    """Turn a Flask rule such as /v1/backup-runs/<run_id:run_id> into /v1/backup-runs/{run_id}."""
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)


def test_every_api_route_and_method_is_described(app):
    paths = openapi()["paths"]
    for rule in app.url_map.iter_rules():
        if NOT_API.match(rule.endpoint):
            continue
        path = openapi_path(rule.rule)
        assert path in paths, f"{rule.rule} is not in openapi.json"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in paths[path], f"{method} {path} is not in openapi.json"


def test_every_described_operation_exists(client):
    for path, item in openapi()["paths"].items():
        url = path.replace("{run_id}", "no-such-run")
        for method in item.keys() - {"parameters", "summary", "description"}:
            response = client.open(url, method=method.upper())
            assert response.status_code not in (404, 405) or "run not found" in response.text, (
                f"{method.upper()} {path} is described but not served"
            )


def test_run_schema_is_referenced_not_copied(client):
    document = openapi()
    body = document["paths"]["/v1/backup-runs"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "schema.json"}
    # A copied run schema would repeat its field rules somewhere; none may appear.
    pending = [document]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            assert "start_time" not in node.get("properties", {}), "run schema copied"
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    served = client.get("/schema.json")
    assert served.status_code == 200
    assert served.data == (ROOT / "schema.json").read_bytes()


def test_contract_and_schema_are_public(app_config, app):
    app.config["API_TOKENS"] = (TOKEN,)
    app.config["LOCALHOST_BYPASS"] = False
    client = app.test_client()
    assert client.get("/openapi.json").json["openapi"].startswith("3.1")
    assert client.get("/schema.json").status_code == 200
    assert client.get("/v1/backup-runs").status_code == 401


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(139, 1, 20, 14, 4, 50, tzinfo=UTC), "0139-01-20T14:04:50.000000Z"),
        (datetime(2026, 5, 12, 4, 0, 0, 5, tzinfo=timezone(timedelta(hours=2))), None),
    ],
)
def test_timestamps_the_server_writes_are_rfc3339_in_any_year(moment, text):
    """received_at and the times in /v1/jobs must match the contract's date-time format."""
    written = format_timestamp(moment)

    assert written == (text or "2026-05-12T02:00:00.000005Z")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", written)


def test_openapi_declares_every_auth_scheme():
    document = openapi()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyAuth"]["in"] == "header" and schemes["apiKeyAuth"]["name"] == "X-API-Key"
    assert schemes["basicAuth"]["scheme"] == "basic"
    assert {name for entry in document["security"] for name in entry} == set(schemes)


def run_schemathesis(server, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the schemathesis CLI against server with a valid token; its files stay in workdir."""
    workdir.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
        "NO_COLOR": "1",
    }
    command = [
        SCHEMATHESIS,
        "run",
        f"{server.url}/openapi.json",
        "--seed",
        SEED,
        "--generation-database",
        "none",
        "--request-timeout",
        "10",
        "--no-color",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        *args,
    ]
    return subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=240, check=False
    )


def test_schemathesis_finds_no_failure(live_server_factory, tmp_path):
    """Every phase, every check: no 5xx, no response outside the contract, auth enforced."""
    server = live_server_factory({"API_TOKENS": TOKEN, "LOCALHOST_BYPASS": "0"})
    result = run_schemathesis(
        server,
        tmp_path / "st",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        "25",
        "--report",
        "junit",
        "--report-junit-path",
        str(tmp_path / "schemathesis.xml"),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-12000:]
    assert "No issues found" in output, output[-4000:]
    # The stateful phase runs only if the links resolve: it must have followed at least as many
    # links as openapi.json declares (schemathesis infers a few more and may not reach all).
    declared = len(re.findall(r'"operationId": "\w+",\s+"parameters"', json.dumps(openapi())))
    links = re.search(r"API Links:\s+(\d+) covered / (\d+) selected", output)
    assert links and int(links.group(1)) >= declared >= 4, output[-4000:]
    assert "Traceback" not in server.log()


def test_schemathesis_catches_an_open_door(live_server_factory, tmp_path):
    """The ignored_auth check is live: with the localhost bypass on, it must fail."""
    server = live_server_factory({"API_TOKENS": TOKEN, "LOCALHOST_BYPASS": "1"})
    result = run_schemathesis(
        server,
        tmp_path / "st",
        "--checks",
        "ignored_auth",
        "--phases",
        "fuzzing",
        "--max-examples",
        "3",
        "--include-operation-id",
        "listRuns",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    assert "API accepts requests without authentication" in output, output[-4000:]


def test_public_documents_answer_the_live_server(live_server_factory):
    server = live_server_factory({"API_TOKENS": TOKEN, "LOCALHOST_BYPASS": "0"})
    document = requests.get(server.url + "/openapi.json", timeout=5)
    assert document.status_code == 200 and document.json()["openapi"] == "3.1.0"
    schema = requests.get(server.url + "/schema.json", timeout=5)
    assert schema.content == (ROOT / "schema.json").read_bytes()
