"""The jobs file (JOBS_FILE): overrides for interval, grace, cron, size, encryption and mute."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import ROOT, make_run
from jobs_support import DAY, HOUR, JOB, T0, Clock, clock, daily, run_at, save
from prometheus_client.parser import text_string_to_metric_families

from app import ConfigError, create_app
from jobs import JobOverride

# The clock fixture comes from jobs_support; naming it here registers it.
__all__ = ["clock"]


@pytest.fixture
def jobs_file(tmp_path: Path) -> Path:
    """Where the test writes its jobs file: beside the store, not in it."""
    return tmp_path / "jobs.json"


@pytest.fixture
def make_app(app_config: dict, jobs_file: Path, clock: Clock):
    """Build an app over a jobs file holding the given entries; close its store afterwards."""
    apps = []

    def build(*entries: dict, changed_at: datetime | None = None):
        jobs_file.write_text(json.dumps({"jobs": list(entries)}))
        if changed_at is not None:
            os.utime(jobs_file, (changed_at.timestamp(), changed_at.timestamp()))
        config = {**app_config, "JOBS_FILE": str(jobs_file), "CLOCK": clock, "WATCH_STORE": "0"}
        apps.append(create_app(config))
        return apps[-1]

    yield build
    for app in apps:
        app.extensions["store"].close()


def only_job(app) -> dict:
    """The one job /v1/jobs lists."""
    (job,) = app.test_client().get("/v1/jobs").get_json()
    return job


def test_no_jobs_file_is_fine(app):
    assert app.config["JOBS_FILE"] == ""
    assert app.extensions["jobs"].overrides.for_job(*JOB) is None


def test_an_empty_list_is_fine(make_app):
    assert len(make_app().extensions["jobs"].overrides) == 0


def test_a_set_interval_needs_no_history(make_app, clock):
    app = make_app({"job_name": JOB[0], "interval_seconds": 3600})
    save(app, run_at(0))
    clock.moment = T0 + timedelta(hours=1, minutes=30)  # grace: half an hour
    job = only_job(app)
    assert (job["expected_interval_seconds"], job["schedule"], job["state"]) == (
        3600,
        "interval",
        "ok",
    )
    assert job["next_expected_at"] == "2026-05-01T03:00:00.000000Z"
    clock.moment += timedelta(seconds=1)
    assert only_job(app)["state"] == "late"


def test_interval_and_grace_replace_the_inferred_ones(make_app, clock):
    app = make_app({"job_name": JOB[0], "interval_seconds": 2 * DAY, "grace_seconds": 60})
    save(app, *daily(5))
    clock.moment = T0 + timedelta(days=6, seconds=60)
    job = only_job(app)
    assert (job["expected_interval_seconds"], job["grace_seconds"], job["state"]) == (
        2 * DAY,
        60,
        "ok",
    )
    clock.moment += timedelta(seconds=1)
    assert only_job(app)["state"] == "late"


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        ("2026-05-01T02:00:00Z", "2026-05-02T02:00:00.000000Z"),  # on time
        ("2026-05-01T02:40:00Z", "2026-05-02T02:00:00.000000Z"),  # started late
        ("2026-05-01T01:59:50Z", "2026-05-02T02:00:00.000000Z"),  # early: it served 02:00
        ("2026-05-01T14:00:00Z", "2026-05-02T02:00:00.000000Z"),  # half-way: the earlier one
    ],
)
def test_cron_expects_the_slot_after_the_one_the_run_served(make_app, start, expected):
    app = make_app({"job_name": JOB[0], "cron": "0 2 * * *"})
    begin = datetime.fromisoformat(start)
    save(app, run_at((begin - T0).total_seconds()))
    job = only_job(app)
    assert (job["next_expected_at"], job["expected_interval_seconds"]) == (expected, DAY)
    assert (job["schedule"], job["grace_seconds"]) == ("cron", DAY // 2)


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("@daily", "2026-05-02T00:00:00.000000Z"),
        ("@WEEKLY", "2026-05-03T00:00:00.000000Z"),
        ("0 0 29 2 *", "2028-02-29T00:00:00.000000Z"),  # once in four years
        ("30 4 1,15 * *", "2026-05-01T04:30:00.000000Z"),
        ("0 3 * * mon#2", "2026-05-11T03:00:00.000000Z"),
    ],
)
def test_five_fields_or_a_macro_make_a_schedule(make_app, cron, expected):
    app = make_app({"job_name": JOB[0], "agent_id": JOB[1], "cron": cron})
    assert only_job(app)["next_expected_at"] == expected  # the first slot after T0


@pytest.mark.parametrize(
    ("cron", "start", "expected", "interval"),
    [
        # A day field starting with '*' ands the two, as cron does: odd-dated Mondays (the
        # 25th of May, then the 1st of June).
        ("0 2 */2 * 1", "2026-05-11T02:00:00Z", "2026-05-25T02:00:00.000000Z", 7 * DAY),
        # The next 1st on a Sunday, Tuesday, Thursday or Saturday: 1 August, then 1 September.
        ("0 2 1 * */2", "2026-05-01T02:00:00Z", "2026-08-01T02:00:00.000000Z", 31 * DAY),
        # Neither field starts with '*': either one, as cron does too.
        ("0 2 1 * 1", "2026-05-01T02:00:00Z", "2026-05-04T02:00:00.000000Z", 7 * DAY),
    ],
)
def test_cron_reads_its_two_day_fields_as_cron_does(make_app, cron, start, expected, interval):
    """croniter's default matched '0 2 */2 * 1' on every odd day and every Monday; cron runs it
    on Mondays with an odd date, so the job read late between its runs."""
    app = make_app({"job_name": JOB[0], "cron": cron})
    save(app, run_at((datetime.fromisoformat(start) - T0).total_seconds()))
    job = only_job(app)
    assert (job["next_expected_at"], job["expected_interval_seconds"]) == (expected, interval)


def test_cron_in_a_time_zone(make_app):
    app = make_app({"job_name": JOB[0], "cron": "0 2 * * 1", "timezone": "Europe/Berlin"})
    save(app, run_at(-DAY))  # Thursday 2026-04-30 02:00 UTC
    job = only_job(app)
    # Mondays at 02:00 in Berlin, in summer time: 00:00 UTC.
    assert job["next_expected_at"] == "2026-05-04T00:00:00.000000Z"
    assert job["expected_interval_seconds"] == 7 * DAY


@pytest.mark.parametrize(
    ("cron", "zone", "start", "expected", "interval"),
    [
        # The night clocks go back in Berlin: 02:30 comes twice, and cron runs the job once.
        ("30 2 * * *", "Europe/Berlin", "2026-10-24T00:30:00Z", "2026-10-25T00:30:00", 25 * HOUR),
        ("30 2 * * *", "Europe/Berlin", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00", DAY),
        # Two slots in it: after 02:30 summer time, not 02:30 winter time (late for 12 h).
        ("0,30 2 * * *", "Europe/Berlin", "2026-10-25T00:30:00Z", "2026-10-26T01:00:00", HOUR / 2),
        ("0 * * * *", "Europe/Berlin", "2026-10-25T01:00:00Z", "2026-10-25T02:00:00", HOUR),
        ("0 1 * * *", "America/New_York", "2026-11-01T05:00:00Z", "2026-11-02T06:00:00", DAY),
        # The night they go forward: 02:30 does not exist, and croniter takes 03:00.
        ("30 2 * * *", "Europe/Berlin", "2026-03-28T01:30:00Z", "2026-03-29T01:00:00", 23.5 * HOUR),
    ],
)
def test_cron_across_a_daylight_saving_change(
    make_app, clock, cron, zone, start, expected, interval
):
    """The next slot and the interval count real time, and a repeated hour's slot comes once."""
    app = make_app({"job_name": JOB[0], "cron": cron, "timezone": zone})
    begin = datetime.fromisoformat(start)
    save(app, run_at((begin - T0).total_seconds(), duration=60))
    clock.moment = begin + timedelta(minutes=5)
    job = only_job(app)
    assert (job["next_expected_at"], job["expected_interval_seconds"]) == (
        f"{expected}.000000Z",
        interval,
    )
    assert job["state"] == "ok"


def test_a_cron_slot_outside_the_years_1_to_9999_leaves_the_schedule_unknown(make_app, clock):
    app = make_app({"job_name": "j", "cron": "0 2 * * *"})
    client = app.test_client()
    for agent, start, end in [
        ("first", "0001-01-01T00:00:00Z", "0001-01-01T00:05:00Z"),  # the slot before: in the year 0
        ("last", "9999-12-31T03:00:00Z", "9999-12-31T03:05:00Z"),  # expects 10000-01-01 02:00
        ("now", "2026-05-01T02:00:00Z", "2026-05-01T02:05:00Z"),
    ]:
        run = make_run(agent, job_name="j", agent_id=agent, start_time=start, end_time=end)
        # Reported after it ended: a start after its report would count from the report.
        clock.moment = max(T0, datetime.fromisoformat(end))
        assert client.post("/v1/backup-runs", json=run).status_code == 201
    clock.moment = T0 + timedelta(days=3)
    response = client.get("/v1/jobs")
    assert response.status_code == 200
    listed = {
        job["agent_id"]: (
            job["schedule"],
            job["expected_interval_seconds"],
            job["next_expected_at"],
            job["state"],
        )
        for job in response.get_json()
    }
    assert listed == {
        "first": ("cron", None, None, "new"),
        "last": ("cron", None, None, "new"),
        "now": ("cron", DAY, "2026-05-02T02:00:00.000000Z", "late"),
    }
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    samples = {
        (sample.name, sample.labels["agent_id"]): sample.value
        for family in text_string_to_metric_families(metrics.get_data(as_text=True))
        for sample in family.samples
        if sample.name in ("backup_job_late", "backup_job_expected_interval_seconds")
    }
    assert samples == {
        ("backup_job_late", "first"): 0.0,
        ("backup_job_late", "last"): 0.0,
        ("backup_job_late", "now"): 1.0,
        ("backup_job_expected_interval_seconds", "now"): DAY,
    }
    assert client.get("/").status_code == 200


def test_an_entry_for_the_agent_beats_one_for_every_agent(make_app):
    app = make_app(
        {"job_name": JOB[0], "interval_seconds": 100},
        {"job_name": JOB[0], "agent_id": "db-02", "interval_seconds": 200},
        {"job_name": "other", "agent_id": JOB[1], "interval_seconds": 300},
    )
    save(app, run_at(0), run_at(0, job=(JOB[0], "db-02")), run_at(0, job=(JOB[0], "db-03")))
    intervals = {
        job["agent_id"]: job["expected_interval_seconds"]
        for job in app.test_client().get("/v1/jobs").get_json()
        if job["job_name"] == JOB[0]
    }
    assert intervals == {"db-01": 100, "db-02": 200, "db-03": 100}


# --- jobs that never reported ------------------------------------------------------------------

OFFSITE = ("offsite-sync", "nas-01")


def test_a_named_job_that_never_reported_is_listed_and_turns_late(make_app, clock):
    app = make_app({"job_name": OFFSITE[0], "agent_id": OFFSITE[1], "interval_seconds": 3600})
    job = only_job(app)
    assert (job["job_name"], job["agent_id"], job["runs"], job["state"]) == (*OFFSITE, 0, "new")
    assert job["next_expected_at"] == "2026-05-01T03:00:00.000000Z"  # an hour after start
    assert (job["last_run"], job["last_success_at"], job["flags"]) == (None, None, [])
    clock.moment = T0 + timedelta(hours=1, minutes=30)  # grace: half the interval
    assert only_job(app)["state"] == "new"
    clock.moment += timedelta(seconds=1)
    assert only_job(app)["state"] == "late"
    save(app, run_at(5400, job=OFFSITE))
    job = only_job(app)
    assert (job["runs"], job["state"], job["last_run"]["agent_id"]) == (1, "ok", OFFSITE[1])


def test_a_restart_does_not_restart_the_wait_for_a_first_report(make_app, clock):
    """The wait counts from when the jobs file last changed, not from the process's start."""
    entry = {"job_name": OFFSITE[0], "agent_id": OFFSITE[1], "interval_seconds": 3600}
    make_app(entry, changed_at=T0)
    clock.moment = T0 + timedelta(hours=2)
    restarted = make_app(entry, changed_at=T0)  # the same file, read by a new process
    job = only_job(restarted)
    assert (job["next_expected_at"], job["state"]) == ("2026-05-01T03:00:00.000000Z", "late")


def test_a_jobs_file_time_in_the_future_counts_as_now(make_app):
    entry = {"job_name": OFFSITE[0], "agent_id": OFFSITE[1], "interval_seconds": 3600}
    app = make_app(entry, changed_at=T0 + timedelta(days=10))  # a skewed clock, say
    assert only_job(app)["next_expected_at"] == "2026-05-01T03:00:00.000000Z"


def test_a_never_reported_job_is_not_recomputed_when_other_jobs_report(make_app):
    app = make_app({"job_name": OFFSITE[0], "agent_id": OFFSITE[1], "cron": "0 3 * * *"})
    monitor = app.extensions["jobs"]
    (before,) = monitor.stats()
    save(app, run_at(0))
    assert before in monitor.stats()  # the same object: its schedule was not worked out again


def test_a_never_reported_cron_job_expects_the_first_slot_after_start(make_app):
    app = make_app({"job_name": OFFSITE[0], "agent_id": OFFSITE[1], "cron": "30 4 * * *"})
    job = only_job(app)
    assert (job["schedule"], job["next_expected_at"]) == ("cron", "2026-05-01T04:30:00.000000Z")
    assert job["expected_interval_seconds"] == DAY


def test_a_never_reported_cron_job_expects_its_first_slot_in_its_time_zone(make_app):
    """Pins the time zone in the first expected slot of a job that never reported."""
    app = make_app(
        {
            "job_name": OFFSITE[0],
            "agent_id": OFFSITE[1],
            "cron": "30 4 * * *",
            "timezone": "Europe/Berlin",
        }
    )
    # T0 is 04:00 in Berlin (summer time): its 04:30 is 02:30 UTC, not 04:30 UTC.
    assert only_job(app)["next_expected_at"] == "2026-05-01T02:30:00.000000Z"


def test_a_file_that_is_not_utf8_stops_the_start_saying_so(app_config, jobs_file):
    """Pins the message for a jobs file in another encoding, such as Latin-1."""
    jobs_file.write_bytes('{"jobs": [{"job_name": "sicherung-tägl"}]}'.encode("latin-1"))
    assert start_with(app_config, jobs_file, None) == "not UTF-8 text"


def test_a_never_reported_job_without_a_schedule_is_new_for_good(make_app, clock):
    app = make_app({"job_name": OFFSITE[0], "agent_id": OFFSITE[1], "min_bytes": 10})
    clock.moment = T0 + timedelta(days=400)
    job = only_job(app)
    assert (job["state"], job["next_expected_at"], job["schedule"]) == ("new", None, "inferred")


def test_an_entry_without_an_agent_lists_no_job_until_one_reports(make_app):
    app = make_app({"job_name": OFFSITE[0], "interval_seconds": 3600})
    assert app.test_client().get("/v1/jobs").get_json() == []


def test_never_reported_jobs_come_first_in_their_state(make_app, clock):
    app = make_app({"job_name": OFFSITE[0], "agent_id": OFFSITE[1], "interval_seconds": 60})
    save(app, run_at(-3 * DAY), run_at(-2 * DAY), run_at(-DAY))  # late too, by now
    clock.moment = T0 + timedelta(days=2)
    listed = [(job["job_name"], job["state"]) for job in app.test_client().get("/v1/jobs").json]
    assert listed == [(OFFSITE[0], "late"), (JOB[0], "late")]


def test_min_bytes_and_require_encryption_raise_flags(make_app):
    app = make_app({"job_name": JOB[0], "min_bytes": 1000, "require_encryption": True})
    save(app, run_at(0, bytes_backed_up=999))
    assert only_job(app)["flags"] == ["size_drop", "unencrypted"]


def test_a_muted_job_is_never_late_and_needs_no_attention(make_app, clock):
    app = make_app({"job_name": JOB[0], "muted": True, "comment": "host retired"})
    save(app, *daily(3), run_at(0, job=("other", "b"), status="failure"))
    clock.moment = T0 + timedelta(days=30)
    client = app.test_client()
    listed = client.get("/v1/jobs").get_json()
    # Muted sorts last: it needs no one's attention.
    assert [(job["job_name"], job["state"]) for job in listed] == [
        ("other", "failing"),
        (JOB[0], "muted"),
    ]
    assert (listed[1]["muted"], listed[1]["unmuted_state"]) == (True, "late")
    attention = client.get("/v1/jobs?state=late,failing").get_json()
    assert [job["job_name"] for job in attention] == ["other"]
    assert [job["job_name"] for job in client.get("/v1/jobs?state=muted").get_json()] == [JOB[0]]


# --- bad files stop the start ----------------------------------------------------------------


TEN_YEARS = 10 * 365 * DAY  # the schema's maximum for interval_seconds and grace_seconds


def start_with(app_config: dict, jobs_file: Path, content: str | None) -> str:
    """Try to build the app over a jobs file with this content; return the ConfigError text."""
    if content is not None:
        jobs_file.write_text(content)
    with pytest.raises(ConfigError) as caught:
        create_app({**app_config, "JOBS_FILE": str(jobs_file)})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"JOBS_FILE {jobs_file}: ")
    return message[len(f"JOBS_FILE {jobs_file}: ") :]


DEEP = '{"jobs":' + "[" * 100_000 + "]" * 100_000 + "}"
TOO_DEEP = "JSON nested too deeply (a jobs file is a list of flat objects)"


def entry(**fields) -> str:
    """A jobs file with one entry for JOB[0] and these fields."""
    return json.dumps({"jobs": [{"job_name": JOB[0], **fields}]})


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{", "not valid JSON (Expecting property name enclosed in double quotes at line 1"),
        ("[]", "the file: [] is not of type 'object'"),
        ("{}", "the file: 'jobs' is a required property"),
        ('{"jobs": [{}]}', "jobs[0]: 'job_name' is a required property"),
        (entry(intervall=60), "jobs[0]: Additional properties are not allowed ('intervall'"),
        (entry(interval_seconds=0), "jobs[0].interval_seconds: 0 is less than or equal to"),
        (entry(interval_seconds="1h"), "jobs[0].interval_seconds: '1h' is not of type 'number'"),
        (entry(grace_seconds=-1), "jobs[0].grace_seconds: -1 is less than the minimum of 0"),
        (
            entry(interval_seconds=1e12),  # past the year 9999 from any run
            "jobs[0].interval_seconds: 1000000000000.0 is greater than the maximum of 315360000",
        ),
        (
            entry(grace_seconds=TEN_YEARS + 1),
            "jobs[0].grace_seconds: 315360001 is greater than the maximum of 315360000",
        ),
        (entry(min_bytes=1.5), "jobs[0].min_bytes: 1.5 is not of type 'integer'"),
        (entry(muted="yes"), "jobs[0].muted: 'yes' is not of type 'boolean'"),
        (entry(interval_seconds=60, cron="* * * * *"), "jobs[0]: set interval_seconds or cron"),
        (entry(timezone="UTC"), "jobs[0]: timezone applies to cron only"),
        (entry(cron="61 2 * * *"), "jobs[0].cron: '61 2 * * *' is not a cron expression"),
        (entry(cron="@reboot"), "jobs[0].cron: '@reboot' is not a cron expression"),
        (
            entry(cron="0 2 31 2 *"),
            "jobs[0].cron: '0 2 31 2 *' never fires: no time in the next 50 years matches it",
        ),
        (
            entry(cron="0 0 2 1 * 0 2020"),
            "jobs[0].cron: '0 0 2 1 * 0 2020' has 7 fields; use 5 (minute hour day month "
            "weekday) or a macro such as @daily",
        ),
        (entry(cron="0 2 * * * 30"), "jobs[0].cron: '0 2 * * * 30' has 6 fields; use 5"),
        (
            entry(cron="r(0-29) 2 * * *"),
            "jobs[0].cron: 'r(0-29) 2 * * *' uses R (random), which gives no fixed time",
        ),
        (
            entry(cron="0 2 * * *", timezone="Mars/Olympus"),
            "jobs[0].timezone: 'Mars/Olympus' is not a known time zone",
        ),
        (
            json.dumps({"jobs": [{"job_name": "a"}, {"job_name": "b"}, {"job_name": "a"}]}),
            "jobs[2]: repeats jobs[0] for the same job",
        ),
        (json.dumps({"jobs": [], "extra": 1}), "the file: Additional properties"),
        pytest.param(DEEP, TOO_DEEP, id="deep-list"),
        # Deep enough for the repr that the schema's message quotes, if not for the reader.
        pytest.param(
            '{"jobs": [{"job_name": "j", "comment": ' + '{"a":' * 990 + "1" + "}" * 990 + "}]}",
            TOO_DEEP,
            id="deep-comment",
        ),
        (entry(interval_seconds=float("inf")), "Infinity is not valid JSON"),
        (
            '{"jobs": [{"job_name": "j", "interval_seconds": 60, "interval_seconds": 3600}]}',
            'the key "interval_seconds" appears twice in one object (job_name "j"); '
            "write each key once",
        ),
        ('{"jobs": [], "jobs": []}', 'the key "jobs" appears twice in one object; write each'),
        (
            '{"jobs": [{"job_name": "täglich", "comment": 1, "comment": 2}]}',
            'the key "comment" appears twice in one object (job_name "täglich")',
        ),
        (
            '{"jobs": [{"job_name": "j", "interval_seconds": 1e400}]}',
            "the number 1e400 is out of range: it would be read as infinity",
        ),
        (
            '{"jobs": [{"job_name": "j", "grace_seconds": -1E400}]}',
            "the number -1E400 is out of range: it would be read as infinity",
        ),
    ],
)
def test_a_bad_file_stops_the_start_with_a_clear_line(app_config, jobs_file, content, reason):
    assert start_with(app_config, jobs_file, content).startswith(reason)


def test_nesting_past_32_levels_is_refused_as_such_before_the_schema_check(app_config, jobs_file):
    """The same line on every Python: 3.12 no longer runs out of recursion quoting the value."""

    def comment_nested(levels: int) -> str:  # the file, its list and the entry make three more
        return '{"jobs": [{"job_name": "j", "comment": ' + "[" * levels + "]" * levels + "}]}"

    assert start_with(app_config, jobs_file, comment_nested(29)).startswith("jobs[0].comment: [[[[")
    assert start_with(app_config, jobs_file, comment_nested(30)) == TOO_DEEP
    assert start_with(app_config, jobs_file, comment_nested(990)) == TOO_DEEP


def test_a_long_bad_value_is_quoted_short_and_the_reason_kept(app_config, jobs_file):
    long_name = "x" * 300
    assert start_with(app_config, jobs_file, entry(job_name=long_name)) == (
        f"jobs[0].job_name: '{'x' * 59}...' is too long"
    )
    huge = start_with(app_config, jobs_file, entry(grace_seconds=10**70))
    assert (
        huge == f"jobs[0].grace_seconds: 1{'0' * 59}... is greater than the maximum of {TEN_YEARS}"
    )
    listed = start_with(app_config, jobs_file, entry(comment=list(range(300))))
    assert listed.startswith("jobs[0].comment: [0, 1, 2, 3,")
    assert listed.endswith("...] is not of type 'string'")
    unknown = start_with(app_config, jobs_file, entry(**{"y" * 500: 1}))
    assert unknown.startswith(f"jobs[0]: Additional properties are not allowed ('{'y' * 59}...' ")
    assert unknown.endswith(
        "was unexpected); known keys are job_name, agent_id, interval_seconds, "
        "cron, timezone, grace_seconds, min_bytes, require_encryption, muted, comment"
    )


def test_ten_years_is_the_longest_interval_and_grace(make_app, clock):
    app = make_app({"job_name": JOB[0], "interval_seconds": TEN_YEARS, "grace_seconds": TEN_YEARS})
    save(app, run_at(0))
    clock.moment = T0 + timedelta(seconds=2 * TEN_YEARS)
    assert only_job(app)["state"] == "ok"
    clock.moment += timedelta(seconds=1)
    job = only_job(app)
    assert (job["state"], job["next_expected_at"]) == ("late", "2036-04-28T02:00:00.000000Z")


def test_a_missing_file_stops_the_start(app_config, jobs_file):
    assert start_with(app_config, jobs_file, None) == "no such file"


def test_the_file_may_not_live_in_the_store_folder(app_config, store_dir):
    store_dir.mkdir()
    assert (
        start_with(app_config, store_dir / "jobs.json", '{"jobs": []}')
        == "must not be inside STORE_DIR, which holds runs only"
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (entry(cron="not cron"), "jobs[0].cron: 'not cron' is not a cron expression"),
        pytest.param(DEEP, TOO_DEEP, id="deep"),
    ],
)
def test_python_app_py_exits_2_with_one_line(tmp_path, jobs_file, content, reason):
    jobs_file.write_text(content)
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--jobs-file", str(jobs_file)],
        cwd=tmp_path,
        env={"STORE_DIR": str(tmp_path / "store"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr == f"backup-registry: JOBS_FILE {jobs_file}: {reason}\n"
    assert not (tmp_path / "store").exists()  # stopped before touching the store


def test_the_schema_names_every_setting_the_loader_knows():
    schema = json.loads((ROOT / "jobs.schema.json").read_text())
    keys = set(schema["$defs"]["job"]["properties"]) - {"comment"}
    assert keys == set(JobOverride.__dataclass_fields__)


def test_a_never_reported_job_has_late_and_schedule_gauges_but_no_last_run(make_app, clock):
    app = make_app({"job_name": OFFSITE[0], "agent_id": OFFSITE[1], "interval_seconds": 3600})
    clock.moment = T0 + timedelta(hours=2)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    samples = {
        (sample.name, sample.labels.get("flag")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if (sample.labels["job_name"], sample.labels["agent_id"]) == OFFSITE
    }
    assert samples == {
        ("backup_job_late", None): 1.0,
        ("backup_job_expected_interval_seconds", None): 3600.0,
        ("backup_job_muted", None): 0.0,
        ("backup_job_flag", "size_drop"): 0.0,
        ("backup_job_flag", "duration_anomaly"): 0.0,
        ("backup_job_flag", "unencrypted"): 0.0,
    }


def test_a_muted_overdue_job_reports_muted_not_late_in_metrics(make_app, clock):
    """Pins backup_job_late as "late and not muted", and backup_job_muted from the file."""
    app = make_app({"job_name": JOB[0], "muted": True})
    save(app, *daily(3))
    clock.moment = T0 + timedelta(days=30)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in ("backup_job_late", "backup_job_muted")
    }
    assert only_job(app)["unmuted_state"] == "late"
    assert samples == {"backup_job_late": 0.0, "backup_job_muted": 1.0}


def test_a_muted_job_sorts_last_on_the_overview_even_when_failing(make_app):
    """Pins the muted rank: it needs no one's attention, so it goes below a healthy job."""
    app = make_app({"job_name": "aa-retired", "muted": True})
    save(
        app, run_at(0, job=("aa-retired", "nas"), status="failure"), run_at(0, job=("zz-fine", "b"))
    )
    text = app.test_client().get("/").get_data(as_text=True)
    assert re.findall(r'class="job-link"[^>]*>([^<]*)<', text) == ["zz-fine", "aa-retired"]


def test_the_overview_names_jobs_that_never_reported_until_they_do(make_app, clock):
    app = make_app(
        {"job_name": OFFSITE[0], "agent_id": OFFSITE[1], "interval_seconds": 3600},
        {"job_name": "retired-job", "agent_id": "old-nas", "muted": True},
    )
    save(app, run_at(0))  # another job, so the page shows its table too
    clock.moment = T0 + timedelta(hours=2)
    client = app.test_client()
    text = client.get("/").get_data(as_text=True)
    section = re.search(r'<section class="[^"]*never-reported.*?</section>', text, re.S).group(0)
    assert f"<strong>{OFFSITE[0]}</strong>" in section
    assert "retired-job" not in text  # muted: it needs no one's attention
    assert ">late<" in section
    assert "first run expected" in section and "2026-05-01 03:00" in section
    late_card = re.search(r'card-late[^>]*>\s*<span class="card-count">(\d+)<', text)
    assert late_card.group(1) == "1"  # the overdue job counts among the late ones
    save(app, run_at(7200, job=OFFSITE))
    assert "never-reported" not in client.get("/").get_data(as_text=True)
