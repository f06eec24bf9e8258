"""Every error, whatever its cause, is JSON {"error": "<non-empty text>"} and nothing else."""

from __future__ import annotations

import shutil

import pytest
from conftest import make_run

RUNS = "/v1/backup-runs"
REMOTE = {"REMOTE_ADDR": "10.0.0.5"}

# (status, method, path, request keyword arguments)
ERRORS = {
    "body-not-json": (400, "post", RUNS, {"data": b"not json"}),
    "body-empty": (400, "post", RUNS, {"data": b""}),
    "body-not-object": (400, "post", RUNS, {"json": [make_run()]}),
    "body-deep": (400, "post", RUNS, {"data": b"[" * 10000 + b"]" * 10000}),
    "field-rule": (400, "post", RUNS, {"json": make_run(status="ok")}),
    "end-before-start": (400, "post", RUNS, {"json": make_run(end_time="2000-01-01T00:00:00Z")}),
    "id-too-long": (400, "post", RUNS, {"json": make_run("é" * 100)}),
    "bad-limit": (400, "get", f"{RUNS}?limit=0", {}),
    "bad-status": (400, "get", f"{RUNS}?status=ok", {}),
    "bad-since": (400, "get", f"{RUNS}?since=soon", {}),
    "no-credentials": (401, "get", RUNS, {"environ_base": REMOTE}),
    "cross-site": (403, "post", RUNS, {"json": make_run(), "headers": {"Origin": "null"}}),
    "unknown-path": (404, "get", "/nope", {}),
    "unknown-run": (404, "get", f"{RUNS}/nope", {}),
    "no-run-id": (404, "get", f"{RUNS}/", {}),
    "wrong-method-list": (405, "put", RUNS, {}),
    "wrong-method-run": (405, "post", f"{RUNS}/run-1", {"json": make_run()}),
    "wrong-method-health": (405, "delete", "/health", {}),
    "too-large": (413, "post", RUNS, {"data": b" " * (1024 * 1024 + 1)}),
}


def assert_error_shape(response, status: int) -> None:
    """Check one error answer: the status, a JSON type, and exactly {"error": "<text>"}."""
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body, dict) and list(body) == ["error"]
    assert isinstance(body["error"], str) and body["error"].strip()


@pytest.fixture
def app_config(app_config: dict) -> dict:
    """The test app; nothing here needs the folder watched."""
    return {**app_config, "WATCH_STORE": False}


@pytest.mark.parametrize(("status", "method", "path", "kwargs"), ERRORS.values(), ids=ERRORS)
def test_error_is_a_json_object_with_one_error_text(client, status, method, path, kwargs):
    response = getattr(client, method)(path, **kwargs)

    assert_error_shape(response, status)


def test_unexpected_failure_is_500_in_the_same_shape(app, client):
    app.add_url_rule("/fails", "fails", lambda: 1 / 0)

    response = client.get("/fails")

    assert_error_shape(response, 500)
    assert "ZeroDivisionError" not in response.get_data(as_text=True)


def test_store_folder_gone_is_503_in_the_same_shape(client, store_dir):
    shutil.rmtree(store_dir)

    response = client.post(RUNS, json=make_run())

    assert_error_shape(response, 503)


def test_a_wrong_method_names_the_method_and_the_path(client):
    """Pins the 405 text: which method, on which path, beside the Allow header."""
    response = client.put(RUNS)

    assert response.get_json() == {"error": f"method PUT not allowed on {RUNS}"}


@pytest.mark.parametrize("path", [RUNS, f"{RUNS}/run-1", "/v1/jobs", "/health", "/"])
def test_options_is_a_204_naming_the_allowed_methods_without_a_body(client, path):
    """Flask's own answer was a 200 with an empty text/html body, where the API answers JSON."""
    response = client.options(path)

    assert response.status_code == 204
    assert "GET" in response.headers["Allow"] and "OPTIONS" in response.headers["Allow"]
    assert "Content-Type" not in response.headers and response.get_data() == b""
