"""`python app.py` as a real process under waitress, over real sockets: what the test client
cannot show, such as the peer address and the proxy headers waitress hands on (or strips)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from urllib.parse import quote

import pytest
import requests
from conftest import ROOT, LiveServer, make_run

RUNS = "/v1/backup-runs"
TOKEN = "live-token-4e7d"
USER, PASSWORD = "admin", "live-pass-91b2"
MIB = 1024 * 1024


def serve(tmp_path_factory, env: dict):
    """Run one real server for a whole module, and stop it after."""
    live = LiveServer(tmp_path_factory.mktemp("live") / "store", env)
    try:
        yield live.wait_ready()
    finally:
        live.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server with a token and a Basic user configured, and the bypass on."""
    yield from serve(
        tmp_path_factory, {"API_TOKENS": f" {TOKEN} ,", "AUTH_USER": USER, "AUTH_PASS": PASSWORD}
    )


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    """A real server with no credentials configured: only the bypass admits."""
    yield from serve(tmp_path_factory, {})


@pytest.fixture
def http():
    """A requests session, closed after the test."""
    with requests.Session() as session:
        yield session


def call(http, server, method: str, path: str, **kwargs) -> requests.Response:
    """Send one request to the real server."""
    return http.request(method, server.url + path, timeout=10, **kwargs)


def assert_json_error(response: requests.Response, status: int) -> None:
    """Check a real error answer: the status and a JSON {"error": "..."} body."""
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and body["error"]


def test_health_answers_without_credentials(http, server):
    response = call(http, server, "GET", "/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert re.fullmatch(r"\d+\.\d+\.\d+", body["version"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", body["timestamp"])


def test_run_round_trip_from_loopback_needs_no_credentials(http, server):
    # Exactly what `curl -d '{...}' URL` sends: a form content type.
    posted = call(
        http,
        server,
        "POST",
        RUNS,
        data=json.dumps(make_run("live-1")),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    fetched = call(http, server, "GET", f"{RUNS}/live-1")
    listed = call(http, server, "GET", f"{RUNS}?job_name=postgres-daily&limit=1000")
    deleted = call(http, server, "DELETE", f"{RUNS}/live-1")
    deleted_again = call(http, server, "DELETE", f"{RUNS}/live-1")
    gone = call(http, server, "GET", f"{RUNS}/live-1")

    assert posted.status_code == 201
    assert fetched.status_code == 200 and fetched.json() == posted.json()
    assert posted.json() in listed.json()
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert deleted_again.status_code == 204
    assert_json_error(gone, 404)


@pytest.mark.parametrize(
    ("run_id", "url_id"),
    [
        ("run/2026-05-12:job1", "run/2026-05-12:job1"),
        ("run/2026-05-12:job1", quote("run/2026-05-12:job1", safe="")),
        ("a//b", "a//b"),
        ("/leading", quote("/leading", safe="")),
        ("a%2Fb", quote("a%2Fb", safe="")),
        ("ünïcødé ✓", quote("ünïcødé ✓", safe="")),
    ],
)
def test_odd_run_ids_work_over_http(http, server, run_id, url_id):
    call(http, server, "POST", RUNS, json=make_run(run_id))

    fetched = call(http, server, "GET", f"{RUNS}/{url_id}")
    deleted = call(http, server, "DELETE", f"{RUNS}/{url_id}")

    assert fetched.status_code == 200
    assert fetched.json()["run_id"] == run_id
    assert deleted.status_code == 204
    assert call(http, server, "GET", f"{RUNS}/{url_id}").status_code == 404


@pytest.mark.parametrize(
    "header",
    [
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.9;proto=https"},
        {"X-Real-IP": "203.0.113.9"},
    ],
)
def test_proxy_header_from_loopback_is_refused(http, server, header):
    # waitress 3 strips untrusted proxy headers by default; were it to, this would be 200.
    refused = call(http, server, "GET", RUNS, headers=header)
    admitted = call(http, server, "GET", RUNS, headers={**header, "X-API-Key": TOKEN})

    assert_json_error(refused, 401)
    assert refused.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert admitted.status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"headers": {"Authorization": f"Bearer {TOKEN}"}}, 200),
        ({"headers": {"X-API-Key": TOKEN}}, 200),
        ({"auth": (USER, PASSWORD)}, 200),
        ({"headers": {"Authorization": "Bearer wrong"}}, 401),
        ({"auth": (USER, "wrong")}, 401),
    ],
)
def test_credentials_over_http_behind_a_proxy(http, server, kwargs, status):
    headers = {"X-Forwarded-For": "203.0.113.9", **kwargs.pop("headers", {})}

    response = call(http, server, "GET", RUNS, headers=headers, **kwargs)

    assert response.status_code == status


def test_a_page_rebound_to_loopback_gets_no_bypass(http, server):
    """DNS rebinding: a page at registry.example.com, its name re-pointed at 127.0.0.1, sends
    its own name as Host and as Origin; it must neither read nor delete runs."""
    own_name = "registry.example.com:" + str(server.port)
    local = call(http, server, "POST", RUNS, json=make_run("rebinding-target"))
    headers = {"Host": own_name, "Origin": f"http://{own_name}", "Sec-Fetch-Site": "same-origin"}

    read = call(http, server, "GET", RUNS, headers=headers)
    deleted = call(http, server, "DELETE", f"{RUNS}/rebinding-target", headers=headers)

    assert local.status_code == 201  # the bypass itself, for a Host of 127.0.0.1
    assert (read.status_code, deleted.status_code) == (401, 401)
    assert call(http, server, "GET", f"{RUNS}/rebinding-target").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("PUT", RUNS, 405),
        ("PATCH", f"{RUNS}/x", 405),
        ("POST", "/health", 405),
        ("GET", "/nope", 404),
        ("GET", "/v1", 404),
        ("GET", f"{RUNS}/", 404),
    ],
)
def test_wrong_method_and_unknown_path_are_json_errors(http, server, method, path, status):
    response = call(http, server, method, path)

    assert_json_error(response, status)
    if status == 405:
        assert response.headers["Allow"]


def test_body_over_one_mebibyte_is_413_json(http, server):
    body = json.dumps(make_run("big", metadata={"pad": "x" * MIB})).encode()

    response = call(http, server, "POST", RUNS, data=body)

    assert_json_error(response, 413)
    assert call(http, server, "GET", f"{RUNS}/big").status_code == 404


def test_deep_nesting_is_400_in_a_server_thread(http, server):
    response = call(http, server, "POST", RUNS, data=b"[" * 100_000 + b"]" * 100_000)

    assert_json_error(response, 400)


def test_16_clients_reposting_one_run_leave_one_whole_record(server):
    barrier = threading.Barrier(16)
    statuses: list[int] = []

    def post_as(writer: int) -> None:
        run = make_run("contended", job_name=f"job-{writer}", metadata={"pad": "y" * 20_000})
        with requests.Session() as session:
            barrier.wait()
            statuses.append(session.post(server.url + RUNS, json=run, timeout=30).status_code)

    threads = [threading.Thread(target=post_as, args=(writer,)) for writer in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    files = [path.name for path in server.store_dir.iterdir() if "contended" in path.name]
    on_disk = json.loads((server.store_dir / "contended.json").read_text())
    assert statuses == [201] * 16
    assert files == ["contended.json"]
    assert on_disk["metadata"] == {"pad": "y" * 20_000}
    with requests.get(f"{server.url}{RUNS}/contended", timeout=10) as fetched:
        assert fetched.json() == on_disk


def test_each_request_is_one_access_log_line_without_secrets(http, server):
    call(http, server, "GET", "/health?probe=access-log")
    call(http, server, "GET", RUNS, headers={"X-Forwarded-For": "1.2.3.4", "X-API-Key": TOKEN})
    call(http, server, "GET", RUNS, auth=(USER, PASSWORD), headers={"X-Real-IP": "1.2.3.4"})

    log = server.log()

    assert re.search(r"backup_registry\.access: GET /health 200 \d+\.\dms$", log, re.M)
    assert TOKEN not in log and PASSWORD not in log
    assert "Task queue depth" not in log


def test_start_up_log_says_when_no_credentials_are_set(open_server, server):
    warning = "only localhost requests are admitted"

    assert len([line for line in open_server.log().splitlines() if warning in line]) == 1
    assert warning not in server.log()


def test_start_up_warning_counts_basic_auth_and_names_a_bypass_turned_off(
    live_server_factory, tmp_path
):
    """Basic auth alone is credentials; with none and LOCALHOST_BYPASS=0, no one is admitted."""
    basic_only = live_server_factory({"AUTH_USER": USER, "AUTH_PASS": PASSWORD}, tmp_path / "a")
    no_bypass = live_server_factory({"LOCALHOST_BYPASS": "0"}, tmp_path / "b")

    assert "only localhost requests are admitted" not in basic_only.log()
    assert (
        "only localhost requests are admitted (and LOCALHOST_BYPASS=0: none at all)"
        in no_bypass.log()
    )


def test_without_credentials_a_proxied_request_is_refused(open_server, http):
    refused = call(http, open_server, "GET", RUNS, headers={"X-Forwarded-For": "203.0.113.9"})
    admitted = call(http, open_server, "GET", RUNS)

    assert_json_error(refused, 401)
    assert admitted.status_code == 200


def readme_wrapper() -> str:
    """Return the README's shell snippet that wraps a backup command and reports its run."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    [snippet] = re.findall(r"```sh\n(#!/bin/sh\n# usage: report-backup .*?)```", readme, re.S)
    return snippet


@pytest.mark.parametrize(
    ("command", "exit_code", "status", "error"),
    [
        (["true"], 0, "success", None),
        (["sh", "-c", "echo disk full >&2; exit 3"], 3, "failure", "disk full"),
    ],
)
def test_readme_wrapper_reports_the_run(tmp_path, server, command, exit_code, status, error):
    script = tmp_path / "report-backup"
    script.write_text(readme_wrapper(), encoding="utf-8")
    job = f"wrapped-{status}"
    env = {**os.environ, "REGISTRY": server.url, "REGISTRY_TOKEN": TOKEN}

    result = subprocess.run(
        ["sh", str(script), job, *command], env=env, capture_output=True, timeout=30
    )

    # The command's own exit code and error output pass through, for cron's mail.
    assert (result.returncode, result.stderr.decode().strip()) == (exit_code, error or "")
    with requests.get(f"{server.url}{RUNS}?job_name={job}", timeout=10) as listed:
        [run] = listed.json()
    assert (run["status"], run["error"]) == (status, error)


def test_readme_wrapper_says_why_a_report_was_refused(tmp_path, server):
    """It said only 'could not report', whatever the server answered: the reason stayed in the
    server's log, out of the agent's cron mail."""
    script = tmp_path / "report-backup"
    script.write_text(readme_wrapper(), encoding="utf-8")
    env = {**os.environ, "REGISTRY": server.url, "REGISTRY_TOKEN": TOKEN}

    result = subprocess.run(
        ["sh", str(script), "", "sh", "-c", "exit 4"], env=env, capture_output=True, timeout=30
    )

    assert result.returncode == 4  # still the command's own
    said = result.stderr.decode()
    assert said.startswith(f'report-backup: could not report to {server.url}: {{"error":"job_name')
    assert said.endswith('"}\n(HTTP 400)\n')
