"""GET and DELETE /v1/backup-runs/{run_id}: one run, found by any id a script may use."""

from __future__ import annotations

import shutil
from urllib.parse import quote

import pytest
from conftest import make_run

import store as store_module

RUNS = "/v1/backup-runs"

# Ids a script may send: the original's own tests use the first one.
ODD_IDS = [
    "run/2026-05-12:job1",
    "a//b",
    "/leading-slash",
    "trailing-slash/",
    "//",
    "ünïcødé ✓ 日本",
    "a%b",
    "a%2Fb",
    "100%",
    "with space",
    "?query=1",
    "#fragment",
    ".hidden",
    "..",
    "../../etc/passwd",
    "a\\b",
    "~tilde",
    "550e8400-e29b-41d4-a716-446655440000",
    "plain.run_id-1",
]


@pytest.fixture
def app_config(app_config: dict) -> dict:
    """The test app; nothing here needs the folder watched."""
    return {**app_config, "WATCH_STORE": False}


def run_url(run_id: str) -> str:
    """Return the URL of one run, with its id percent-encoded as a client would."""
    return f"{RUNS}/{quote(run_id, safe='')}"


def post_served_run(client, run_id: str = "run-1") -> None:
    """POST a run and check that it is served, so that a delete has a run to remove."""
    assert client.post(RUNS, json=make_run(run_id)).status_code == 201
    assert client.get(run_url(run_id)).status_code == 200


def test_get_returns_the_stored_run(client):
    stored = client.post(RUNS, json=make_run(metadata={"compression": "zstd"})).get_json()

    response = client.get(f"{RUNS}/run-1")

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == stored


def test_get_unknown_run_is_404_json(client):
    response = client.get(f"{RUNS}/no-such-run")

    assert response.status_code == 404
    assert response.get_json() == {"error": "run not found"}


def test_delete_is_204_and_the_run_is_gone(client, store_dir):
    """Pins that a stored run is gone after its DELETE: in the folder, the listing and GET."""
    post_served_run(client)

    response = client.delete(f"{RUNS}/run-1")

    assert response.status_code == 204
    assert response.get_data() == b""
    assert "Content-Type" not in response.headers  # no body, so no type of one (RFC 9110)
    assert client.get(f"{RUNS}/run-1").status_code == 404
    assert client.get(RUNS).get_json() == []
    assert list(store_dir.iterdir()) == []


def test_delete_is_idempotent(client):
    """Pins a repeated DELETE of a run that was stored and deleted: 204 again."""
    post_served_run(client)
    assert client.delete(f"{RUNS}/run-1").status_code == 204
    assert client.get(f"{RUNS}/run-1").status_code == 404

    response = client.delete(f"{RUNS}/run-1")

    assert response.status_code == 204
    assert response.get_data() == b""


def test_delete_of_a_run_never_stored_is_204(client):
    assert client.delete(f"{RUNS}/never-stored").status_code == 204


def test_delete_leaves_other_runs_alone(client):
    client.post(RUNS, json=make_run("keep"))
    client.post(RUNS, json=make_run("drop"))

    client.delete(f"{RUNS}/drop")

    assert [run["run_id"] for run in client.get(RUNS).get_json()] == ["keep"]


@pytest.mark.parametrize("run_id", ODD_IDS)
def test_any_run_id_can_be_stored_fetched_and_deleted(client, run_id):
    assert client.post(RUNS, json=make_run(run_id)).status_code == 201

    fetched = client.get(run_url(run_id))
    listed = client.get(RUNS).get_json()
    deleted = client.delete(run_url(run_id))

    assert fetched.status_code == 200
    assert fetched.get_json()["run_id"] == run_id
    assert [run["run_id"] for run in listed] == [run_id]
    assert deleted.status_code == 204
    assert client.get(run_url(run_id)).status_code == 404


@pytest.mark.parametrize("run_id", ["run/2026-05-12:job1", "a//b", "with space"])
def test_slashes_in_an_id_may_be_sent_unencoded(client, run_id):
    client.post(RUNS, json=make_run(run_id))

    response = client.get(f"{RUNS}/{quote(run_id, safe='/:')}")

    assert response.status_code == 200
    assert response.get_json()["run_id"] == run_id


def test_ids_differing_only_in_encoding_are_different_runs(client):
    client.post(RUNS, json=make_run("a/b", job_name="slash"))
    client.post(RUNS, json=make_run("a%2Fb", job_name="percent"))

    assert client.get(run_url("a/b")).get_json()["job_name"] == "slash"
    assert client.get(run_url("a%2Fb")).get_json()["job_name"] == "percent"
    client.delete(run_url("a/b"))
    assert client.get(run_url("a%2Fb")).status_code == 200


def test_url_without_an_id_is_not_a_run(client):
    response = client.get(f"{RUNS}/")

    assert response.status_code == 404
    assert list(response.get_json()) == ["error"]


def test_only_the_latest_deletions_are_remembered_a_repeat_counting_as_new(client, monkeypatch):
    """The store remembers the last RECENT_DELETIONS_KEPT deletions; a repeat is the newest."""
    monkeypatch.setattr(store_module, "RECENT_DELETIONS_KEPT", 2)
    store = client.application.extensions["store"]
    for run_id in ["a", "b", "c"]:
        assert client.post(RUNS, json=make_run(run_id)).status_code == 201
    client.delete(f"{RUNS}/a")
    client.delete(f"{RUNS}/b")
    client.post(RUNS, json=make_run("a"))
    client.delete(f"{RUNS}/a")  # a is now the latest deletion, b the oldest

    client.delete(f"{RUNS}/c")

    assert [store.deleted_lately(run_id) for run_id in ["a", "b", "c"]] == [True, False, True]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_with_the_store_folder_gone_a_run_is_neither_missing_nor_deleted(client, store_dir, method):
    """No folder: no telling whether the run exists, so 503, not a 404 or a 204."""
    assert client.post(RUNS, json=make_run()).status_code == 201
    shutil.rmtree(store_dir)

    response = client.open(f"{RUNS}/run-1", method=method)

    assert response.status_code == 503
    assert "the store folder is missing" in response.get_json()["error"]
