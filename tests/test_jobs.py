"""Job summaries: schedule inference, states, flags, success rates and GET /v1/jobs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from conftest import make_run
from jobs_support import DAY, HOUR, JOB, T0, app_config, clock, daily, run_at, save
from prometheus_client.parser import text_string_to_metric_families

import jobs
from jobs import JobOverride, JobStats
from store import RunSummary, file_name_for, format_timestamp, parse_timestamp

# The app_config and clock fixtures come from jobs_support; naming them here registers them.
__all__ = ["app_config", "clock"]


def stats_of(runs: list[dict], override: JobOverride | None = None) -> JobStats:
    """Compute a job's statistics from run dicts, as the monitor does, without a store."""
    summaries = [RunSummary(run, run["run_id"], None) for run in runs]
    return JobStats(JOB, 1, summaries, override, runs[-1])


def at(offset: float) -> float:
    """The epoch seconds of offset seconds after T0."""
    return (T0 + timedelta(seconds=offset)).timestamp()


# --- schedule inference ----------------------------------------------------------------------


def test_regular_daily_history_infers_a_day():
    stats = stats_of(daily(10))
    assert stats.interval == DAY
    assert stats.next_expected == at(10 * DAY)
    assert stats.schedule == "inferred"


def test_jittery_history_takes_the_median_gap():
    starts = [0, DAY + 120, 2 * DAY - 60, 3 * DAY + 30, 4 * DAY]
    # gaps 86520, 86220, 86490, 86370: the median is the mean of the middle two
    stats = stats_of([run_at(start) for start in starts])
    assert stats.interval == (86_370 + 86_490) / 2
    assert stats.next_expected == at(4 * DAY) + 86_430


def test_irregular_history_is_not_thrown_by_outliers():
    gaps = [HOUR, DAY, 600, 2 * HOUR, HOUR]
    starts = [sum(gaps[:i]) for i in range(len(gaps) + 1)]
    assert stats_of([run_at(start) for start in starts]).interval == HOUR


def test_runs_are_ordered_by_start_time_not_by_arrival():
    runs = [run_at(start) for start in (2 * DAY, 0, 3 * DAY, DAY)]
    assert stats_of(runs).interval == DAY


@pytest.mark.parametrize("count", [0, 1, 2])
def test_fewer_than_three_runs_leave_the_interval_unknown(count):
    assert jobs.infer_interval([at(day * DAY) for day in range(count)]) is None


def test_three_runs_are_enough():
    assert jobs.infer_interval([at(0), at(DAY), at(2 * DAY)]) == DAY


def test_only_the_latest_twenty_runs_count():
    # Oldest gap 2 h, then 10 gaps of 1 h and 9 of 2 h: the latest 20 starts give 19 gaps
    # whose median is 1 h; all 20 gaps would give 1.5 h.
    gaps = [2 * HOUR] + [HOUR] * 10 + [2 * HOUR] * 9
    starts = [at(sum(gaps[:i])) for i in range(len(gaps) + 1)]
    assert len(starts) == 21
    assert jobs.infer_interval(starts) == HOUR
    assert jobs.infer_interval(starts[1:]) == HOUR
    assert jobs.infer_interval(starts[:1] + starts[2:]) != HOUR


def test_runs_that_share_one_start_give_no_interval():
    assert jobs.infer_interval([at(0)] * 5) is None


def test_runs_that_start_together_count_as_one_start():
    """Two runs a night at the same second made half the gaps 0, so the median was 0 and
    the job stayed "new", never late; [t0, t0, t1] gave half a day for a daily job."""
    pairs = [at(day * DAY) for day in range(10) for _ in range(2)]
    assert jobs.infer_interval(pairs) == DAY
    assert jobs.infer_interval([at(0), at(0), at(DAY)]) == DAY


# --- states ----------------------------------------------------------------------------------


def state_at(stats: JobStats, offset: float) -> str:
    """The job's state offset seconds after T0."""
    return stats.state(at(offset))[0]


def test_late_only_once_past_next_expected_plus_half_the_interval():
    stats = stats_of(daily(5))  # next expected at day 5; grace 12 h
    assert stats.grace == DAY / 2
    assert state_at(stats, 5 * DAY + DAY / 2) == "ok"
    assert state_at(stats, 5 * DAY + DAY / 2 + 1) == "late"


def test_a_start_time_ahead_of_its_report_counts_from_the_report():
    """An agent whose clock runs a year ahead does not keep its job from being late."""
    received = T0 + timedelta(days=5, minutes=5)
    skewed = run_at(365 * DAY, run_id="skewed", status="failure", received=received)
    stats = stats_of([*daily(5), skewed, *[run_at(day * DAY) for day in (6, 7)]])
    assert stats.latest.run_id == f"{JOB[0]}@{JOB[1]}@{7 * DAY}"  # not the one from the future
    assert stats.next_expected == at(8 * DAY)
    assert state_at(stats, 8 * DAY + DAY / 2 + 1) == "late"


def test_grace_is_at_least_five_minutes():
    stats = stats_of([run_at(minute * 120) for minute in range(5)])  # every 2 minutes
    assert stats.grace == 300
    assert state_at(stats, 5 * 120 + 300) == "ok"
    assert state_at(stats, 5 * 120 + 301) == "late"


def test_grace_from_the_jobs_file_replaces_the_default():
    stats = stats_of(daily(5), JobOverride(JOB[0], grace_seconds=600))
    assert state_at(stats, 5 * DAY + 600) == "ok"
    assert state_at(stats, 5 * DAY + 601) == "late"


def test_late_wins_over_failing():
    stats = stats_of([*daily(4), run_at(4 * DAY, status="failure")])
    assert state_at(stats, 4 * DAY + 60) == "failing"
    assert state_at(stats, 5 * DAY + DAY / 2 + 1) == "late"


def test_failing_degraded_and_ok_follow_the_latest_run():
    assert state_at(stats_of([*daily(3), run_at(3 * DAY, status="partial")]), 3 * DAY) == (
        "degraded"
    )
    assert state_at(stats_of([*daily(3, status="failure"), run_at(3 * DAY)]), 3 * DAY) == "ok"


def test_failing_wins_over_new():
    assert state_at(stats_of([run_at(0, status="failure")]), 60) == "failing"


def test_new_until_the_interval_is_known_and_never_late():
    stats = stats_of(daily(2))
    assert state_at(stats, 2 * DAY) == "new"
    assert state_at(stats, 365 * DAY) == "new"
    assert stats.next_expected is None


# --- flags -----------------------------------------------------------------------------------


def flags_of(latest: dict, earlier: list[dict], override: JobOverride | None = None) -> list[str]:
    """The flags of latest, with earlier runs before it."""
    return stats_of([*earlier, latest], override).flags


def sized(*sizes: int, duration: float = 300, **fields) -> list[dict]:
    """Successful daily runs with these sizes."""
    return [
        run_at(day * DAY, bytes_backed_up=size, duration=duration, **fields)
        for day, size in enumerate(sizes)
    ]


LATER = 100 * DAY


@pytest.mark.parametrize(
    ("size", "flagged"),
    [(499, True), (500, False), (0, True), (10**12, False)],
)
def test_size_drop_below_half_the_median(size, flagged):
    latest = run_at(LATER, bytes_backed_up=size)
    assert ("size_drop" in flags_of(latest, sized(900, 1000, 1100))) is flagged


@pytest.mark.parametrize(("size", "flagged"), [(500, True), (501, False)])
def test_size_drop_with_an_even_count_uses_the_mean_of_the_middle_two(size, flagged):
    # median 1001.5, half of it 500.75
    latest = run_at(LATER, bytes_backed_up=size)
    assert ("size_drop" in flags_of(latest, sized(1000, 1001, 1002, 1003))) is flagged


def test_size_drop_is_exact_for_sizes_beyond_float_precision():
    big = 2**62 + 1
    latest = run_at(LATER, bytes_backed_up=big // 2)  # half of an odd number, rounded down
    assert "size_drop" in flags_of(latest, sized(big, big, big))


@pytest.mark.parametrize("size", [2**53 + 1, 2**63 - 1])
def test_median_bytes_is_exact_beyond_float_precision(size):
    assert stats_of(sized(size, size, size, size)).median_bytes == size


def test_size_drop_needs_three_earlier_successes():
    assert flags_of(run_at(LATER, bytes_backed_up=0), sized(1000, 1000)) == []


def test_size_drop_ignores_failures_and_runs_without_a_size():
    earlier = [
        *sized(1000, 1000),
        run_at(10 * DAY, bytes_backed_up=1, status="failure"),
        run_at(11 * DAY, bytes_backed_up=1, status="partial"),
        run_at(12 * DAY),  # no size
    ]
    latest = run_at(LATER, bytes_backed_up=0)
    assert flags_of(latest, earlier) == []  # only two usable runs
    assert "size_drop" in flags_of(latest, [*earlier, run_at(2 * DAY, bytes_backed_up=1000)])


def test_size_drop_compares_with_the_latest_ten_successes_only():
    old = sized(*[10**9] * 20)
    recent = [run_at((30 + day) * DAY, bytes_backed_up=1000) for day in range(10)]
    stats = stats_of([*old, *recent, run_at(LATER, bytes_backed_up=600)])
    assert stats.median_bytes == 1000
    assert "size_drop" not in stats.flags


def test_the_eleventh_latest_success_is_left_out_of_the_median():
    """Pins the window of ten at its edge: one older success would move this median."""
    old = sized(10**9)
    recent = [
        run_at((30 + day) * DAY, bytes_backed_up=1000 if day % 2 else 3000) for day in range(10)
    ]
    stats = stats_of([*old, *recent, run_at(LATER, bytes_backed_up=1000)])
    assert stats.median_bytes == 2000  # 3000 if the 10**9 counted


def test_size_drop_when_under_the_jobs_file_minimum():
    override = JobOverride(JOB[0], min_bytes=1000)
    assert flags_of(run_at(LATER, bytes_backed_up=999), [], override) == ["size_drop"]
    assert flags_of(run_at(LATER, bytes_backed_up=1000), [], override) == []
    assert flags_of(run_at(LATER), [], override) == []  # no size: nothing to judge


@pytest.mark.parametrize(
    ("duration", "flagged"),
    [(24, True), (25, False), (100, False), (400, False), (401, True)],
)
def test_duration_anomaly_under_a_quarter_or_over_four_times_the_median(duration, flagged):
    earlier = sized(1000, 1000, 1000, duration=100)
    latest = run_at(LATER, bytes_backed_up=1000, duration=duration)
    assert ("duration_anomaly" in flags_of(latest, earlier)) is flagged


@pytest.mark.parametrize(
    ("typical", "duration", "flagged"),
    [
        (1.2, 0.3, False),  # exactly a quarter, in seconds with a fraction
        (1.2, 0.299999, True),
        (0.1, 0.4, False),  # exactly four times
        (0.1, 0.400001, True),
    ],
)
def test_duration_anomaly_bounds_hold_for_fractions_of_a_second(typical, duration, flagged):
    """As float seconds since 1970, 0.3 s came out as 0.29999995 s and 1.2 s as 1.20000005 s:
    exactly a quarter was flagged (README: it is not an anomaly)."""
    earlier = sized(1000, 1000, 1000, duration=typical)
    latest = run_at(LATER, bytes_backed_up=1000, duration=duration)
    assert ("duration_anomaly" in flags_of(latest, earlier)) is flagged


def test_no_duration_anomaly_against_a_median_of_zero_seconds():
    """Pins that runs reporting no duration give no scale: a real one is not an anomaly."""
    earlier = sized(1000, 1000, 1000, duration=0)
    latest = run_at(LATER, bytes_backed_up=1000, duration=300)
    assert flags_of(latest, earlier) == []


def test_duration_anomaly_needs_three_earlier_successes():
    latest = run_at(LATER, bytes_backed_up=1000, duration=10_000)
    assert flags_of(latest, sized(1000, 1000, duration=100)) == []


@pytest.mark.parametrize(
    ("fields", "flagged"),
    [
        ({"encrypted": False}, True),
        ({"encryption_status": "unencrypted"}, True),
        ({"encryption_status": "partial"}, True),
        ({"encryption_status": "failed"}, True),
        ({"encrypted": True, "encryption_status": "partial"}, True),
        ({"encrypted": True}, False),
        ({"encryption_status": "encrypted"}, False),
        ({}, False),
    ],
)
def test_unencrypted(fields, flagged):
    assert (flags_of(run_at(LATER, **fields), []) == ["unencrypted"]) is flagged


@pytest.mark.parametrize(
    ("fields", "flagged"),
    [({}, True), ({"encrypted": True}, False), ({"encryption_status": "encrypted"}, False)],
)
def test_required_encryption_flags_a_run_that_does_not_say_it_is_encrypted(fields, flagged):
    override = JobOverride(JOB[0], require_encryption=True)
    assert (flags_of(run_at(LATER, **fields), [], override) == ["unencrypted"]) is flagged


def test_flags_are_about_the_latest_run_only():
    earlier = [*sized(1000, 1000, 1000), run_at(10 * DAY, bytes_backed_up=1, encrypted=False)]
    assert flags_of(run_at(LATER, bytes_backed_up=1000, encrypted=True), earlier) == []


# --- the other statistics --------------------------------------------------------------------


def test_success_rates_cover_runs_started_in_the_last_7_and_30_days():
    runs = [
        run_at(0, status="failure"),  # 30 days before now exactly: counted in 30d
        run_at(10 * DAY, status="partial"),  # partial is not a success
        run_at(23 * DAY - 1),  # one second too old for 7d
        run_at(23 * DAY),  # 7 days before now exactly: counted
        run_at(29 * DAY, status="failure"),
    ]
    now = 30 * DAY
    assert stats_of(runs).success_rate(at(now - 7 * DAY)) == 0.5
    assert stats_of(runs).success_rate(at(now - 30 * DAY)) == 0.4
    assert stats_of(runs).success_rate(at(now + 1)) is None


def test_the_answer_s_rates_are_over_the_last_7_and_30_days():
    """Pins the windows moment() asks success_rate for: 7 and 30 days back from now."""
    runs = [
        run_at(0, status="failure"),  # 31 days old: in neither
        run_at(2 * DAY, status="failure"),  # 29 days old
        run_at(23.5 * DAY, status="failure"),  # 7.5 days old: 30d only
        run_at(25 * DAY),
        run_at(30 * DAY),
    ]
    *_, rate_7d, rate_30d = stats_of(runs).moment(at(31 * DAY))
    assert (rate_7d, rate_30d) == (1.0, 0.5)


def test_durations_p50_and_p95_interpolate_over_the_latest_100_runs():
    runs = [run_at(0, duration=10**6)] + [
        run_at(i * HOUR, duration=i) for i in range(1, 101)
    ]  # the huge first one is the 101st latest
    stats = stats_of(runs)
    assert stats.duration_p50 == 50.5
    assert stats.duration_p95 == pytest.approx(95.05)


def test_last_success_and_failure_are_their_runs_end_times():
    runs = [
        run_at(0, status="failure", duration=60),
        run_at(DAY, duration=120),
        run_at(2 * DAY, status="partial"),
    ]
    stats = stats_of(runs)
    assert stats.last_failure == at(60)
    assert stats.last_success == at(DAY + 120)


# --- GET /v1/jobs ----------------------------------------------------------------------------


FIELDS = {
    "job_name",
    "agent_id",
    "runs",
    "last_run",
    "last_success_at",
    "last_failure_at",
    "success_rate_7d",
    "success_rate_30d",
    "duration_p50_seconds",
    "duration_p95_seconds",
    "last_bytes",
    "median_bytes",
    "expected_interval_seconds",
    "next_expected_at",
    "state",
    "flags",
    "muted",
    "unmuted_state",
    "grace_seconds",
    "schedule",
}


def test_a_job_is_a_name_on_one_agent(app, client, clock):
    save(app, *daily(3, bytes_backed_up=5), *daily(2, job=(JOB[0], "db-02")))
    clock.moment = T0 + timedelta(days=3)
    body = client.get("/v1/jobs").get_json()
    assert {(job["job_name"], job["agent_id"], job["runs"]) for job in body} == {
        (JOB[0], "db-01", 3),
        (JOB[0], "db-02", 2),
    }
    assert all(set(job) == FIELDS for job in body)


def test_the_fields_of_one_job(app, client, clock):
    latest = run_at(2 * DAY, status="partial", duration=240, bytes_backed_up=700)
    save(app, run_at(0, status="failure", duration=60), run_at(DAY, bytes_backed_up=800), latest)
    clock.moment = T0 + timedelta(days=2, hours=1)
    (job,) = client.get("/v1/jobs").get_json()
    assert job == {
        "job_name": JOB[0],
        "agent_id": JOB[1],
        "state": "degraded",
        "unmuted_state": "degraded",
        "flags": [],
        "muted": False,
        "runs": 3,
        "last_success_at": "2026-05-02T02:05:00.000000Z",
        "last_failure_at": "2026-05-01T02:01:00.000000Z",
        "success_rate_7d": 0.3333,
        "success_rate_30d": 0.3333,
        "duration_p50_seconds": 240,
        "duration_p95_seconds": 294,
        "last_bytes": 700,
        "median_bytes": 800,
        "expected_interval_seconds": DAY,
        "next_expected_at": "2026-05-04T02:00:00.000000Z",
        "grace_seconds": DAY // 2,
        "schedule": "inferred",
        "last_run": app.extensions["store"].get(latest["run_id"]),
    }


def test_last_run_is_the_latest_by_start_time_not_by_arrival(app, client, clock):
    newest = run_at(DAY, received=T0 + timedelta(hours=1))
    save(app, newest, run_at(0, received=T0 + timedelta(hours=2)))
    (job,) = client.get("/v1/jobs").get_json()
    assert job["last_run"]["run_id"] == newest["run_id"]


def test_a_report_posted_over_http_shows_up(client, clock):
    clock.moment = T0 + timedelta(minutes=10)
    run = make_run("r-1", start_time="2026-05-01T02:00:00Z", end_time="2026-05-01T02:04:00Z")
    assert client.post("/v1/backup-runs", json=run).status_code == 201
    (job,) = client.get("/v1/jobs").get_json()
    assert (job["state"], job["last_run"]["run_id"], job["runs"]) == ("new", "r-1", 1)


def jobs_in(client, query: str = "") -> list[tuple[str, str]]:
    """(job_name, state) of each job /v1/jobs lists, in its order."""
    return [(job["job_name"], job["state"]) for job in client.get("/v1/jobs" + query).get_json()]


@pytest.fixture
def one_of_each(app, clock):
    """Five jobs, one in each state, at T0 + 10 days."""
    save(
        app,
        *[run_at(day * DAY, job=("late", "a")) for day in range(3)],  # last at day 2
        *[run_at(day * DAY, job=("ok", "a")) for day in range(10)],
        *[run_at(day * DAY, job=("failing", "a")) for day in range(9)],
        run_at(9 * DAY, job=("failing", "a"), status="failure"),
        run_at(9 * DAY, job=("degraded", "a"), status="partial"),
        run_at(5 * DAY, job=("new", "a")),
    )
    clock.moment = T0 + timedelta(days=10)


@pytest.mark.usefixtures("one_of_each")
def test_worst_state_first(client):
    assert jobs_in(client) == [
        ("late", "late"),
        ("failing", "failing"),
        ("degraded", "degraded"),
        ("new", "new"),
        ("ok", "ok"),
    ]


@pytest.mark.usefixtures("one_of_each")
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?state=late,failing", ["late", "failing"]),
        ("?state=failing,late", ["late", "failing"]),
        ("?state=ok", ["ok"]),
        ("?state=muted", []),
        ("?state=late,%20new", ["late", "new"]),
        ("?state=late&state=failing", ["late", "failing"]),  # as status does for listings
    ],
)
def test_filter_by_state(client, query, expected):
    assert [state for _, state in jobs_in(client, query)] == expected


@pytest.mark.parametrize("value", ["bogus", "", "late,", "LATE"])
def test_an_unknown_state_is_400(client, value):
    response = client.get("/v1/jobs", query_string={"state": value})
    assert response.status_code == 400
    assert list(response.get_json()) == ["error"]
    assert response.get_json()["error"].startswith("state: unknown value")
    assert "late, failing, degraded, new, ok, muted" in response.get_json()["error"]


def test_ties_go_to_the_most_recent_run(app, client, clock):
    save(
        app,
        run_at(0, job=("older", "a"), status="failure"),
        run_at(2 * HOUR, job=("newest", "a"), status="failure"),
        run_at(HOUR, job=("middle", "a"), status="failure"),
    )
    clock.moment = T0 + timedelta(days=1)
    assert jobs_in(client) == [("newest", "failing"), ("middle", "failing"), ("older", "failing")]


def test_full_ties_go_by_job_name_then_agent(app, client):
    """Pins the last tie-breakers of /v1/jobs: same state and start, so name, then agent."""
    save(
        app,
        run_at(0, job=("b-job", "a-agent"), status="failure"),
        run_at(0, job=("a-job", "z-agent"), status="failure"),
        run_at(0, job=("a-job", "m-agent"), status="failure"),
    )
    listed = [(job["job_name"], job["agent_id"]) for job in client.get("/v1/jobs").get_json()]
    assert listed == [("a-job", "m-agent"), ("a-job", "z-agent"), ("b-job", "a-agent")]


def test_whole_seconds_are_written_without_a_fraction(app, client):
    """Pins _number: 86400, not 86400.0, in the raw JSON a script may match on."""
    save(app, *daily(3))
    text = client.get("/v1/jobs").get_data(as_text=True)
    assert '"expected_interval_seconds":86400,' in text
    assert '"grace_seconds":43200,' in text
    assert '"duration_p50_seconds":300,' in text


def test_time_moves_the_state_without_any_new_run(app, client, clock):
    save(app, *daily(5))
    clock.moment = T0 + timedelta(days=5, hours=12)
    assert jobs_in(client) == [(JOB[0], "ok")]
    clock.moment += timedelta(seconds=1)
    assert jobs_in(client) == [(JOB[0], "late")]


def test_new_deleted_and_replaced_runs_are_seen(app, client, clock):
    save(app, *daily(3))
    clock.moment = T0 + timedelta(days=2, hours=1)
    assert client.get("/v1/jobs").get_json()[0]["runs"] == 3
    failed = run_at(3 * DAY, status="failure")
    save(app, failed)
    (job,) = client.get("/v1/jobs").get_json()
    assert (job["runs"], job["state"], job["last_run"]["status"]) == (4, "failing", "failure")
    assert client.delete("/v1/backup-runs/" + failed["run_id"]).status_code == 204
    (job,) = client.get("/v1/jobs").get_json()
    assert (job["runs"], job["state"]) == (3, "ok")
    for run in daily(3):
        app.extensions["store"].delete(run["run_id"])
    assert client.get("/v1/jobs").get_json() == []


def test_run_files_are_read_once_per_change_of_their_job(app, client, store_dir):
    save(app, *daily(3), *daily(3, job=("other", "b")))
    first = client.get("/v1/jobs").get_json()
    # Overwrite both jobs' latest files behind the index's back: a summary that re-read the
    # files would show the edit.
    for job in (JOB, ("other", "b")):
        path = store_dir / file_name_for(f"{job[0]}@{job[1]}@{2 * DAY}")
        edited = json.loads(path.read_text())
        edited["error"] = "edited on disk"
        path.write_text(json.dumps(edited))
    assert client.get("/v1/jobs").get_json() == first
    # A new run changes only its own job; the other job's cached summary stays as it was.
    save(app, run_at(3 * DAY))
    again = {job["job_name"]: job for job in client.get("/v1/jobs").get_json()}
    assert again[JOB[0]]["runs"] == 4
    assert "error" not in again["other"]["last_run"]


def test_job_summaries_for_the_dashboard(app, clock):
    save(app, *daily(5), run_at(0, job=("other", "b"), status="failure"))
    clock.moment = T0 + timedelta(days=7)
    summaries = jobs.job_summaries(app, clock())
    assert [(s.job_name, s.state) for s in summaries] == [(JOB[0], "late"), ("other", "failing")]
    assert summaries[0].to_dict()["last_run"]["run_id"] == daily(5)[-1]["run_id"]
    late = jobs.job_summaries(app, clock(), states=("late",))
    assert [s.job_name for s in late] == [JOB[0]]


def test_success_rates_move_with_the_clock_alone(app, client, clock):
    save(app, run_at(0, status="failure"), run_at(DAY), run_at(2 * DAY))
    clock.moment = T0 + timedelta(days=7, seconds=1)  # the failure has left the 7-day window
    (job,) = client.get("/v1/jobs").get_json()
    assert (job["success_rate_7d"], job["success_rate_30d"]) == (1.0, 0.6667)
    clock.moment = T0 + timedelta(days=9, seconds=1)  # now every run has
    (job,) = client.get("/v1/jobs").get_json()
    assert (job["success_rate_7d"], job["success_rate_30d"]) == (None, 0.6667)


# --- times at the ends of the calendar -------------------------------------------------------


def post_runs(client, job: tuple[str, str], *starts: str) -> None:
    """Report runs of job over HTTP, each five minutes long, starting at these times."""
    for start in starts:
        begin = datetime.fromisoformat(start)
        run = make_run(
            f"{job[0]}@{start}",
            job_name=job[0],
            agent_id=job[1],
            start_time=start,
            end_time=format_timestamp(begin + timedelta(minutes=5)),
        )
        assert client.post("/v1/backup-runs", json=run).status_code == 201


def test_a_next_start_past_the_year_9999_is_not_expected(client, clock):
    """A run reported in the year 9000 leaves no next start to expect, and breaks no answer."""
    # Each reported after it ran: a start after its report would count from the report.
    clock.moment = T0 + timedelta(days=3)
    post_runs(client, JOB, *(format_timestamp(T0 + timedelta(days=day)) for day in range(3)))
    clock.moment = datetime(2026, 5, 12, tzinfo=UTC)
    post_runs(client, ("other", "b"), "2026-05-10T02:00:00Z", "2026-05-11T02:00:00Z")
    clock.moment = datetime(9000, 1, 1, 3, tzinfo=UTC)
    post_runs(client, ("other", "b"), "9000-01-01T02:00:00Z")  # the median gap: ~3,500 years
    clock.moment = T0 + timedelta(days=30)
    response = client.get("/v1/jobs")
    assert response.status_code == 200
    listed = {job["job_name"]: job for job in response.get_json()}
    other = listed["other"]
    gap = datetime(9000, 1, 1, 2, tzinfo=UTC) - datetime(2026, 5, 10, 2, tzinfo=UTC)
    assert other["expected_interval_seconds"] == gap.total_seconds() / 2
    assert (other["next_expected_at"], other["state"]) == (None, "ok")
    assert (listed[JOB[0]]["next_expected_at"], listed[JOB[0]]["state"]) == (
        "2026-05-04T02:00:00.000000Z",
        "late",
    )
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    late = {
        sample.labels["job_name"]: sample.value
        for family in text_string_to_metric_families(metrics.get_data(as_text=True))
        for sample in family.samples
        if sample.name == "backup_job_late"
    }
    assert late == {"other": 0.0, JOB[0]: 1.0}
    page = client.get("/")
    assert page.status_code == 200
    assert "9000-01-01" in page.get_data(as_text=True)


def test_an_end_time_ahead_of_its_report_counts_as_the_report(client, clock):
    """An agent whose clock runs a year ahead: its last success is when its report came,
    or an alert on time() - backup_last_success_timestamp_seconds stays silent for a year."""
    clock.moment = T0 + timedelta(days=2)
    post_runs(client, JOB, format_timestamp(T0 + timedelta(days=365)))
    received = (T0 + timedelta(days=2)).timestamp()

    (job,) = client.get("/v1/jobs").get_json()
    metrics = {
        sample.name: sample.value
        for family in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
        for sample in family.samples
        if sample.name.endswith("_timestamp_seconds")
    }

    assert job["last_success_at"] == format_timestamp(T0 + timedelta(days=2))
    assert metrics == {
        "backup_last_run_timestamp_seconds": received,
        "backup_last_success_timestamp_seconds": received,
    }


def test_a_run_in_the_last_microsecond_of_9999_is_shown(client, clock):
    """As a float, 9999-12-31T23:59:59.999999Z rounds up into the year 10000."""
    last = "9999-12-31T23:59:59.999999Z"
    clock.moment = parse_timestamp(last)  # reported then: an end after its report is not believed
    run = make_run("last", job_name="end", agent_id="b", start_time=last, end_time=last)
    assert client.post("/v1/backup-runs", json=run).status_code == 201
    response = client.get("/v1/jobs")
    assert response.status_code == 200
    (job,) = response.get_json()
    assert job["last_success_at"] == "9999-12-31T23:59:59.999999Z"
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    (ended,) = [
        sample.value
        for family in text_string_to_metric_families(metrics.get_data(as_text=True))
        for sample in family.samples
        if sample.name == "backup_last_run_timestamp_seconds"
    ]
    assert ended == 253_402_300_800  # the float nearest the last microsecond
    for page in ("/", "/job?job_name=end&agent_id=b", "/run/last"):
        answer = client.get(page)
        assert answer.status_code == 200, page
        assert "9999-12-31" in answer.get_data(as_text=True), page


# --- one job's failure -----------------------------------------------------------------------


def test_a_job_whose_figures_fail_is_listed_without_them(app, client, clock, monkeypatch, caplog):
    """The other jobs still answer, and the failure is logged once, the names escaped.

    No real input is known to break the figures any more, so the fault is put in by hand.
    """
    broken = ("broken\u2028job", "b\u202eot")  # a line separator, a right-to-left override
    real_run_flags = jobs.run_flags

    def run_flags(latest, reference, override):
        if latest.job == broken:
            raise ArithmeticError("no figures for this one")
        return real_run_flags(latest, reference, override)

    monkeypatch.setattr(jobs, "run_flags", run_flags)
    save(app, *daily(3), *daily(3, job=broken, status="failure", bytes_backed_up=10))
    clock.moment = T0 + timedelta(days=2, hours=1)
    for _ in range(2):
        response = client.get("/v1/jobs")
        assert response.status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.get("/").status_code == 200
    listed = {job["job_name"]: job for job in response.get_json()}
    assert (listed[JOB[0]]["state"], listed[JOB[0]]["expected_interval_seconds"]) == ("ok", DAY)
    failed = listed[broken[0]]
    assert failed["last_run"]["run_id"] == daily(3, job=broken)[-1]["run_id"]
    assert (failed["state"], failed["runs"], failed["last_bytes"]) == ("failing", 3, 10)
    assert (failed["success_rate_7d"], failed["flags"], failed["schedule"]) == (0, [], "inferred")
    assert failed["expected_interval_seconds"] is failed["next_expected_at"] is None
    assert failed["last_failure_at"] is failed["duration_p50_seconds"] is None
    (record,) = [record for record in caplog.records if record.name == "backup_registry.jobs"]
    message = record.getMessage()
    assert message == (
        "job 'broken\\u2028job' on agent 'b\\u202eot': cannot compute its figures; "
        "listing it without them"
    )
    assert "no figures for this one" in caplog.text  # the traceback
