"""GET /v1/backup-runs: a bare array, newest received first, with filters that combine."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from conftest import make_run

from store import format_timestamp

RUNS = "/v1/backup-runs"
START = datetime(2026, 5, 12, 3, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand; the app stamps received_at with it."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """The app's clock."""
    return Clock()


@pytest.fixture
def app_config(app_config: dict, clock: Clock) -> dict:
    """The test app on the hand-moved clock; the listing needs no folder watcher here."""
    return {**app_config, "CLOCK": clock, "WATCH_STORE": False}


def post_runs(client, clock: Clock, *runs: dict) -> None:
    """Post runs one second apart, the first at START + 1 s."""
    for run in runs:
        clock.now += timedelta(seconds=1)
        assert client.post(RUNS, json=run).status_code == 201


def listed_ids(client, **query) -> list[str]:
    """Return the run ids a listing with these query parameters gives, in order."""
    response = client.get(f"{RUNS}?{urlencode(query)}")
    assert response.status_code == 200, response.get_json()
    return [run["run_id"] for run in response.get_json()]


def test_listing_is_a_bare_array_of_whole_runs(client, clock):
    post_runs(client, clock, make_run("only", metadata={"k": "v"}))

    response = client.get(RUNS)

    assert response.status_code == 200
    assert response.get_json() == [client.get(f"{RUNS}/only").get_json()]


def test_empty_store_lists_an_empty_array(client):
    response = client.get(RUNS)

    assert response.status_code == 200
    assert response.get_json() == []


def test_newest_received_comes_first(client, clock):
    # Start times run the other way, so only received_at can give this order.
    post_runs(
        client,
        clock,
        make_run("a", start_time="2026-05-12T02:00:00Z", end_time="2026-05-12T02:00:00Z"),
        make_run("b", start_time="2026-05-11T02:00:00Z", end_time="2026-05-11T02:00:00Z"),
        make_run("c", start_time="2026-05-10T02:00:00Z", end_time="2026-05-10T02:00:00Z"),
    )

    assert listed_ids(client) == ["c", "b", "a"]


def test_reposting_a_run_moves_it_to_the_front(client, clock):
    post_runs(client, clock, make_run("a"), make_run("b"), make_run("a"))

    assert listed_ids(client) == ["a", "b"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"job_name": "pg"}, ["r2", "r1"]),
        ({"job_name": "pg-weekly"}, ["r4"]),
        ({"job_name": "PG"}, []),
        ({"job_name": "p"}, []),
        ({"agent_id": "db1"}, ["r4", "r3", "r1"]),
        ({"agent_id": "db"}, []),
        ({"status": "success"}, ["r4", "r1"]),
        ({"status": "failure"}, ["r2"]),
        ({"status": "partial"}, ["r3"]),
        ({"job_name": "pg", "agent_id": "db1"}, ["r1"]),
        ({"job_name": "pg", "status": "failure"}, ["r2"]),
        ({"job_name": "pg", "agent_id": "db2", "status": "success"}, []),
        ({"agent_id": "db1", "status": "success", "limit": "1"}, ["r4"]),
    ],
)
def test_filters_match_exactly_and_combine(client, clock, query, expected):
    post_runs(
        client,
        clock,
        make_run("r1", job_name="pg", agent_id="db1", status="success"),
        make_run("r2", job_name="pg", agent_id="db2", status="failure"),
        make_run("r3", job_name="web", agent_id="db1", status="partial"),
        make_run("r4", job_name="pg-weekly", agent_id="db1", status="success"),
    )

    assert listed_ids(client, **query) == expected


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        (START + timedelta(seconds=2), ["r3", "r2"]),  # received_at == since is kept
        (START + timedelta(seconds=2, microseconds=1), ["r3"]),
        (START, ["r3", "r2", "r1"]),
        (START + timedelta(hours=1), []),
    ],
)
def test_since_keeps_runs_received_at_or_after_it(client, clock, since, expected):
    post_runs(client, clock, make_run("r1"), make_run("r2"), make_run("r3"))

    assert listed_ids(client, since=format_timestamp(since)) == expected


@pytest.mark.parametrize(
    "since",
    [
        "2026-05-12T05:00:02+02:00",  # an offset
        "2026-05-12T03:00:02",  # naive means UTC
        "2026-05-12T03:00:02Z",
        "2026-05-12T03:00:02.000Z",
    ],
)
def test_since_understands_iso_8601_forms(client, clock, local_time_not_utc, since):
    post_runs(client, clock, make_run("r1"), make_run("r2"), make_run("r3"))

    assert listed_ids(client, since=since) == ["r3", "r2"]


def test_an_offset_whose_plus_became_a_space_gets_a_hint(client):
    """curl sends '?since=...T05:00:02+02:00' as typed, and '+' in a query string is a space."""
    response = client.get(f"{RUNS}?since=2026-05-12T05:00:02+02:00")

    assert response.status_code == 400
    assert response.get_json()["error"] == (
        "since: must be an ISO 8601 date or date-time; write a '+' in a URL as %2B, "
        "or give the time in UTC with Z"
    )
    error = client.get(f"{RUNS}?until=yesterday").get_json()["error"]
    assert error == "until: must be an ISO 8601 date or date-time"


def test_since_and_until_refuse_what_iso_8601_has_no_form_for(client):
    assert client.get(f"{RUNS}?since=2026-05-12X02:00:00").get_json() == {
        "error": "since: must be an ISO 8601 date or date-time"
    }
    assert client.get(f"{RUNS}?until=9999-12-31T23:00:00-12:00").get_json() == {
        "error": "until: out of range once converted to UTC (years 1 to 9999 only)"
    }


def test_since_may_be_a_date(client, clock):
    post_runs(client, clock, make_run("r1"))

    assert listed_ids(client, since="2026-05-12") == ["r1"]
    assert listed_ids(client, since="2026-05-13") == []


@pytest.mark.parametrize(
    ("same_day", "next_day"),
    [("20260512", "20260513"), ("2026W202", "2026W203"), ("2026-W20-2", "2026-W20-3")],
)
def test_since_and_until_take_a_date_in_every_iso_8601_form(client, clock, same_day, next_day):
    """The basic format and week dates, as a POST's times may be written: 20260512 was a 400."""
    post_runs(client, clock, make_run("r1"))

    assert listed_ids(client, since=same_day) == ["r1"]
    assert listed_ids(client, since=next_day) == []
    assert listed_ids(client, until=next_day) == ["r1"]
    assert listed_ids(client, until=same_day) == []


@pytest.fixture
def runs_1001(store_dir):
    """A store folder holding 1001 runs, run-0000 received first, before the app starts."""
    store_dir.mkdir()
    for number in range(1001):
        run = make_run(f"run-{number:04d}")
        run["received_at"] = format_timestamp(START + timedelta(seconds=number))
        (store_dir / f"run-{number:04d}.json").write_text(json.dumps(run))
    return store_dir


def test_limit_defaults_to_100_newest(runs_1001, client):
    ids = listed_ids(client)

    assert len(ids) == 100
    assert ids[0] == "run-1000"
    assert ids[-1] == "run-0901"


@pytest.mark.parametrize(("limit", "count"), [("1", 1), ("1000", 1000), ("1001", 1000)])
def test_limit_above_1000_counts_as_1000(runs_1001, client, limit, count):
    ids = listed_ids(client, limit=limit)

    assert len(ids) == count
    assert ids[0] == "run-1000"


def test_huge_limit_counts_as_1000(runs_1001, client):
    assert len(listed_ids(client, limit="9" * 40)) == 1000
    assert len(listed_ids(client, limit="9" * 5000)) == 1000  # past int()'s 4,300 digits
    assert len(listed_ids(client, limit="0" * 5000 + "2")) == 2


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": " 5"}, "limit"),
        ({"limit": "²"}, "limit"),  # a digit to str.isdigit, not to int()
        ({"limit": "٣"}, "limit"),
        ({"status": "ok"}, "status"),
        ({"status": "SUCCESS"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-13-01"}, "since"),
        ({"since": "2026-05-12T25:00:00Z"}, "since"),
    ],
)
def test_bad_query_is_400_naming_the_parameter(client, query, field):
    response = client.get(f"{RUNS}?{urlencode(query)}")

    assert response.status_code == 400
    assert response.get_json()["error"].startswith(f"{field}:")
