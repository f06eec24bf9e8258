"""Listing additions over HTTP: until, several statuses, encrypted, q, cursor paging, totals."""

from __future__ import annotations

import base64
import re
import threading
from datetime import UTC, datetime

import pytest
import requests

import store as store_module
from tests.conftest import make_run

RUNS = "/v1/backup-runs"
LINK_NEXT = re.compile(r'^<([^>]+)>; rel="next"$')


class SteppingClock:
    """A clock that moves one second per reading, so each run gets its own received_at."""

    def __init__(self):
        self.seconds = 0

    def __call__(self) -> datetime:
        self.seconds += 1
        return datetime.fromtimestamp(1_778_554_800 + self.seconds, tz=UTC)


@pytest.fixture
def app_config(app_config):
    """Received times 2026-05-12T03:00:01Z, :02Z, ... in posting order."""
    return {**app_config, "CLOCK": SteppingClock()}


@pytest.fixture
def posted(client):
    """Six runs with varied fields, posted in order r0 (oldest) to r5 (newest)."""
    runs = [
        make_run("r0", status="success", encrypted=True),
        make_run("r1", status="failure", error="Disk FULL on /backup", encrypted=False),
        make_run("r2", status="partial", agent_id="nas-02", encryption_status="unencrypted"),
        make_run("r3", status="success", job_name="Mail-Weekly"),
        make_run("r4", status="failure", error="timeout", encrypted=True),
        make_run("r5", status="success"),
    ]
    for run in runs:
        assert client.post("/v1/backup-runs", json=run).status_code == 201
    return runs


def ids(response) -> list[str]:
    """The run ids of a listing response, in order."""
    assert response.status_code == 200, response.get_json()
    return [run["run_id"] for run in response.get_json()]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["r5", "r4", "r3", "r2", "r1", "r0"]),
        ("until=2026-05-12T03:00:03Z", ["r1", "r0"]),  # strictly before
        ("since=2026-05-12T03:00:03Z&until=2026-05-12T03:00:05Z", ["r3", "r2"]),
        ("status=failure,partial", ["r4", "r2", "r1"]),
        ("status=failure&status=success", ["r5", "r4", "r3", "r1", "r0"]),  # both count
        ("encrypted=true", ["r4", "r0"]),
        ("encrypted=false", ["r2", "r1"]),  # r2: encryption_status says unencrypted
        ("q=disk full", ["r1"]),  # error, case-insensitive
        ("q=NAS", ["r2"]),  # agent_id
        ("q=mail", ["r3"]),  # job_name
        ("status=failure&encrypted=true&q=TIME", ["r4"]),
        ("job_name=postgres-daily&status=success&until=2026-05-12T03:00:06Z", ["r0"]),
        ("job_name=postgres-daily&status=success&encrypted=true", ["r0"]),  # r5: not encrypted
    ],
)
def test_filters_combine(client, posted, query, expected):
    response = client.get(f"/v1/backup-runs?{query}")
    assert ids(response) == expected
    assert response.headers["X-Total-Count"] == str(len(expected))


@pytest.mark.parametrize("status", ["", "&status=success"])
def test_since_after_until_matches_nothing_and_counts_zero(client, posted, status):
    """An empty time range is empty: its total is 0, not the negative width of the range."""
    response = client.get(
        f"/v1/backup-runs?since=2026-05-12T03:00:05Z&until=2026-05-12T03:00:02Z{status}"
    )
    assert ids(response) == []
    assert response.headers["X-Total-Count"] == "0"


def test_an_agents_runs_of_a_status_are_still_filtered_by_job(client):
    """Led by the agent's failures (the fewest runs), the job filter must still apply."""
    runs = [("a1", "A", "x"), ("b1", "B", "x"), ("a2", "A", "y"), ("a3", "A", "y")]
    for run_id, job, agent in runs:
        run = make_run(run_id, job_name=job, agent_id=agent, status="failure")
        assert client.post("/v1/backup-runs", json=run).status_code == 201

    response = client.get("/v1/backup-runs?job_name=A&agent_id=x&status=failure")

    assert ids(response) == ["a1"]
    assert response.headers["X-Total-Count"] == "1"


def test_a_partial_or_failed_encryption_counts_as_not_encrypted(client):
    """encryption_status partial or failed is encrypted=false; only "encrypted" is true."""
    for run_id, outcome in [("e", "encrypted"), ("p", "partial"), ("f", "failed"), ("n", None)]:
        run = make_run(run_id) if outcome is None else make_run(run_id, encryption_status=outcome)
        assert client.post("/v1/backup-runs", json=run).status_code == 201

    assert ids(client.get("/v1/backup-runs?encrypted=false")) == ["f", "p"]
    assert ids(client.get("/v1/backup-runs?encrypted=true")) == ["e"]


@pytest.mark.parametrize(
    "query",
    ["job_name=&agent_id=&status=&since=&limit=", "status=&status=", "job_name=&since=&limit="],
)
def test_the_original_s_parameters_left_empty_filter_nothing(client, posted, query):
    """As in the original: scripts fill these from shell variables that may be unset."""
    response = client.get(f"/v1/backup-runs?{query}")
    assert ids(response) == ["r5", "r4", "r3", "r2", "r1", "r0"]


def test_the_link_carries_the_filters_as_read_and_nothing_else(client, posted):
    """Every parameter as sent made the header grow without bound: 10,000 repeats of status
    gave 150 KB, which clients and proxies refuse."""
    junk = "&".join(["status=success"] * 10_000 + ["utm_source=x", "ref=y"])
    response = client.get(f"/v1/backup-runs?limit=1&agent_id=db-01&{junk}&status=failure")
    link = response.headers["Link"]
    assert len(link) < 200
    assert "utm_source" not in link and "ref=" not in link
    assert "status=success%2Cfailure" in link and "agent_id=db-01" in link and "limit=1" in link


def test_paging_keeps_a_repeated_status(client, posted):
    """The Link of each page carries every value given, so page two filters as page one did."""
    url, seen = "/v1/backup-runs?status=failure&limit=2&status=success", []
    while url:
        response = client.get(url)
        seen += ids(response)
        assert response.headers["X-Total-Count"] == "5"
        link = response.headers.get("Link")
        url = link[1 : link.index(">")] if link else None
    assert seen == ["r5", "r4", "r3", "r1", "r0"]


def cursor_of(raw: bytes) -> str:
    """Encode raw JSON as this server spells a cursor: URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("until=yesterday", "until"),
        ("status=failure,bogus", "status"),
        ("encrypted=yes", "encrypted"),
        ("q=", "q"),
        ("q=%20%20%09", "q"),  # blanks only would match every run with a space
        (f"q={'x' * 201}", "q"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=WzEsMl0", "cursor"),  # valid base64 of [1,2]: not a position
        ("cursor=" + cursor_of(b'[true,"r1"]'), "cursor"),  # JSON true is no time
        ("cursor=" + cursor_of(b'[1,"r1","x"]'), "cursor"),  # one part too many
        # base64 of 5,000 '[': json.loads hits the recursion limit (it answered 500)
        (f"cursor={base64.urlsafe_b64encode(b'[' * 5000).decode()}", "cursor"),
        ("limit=0", "limit"),
    ],
)
def test_bad_listing_values_are_400_naming_the_parameter(client, query, field):
    response = client.get(f"/v1/backup-runs?{query}")
    assert response.status_code == 400
    assert response.get_json()["error"].startswith(f"{field}:")


@pytest.mark.parametrize(
    ("q", "error"),
    [
        ("", "q: must not be empty or blank"),
        ("%20", "q: must not be empty or blank"),  # one character, yet no text to look for
        ("x" * 201, "q: must be at most 200 characters"),
    ],
)
def test_a_bad_q_is_told_why(client, q, error):
    """'must be 1 to 200 characters' did not say why a single space was refused."""
    assert client.get(f"/v1/backup-runs?q={q}").get_json() == {"error": error}


def test_cursor_pages_cover_every_run_once_with_link_and_total(client, posted):
    seen, url, pages = [], "/v1/backup-runs?limit=4&status=success,failure", 0
    while url:
        response = client.get(url)
        seen += ids(response)
        assert response.headers["X-Total-Count"] == "5"
        link = response.headers.get("Link")
        url = LINK_NEXT.match(link).group(1) if link else None
        pages += 1
    assert seen == ["r5", "r4", "r3", "r1", "r0"]
    assert pages == 2


def test_cursor_pages_under_a_text_search_cover_every_match_once(client, posted):
    """q is checked run by run, not by a posting list: its pages must start after the cursor."""
    seen, url = [], "/v1/backup-runs?limit=2&q=db-01"
    for _ in range(3):  # three pages; a cursor that does not advance would loop for good
        response = client.get(url)
        seen += ids(response)
        assert response.headers["X-Total-Count"] == "5"
        link = response.headers.get("Link")
        url = LINK_NEXT.match(link).group(1) if link else None
        if url is None:
            break
    assert (seen, url) == (["r5", "r4", "r3", "r1", "r0"], None)


@pytest.mark.parametrize(
    "query",
    [
        "job_name=postgres-daily",
        "agent_id=db-01",
        "since=2026-05-12T03:00:03Z",
        "until=2026-05-12T03:00:05Z",
        "encrypted=true",
        "encrypted=false",
        "q=postgres",
        "status=failure",
        "status=success,%20failure",  # a blank after the comma, as people type it
    ],
)
def test_paging_one_run_at_a_time_keeps_each_filter(client, posted, query):
    """Pins that the next-page Link carries every filter: same runs and total as one page."""
    whole = ids(client.get(f"{RUNS}?{query}"))
    seen, totals, url = [], [], f"{RUNS}?{query}&limit=1"
    for _ in range(len(whole) + 1):  # bounded: a cursor that does not advance would loop
        if url is None:
            break
        response = client.get(url)
        seen += ids(response)
        totals.append(response.headers["X-Total-Count"])
        link = response.headers.get("Link")
        url = LINK_NEXT.match(link).group(1) if link else None
    assert len(whole) >= 2
    assert totals == [str(len(whole))] * len(whole)
    assert seen == whole


def test_no_link_when_the_last_page_is_exactly_full(client, posted):
    response = client.get("/v1/backup-runs?limit=6")
    assert len(ids(response)) == 6
    assert "Link" not in response.headers


def test_paging_is_stable_while_new_runs_arrive(live_server_factory):
    """Pages taken while other clients post new runs skip and repeat none of the old runs."""
    server = live_server_factory()
    old = {f"old-{n:03d}" for n in range(120)}
    for run_id in sorted(old):
        requests.post(server.url + "/v1/backup-runs", json=make_run(run_id), timeout=10)
    stop = threading.Event()
    errors = []

    def post_new_runs():
        with requests.Session() as session:
            count = 0
            while not stop.is_set():
                count += 1
                answer = session.post(
                    server.url + "/v1/backup-runs", json=make_run(f"new-{count}"), timeout=10
                )
                if answer.status_code != 201:
                    errors.append(answer.status_code)

    writer = threading.Thread(target=post_new_runs)
    writer.start()
    try:
        seen = []
        with requests.Session() as session:
            url = server.url + "/v1/backup-runs?limit=7"
            for page in range(len(old) // 7 + 2):  # bounded: a stuck cursor would loop
                if url is None:
                    break
                response = session.get(url, timeout=10)
                assert response.status_code == 200
                seen += [run["run_id"] for run in response.json()]
                match = LINK_NEXT.match(response.headers.get("Link", ""))
                url = server.url + match.group(1) if match else None
                # At least one new run between any two pages, whatever the writer's pace:
                # an offset cursor would then repeat an old run on the next page.
                arrived = session.post(
                    server.url + "/v1/backup-runs", json=make_run(f"between-{page}"), timeout=10
                )
                assert arrived.status_code == 201
    finally:
        stop.set()
        writer.join()
    assert not errors and url is None
    seen_old = [run_id for run_id in seen if run_id.startswith("old-")]
    assert len(seen_old) == len(set(seen_old)), "a run was repeated"
    assert set(seen_old) == old, "a run was skipped"
    assert len(seen) == len(set(seen))


def test_a_long_error_is_kept_whole_and_searched_in_its_first_part(client):
    """A failing job's report may carry a long log tail: refusing it lost the report. The
    file keeps it all; q searches its first ERROR_INDEXED_CHARS characters (README)."""
    limit = store_module.ERROR_INDEXED_CHARS
    error = "pg_dump: disk full\n" + "log line\n" * (limit // 9) + "tail-only-word"
    assert len(error) > limit

    posted = client.post(RUNS, json=make_run("long-error", status="failure", error=error))

    assert posted.status_code == 201
    assert client.get(f"{RUNS}/long-error").get_json()["error"] == error
    assert [run["run_id"] for run in client.get(f"{RUNS}?q=DISK+FULL").get_json()] == ["long-error"]
    assert client.get(f"{RUNS}?q=tail-only-word").get_json() == []
