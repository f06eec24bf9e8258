"""Jobs and monitoring: per-job summaries, schedule inference, states, flags and /metrics.

A job is a (job_name, agent_id) pair. Everything here is computed from the store's in-memory
index: per-job statistics are cached and recomputed only for jobs whose change counter moved,
so answering costs a pass over the jobs, never a pass over the runs or their files. Only
`register` touches Flask.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import statistics
import threading
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema
from croniter import CroniterBadDateError, croniter
from flask import Flask, Response, request
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import (
    CONTENT_TYPE_PLAIN_0_0_4,
    choose_encoder,
    generate_latest,
)
from werkzeug.exceptions import BadRequest

from store import (
    RunNotFound,
    RunStore,
    RunSummary,
    comma_separated,
    format_timestamp,
    loads_strict,
)

JOBS_SCHEMA_PATH = Path(__file__).resolve().parent / "jobs.schema.json"
# A jobs file is an object holding a list of flat objects: three levels. Deeper than this is
# no jobs file, and is refused before the schema check quotes it.
MAX_JOBS_FILE_DEPTH = 32
QUOTED_VALUE_CHARS = 60  # of a bad value, in the line that stops a start
MAX_MESSAGE_CHARS = 400  # of a problem's message, before "; known keys are ...": many unknown keys
log = logging.getLogger("backup_registry.jobs")

# Worst first: the order /v1/jobs sorts by. The first five are checked in this order and the
# first that holds wins; a muted job is "muted" whatever it would otherwise be.
STATES = ("late", "failing", "degraded", "new", "ok", "muted")
# The state a job's latest run gives it, when it is not late (and "ok" only once its schedule
# is known; "new" before). The dashboard compares a row's run against it (ui.JobRow).
STATE_OF_STATUS = {"failure": "failing", "partial": "degraded", "success": "ok"}
FLAGS = ("size_drop", "duration_anomaly", "unencrypted")
INTERVAL_RUNS = 20  # the interval is the median gap between at most this many latest starts
MIN_INTERVAL_RUNS = 3
REFERENCE_RUNS = 10  # size and duration are judged against at most this many earlier successes
MIN_REFERENCE_RUNS = 3
DURATION_RUNS = 100  # p50 and p95 durations cover at most this many latest runs
MIN_GRACE_SECONDS = 300.0
DAY = 86_400.0
CRON_YEARS = 50  # a cron expression must fire within this many years of the registry's start
RANDOM_CRON_PART = re.compile(r"R(\(\d+-\d+\))?(/\d+)?", re.IGNORECASE)
UNENCRYPTED_STATUSES = ("unencrypted", "partial", "failed")
SUCCESS_VALUE = {"success": 1.0, "partial": 0.5, "failure": 0.0}
# The last moment a datetime can hold, 9999-12-31T23:59:59.999999Z, as Unix seconds. A float
# cannot hold that microsecond: it rounds up to the next whole second.
LAST_TIMESTAMP = datetime.max.replace(tzinfo=UTC).timestamp()


class JobsFileError(ValueError):
    """The jobs file is missing, unreadable or invalid; the message is one line."""


# --- the jobs file ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JobOverride:
    """One entry of the jobs file: settings for a job, or for a job name on every agent."""

    job_name: str
    agent_id: str | None = None
    interval_seconds: float | None = None
    cron: str | None = None
    timezone: str = "UTC"
    grace_seconds: float | None = None
    min_bytes: int | None = None
    require_encryption: bool = False
    muted: bool = False


class Overrides:
    """The jobs file's entries by job; an entry naming the agent beats one that does not."""

    def __init__(self, entries: Iterable[JobOverride] = (), changed_at: float | None = None):
        self._entries = {(entry.job_name, entry.agent_id): entry for entry in entries}
        self.changed_at = changed_at  # the file's modification time, if read from a file

    def __len__(self) -> int:
        return len(self._entries)

    def for_job(self, job_name: str, agent_id: str) -> JobOverride | None:
        """Return the entry that applies to this job, or None."""
        return self._entries.get((job_name, agent_id)) or self._entries.get((job_name, None))

    def named_jobs(self) -> list[JobOverride]:
        """Return the entries that name a whole job, agent included: jobs expected to report."""
        return [entry for entry in self._entries.values() if entry.agent_id is not None]


def load_jobs_file(path: str, store_dir: str | None = None) -> Overrides:
    """Read and check the jobs file named by JOBS_FILE; an empty name means there is none."""
    if not path:
        return Overrides()
    where = f"JOBS_FILE {path}"
    file = Path(path)
    if store_dir and Path(store_dir).resolve() in file.resolve().parents:
        raise JobsFileError(f"{where}: must not be inside STORE_DIR, which holds runs only")
    try:
        text = file.read_text(encoding="utf-8")
        changed_at = file.stat().st_mtime
    except FileNotFoundError:
        raise JobsFileError(f"{where}: no such file") from None
    except UnicodeDecodeError:
        raise JobsFileError(f"{where}: not UTF-8 text") from None
    except OSError as exc:
        raise JobsFileError(f"{where}: cannot read it: {exc.strerror}") from None
    too_deep = f"{where}: JSON nested too deeply (a jobs file is a list of flat objects)"
    try:
        # Strict: an infinite interval would never be late.
        data = loads_strict(text, object_pairs_hook=_object_of_unique_keys)
    except RecursionError:  # far deeper nesting exhausts the JSON reader's recursion limit
        raise JobsFileError(too_deep) from None
    except json.JSONDecodeError as exc:
        raise JobsFileError(
            f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except ValueError as exc:
        raise JobsFileError(f"{where}: {exc}") from None
    # Checked before the schema, whose message would quote the value: Python 3.11 runs out
    # of recursion building the repr of a 990-deep object, and 3.12 quotes its braces.
    if _nested_deeper_than(data, MAX_JOBS_FILE_DEPTH):
        raise JobsFileError(too_deep)
    problems = [_explain(error) for error in _jobs_validator().iter_errors(data)]
    if not problems:
        problems = _semantic_problems(data["jobs"])
    if problems:
        raise JobsFileError(f"{where}: {'; '.join(sorted(problems))}")
    fields = JobOverride.__dataclass_fields__
    return Overrides(
        (
            JobOverride(**{key: value for key, value in entry.items() if key in fields})
            for entry in data["jobs"]
        ),
        changed_at,
    )


def _object_of_unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """Build an object of the jobs file, or raise ValueError if it gives a key twice.

    Python's json keeps the last of two equal keys. In a file edited by hand a key given twice
    is a slip (two interval_seconds lines), and which one was meant cannot be told. (Request
    bodies keep the last, as the original API did; see app.parse_json_body.)
    """
    result = dict(pairs)
    if len(result) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                where = ""
                if isinstance(result.get("job_name"), str):
                    where = f" (job_name {_quoted(result['job_name'])})"
                raise ValueError(
                    f"the key {_quoted(key)} appears twice in one object{where}; "
                    "write each key once"
                )
            seen.add(key)
    return result


def _quoted(text: str) -> str:
    """Quote text from the jobs file for a message, as JSON, cut to QUOTED_VALUE_CHARS."""
    if len(text) > QUOTED_VALUE_CHARS:
        text = text[:QUOTED_VALUE_CHARS] + "..."
    return json.dumps(text, ensure_ascii=False)


def _nested_deeper_than(value: object, limit: int) -> bool:
    """Tell whether value nests lists and objects more than limit levels deep."""
    pending = [(value, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict | list):
            if depth > limit:
                return True
            items = value.values() if isinstance(value, dict) else value
            pending.extend((item, depth + 1) for item in items if isinstance(item, dict | list))
    return False


def _jobs_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(JOBS_SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _location(path: Iterable[object]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "the file"


def _explain(error: jsonschema.ValidationError) -> str:
    where = _location(error.absolute_path)
    if error.validator == "not":
        return f"{where}: set interval_seconds or cron, not both"
    if error.validator == "dependentRequired":
        return f"{where}: timezone applies to cron only; add cron or drop timezone"
    # Messages quote the offending value (or key) before the reason: shorten the quote, so
    # that a 300-character job_name still shows "is too long", and keep it on one line.
    message = " ".join(_shorten_quotes(error).split())[:MAX_MESSAGE_CHARS]
    if error.validator == "additionalProperties":
        known = ", ".join(error.schema.get("properties", {}))
        return f"{where}: {message}; known keys are {known}"
    return f"{where}: {message}"


def _shorten_quotes(error: jsonschema.ValidationError) -> str:
    """Return error's message with each long value or unknown key it quotes cut short."""
    message = error.message
    quoted = [repr(error.instance)]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        quoted += [repr(key) for key in error.instance]
    for text in quoted:
        if len(text) > QUOTED_VALUE_CHARS:
            # A closing quote or bracket stays, so the reason reads apart from the value.
            closing = text[-1] if text[-1] in "'\"]})" else ""
            message = message.replace(text, f"{text[:QUOTED_VALUE_CHARS]}...{closing}")
    return message


def _semantic_problems(entries: list[dict]) -> list[str]:
    """What the schema cannot say: valid cron and time zone, and no job listed twice."""
    problems = []
    seen: dict[tuple[str, str | None], int] = {}
    for index, entry in enumerate(entries):
        if "cron" in entry:
            problem = _cron_problem(entry["cron"], entry.get("timezone", "UTC"))
            if problem:
                problems.append(f"jobs[{index}].cron: {entry['cron']!r} {problem}")
        if "timezone" in entry:
            try:
                ZoneInfo(entry["timezone"])
            except (ZoneInfoNotFoundError, ValueError):
                problems.append(
                    f"jobs[{index}].timezone: {entry['timezone']!r} is not a known time zone"
                )
        key = (entry["job_name"], entry.get("agent_id"))
        if key in seen:
            problems.append(f"jobs[{index}]: repeats jobs[{seen[key]}] for the same job")
        seen.setdefault(key, index)
    return problems


def _cron_problem(expression: str, timezone: str) -> str | None:
    """Say why a cron expression cannot be a job's schedule, or return None if it can."""
    if not croniter.is_valid(expression):
        return "is not a cron expression"
    fields = expression.split()
    # croniter also reads a sixth field (seconds) and a seventh (years); crontab has neither.
    if len(fields) != 5 and not expression.startswith("@"):
        return (
            f"has {len(fields)} fields; use 5 (minute hour day month weekday) "
            "or a macro such as @daily"
        )
    # croniter's R draws a new random value at each reading: no schedule to expect.
    if any(RANDOM_CRON_PART.fullmatch(part) for field in fields for part in field.split(",")):
        return "uses R (random), which gives no fixed time to expect a run at"
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")  # a bad time zone gets its own message
    try:
        _crontab(expression, datetime.now(zone), max_years_between_matches=CRON_YEARS).get_next()
    except CroniterBadDateError:
        return f"never fires: no time in the next {CRON_YEARS} years matches it"
    return None


def _crontab(expression: str, moment: datetime, **options) -> croniter:
    """croniter over expression from moment, reading its two day fields as cron does.

    cron matches a day by day of month *or* day of week only when neither field starts with
    '*'; otherwise by both. croniter's default is "or" always: '0 2 */2 * 1' (odd Mondays to
    cron) was expected every odd day too, and the job read late between its runs.
    """
    return croniter(expression, moment, implement_cron_bug=True, **options)


# --- per-job statistics ----------------------------------------------------------------------


def infer_interval(starts: Sequence[float]) -> float | None:
    """Return the median gap between the latest starts (sorted), or None with too few runs."""
    window = starts[-INTERVAL_RUNS:]
    if len(window) < MIN_INTERVAL_RUNS:
        return None
    # Runs that begin at the same moment (two crontab lines under one job name; a script
    # that reports whole seconds) are one start: counted as gaps of 0, half the gaps made the
    # median 0, and such a job stayed "new", never late, however long it stopped reporting.
    distinct = sorted(set(window))
    if len(distinct) < 2:
        return None  # one start time gives no schedule
    return statistics.median(later - earlier for earlier, later in itertools.pairwise(distinct))


# datetime holds the years 1 to 9999 only. Past them croniter and datetime fail with an
# OverflowError, or a ValueError ("year 10000 is out of range"); a run reported at either end
# of the calendar then has no slot to serve or to expect, which is no reason to fail.
_OUT_OF_CALENDAR = (OverflowError, ValueError)


def cron_schedule(
    expression: str, timezone: str, last_start: float
) -> tuple[float | None, float | None]:
    """Return (next expected start, interval) of a cron job whose latest run began at last_start.

    A run is taken to serve the cron slot nearest its start, so a run that began a little
    early or late still expects the slot after that one, not the one it just ran for.
    Both are None when a slot they need lies outside the years 1 to 9999.
    """
    zone = ZoneInfo(timezone)
    try:
        # From the timestamp, not start + timedelta: adding to an aware time drops its fold,
        # which puts a start in the hour that repeats when clocks go back an hour early.
        before = _crontab(expression, datetime.fromtimestamp(last_start + 1, zone)).get_prev(
            datetime
        )
        after = _next_slot(expression, before)
        # Distances in real seconds: times of one zone subtract as wall-clock times.
        nearer_before = last_start - before.timestamp() <= after.timestamp() - last_start
        return cron_slots(expression, before if nearer_before else after)
    except _OUT_OF_CALENDAR:
        return None, None


def cron_slots(expression: str, moment: datetime) -> tuple[float, float]:
    """Return (the first cron slot after moment, the seconds from it to the slot after that)."""
    expected = _next_slot(expression, moment)
    following = _next_slot(expression, expected)
    return expected.timestamp(), following.timestamp() - expected.timestamp()


def _next_slot(expression: str, moment: datetime) -> datetime:
    """Return the first cron slot after moment, counting a wall-clock time once.

    When clocks go back, croniter yields a slot in the repeated hour twice (02:30 summer
    time, then 02:30 winter time); cron runs such a job once. Expecting the second made a
    daily job late an hour after its run, and gave it a zero interval, so a five-minute grace.
    """
    slots = _crontab(expression, moment)
    slot = slots.get_next(datetime)
    # Every slot of the hour's second pass, not only the first: with 0,30 2 * * * the job
    # ran at 02:00 and 02:30 summer time, and 02:30 winter time was expected all the same.
    while slot.fold == 1 and slot.replace(fold=0).utcoffset() != slot.utcoffset():
        slot = slots.get_next(datetime)
    return slot


def schedule_of(
    starts: Sequence[float], override: JobOverride | None
) -> tuple[str, float | None, float | None, float | None]:
    """Return (source, interval, next expected start, grace) from sorted starts and the file.

    The source is "cron" or "interval" when the jobs file sets it, else "inferred".
    """
    last_start = starts[-1]
    source = declared_schedule(override)
    if source == "cron":
        expected, interval = cron_schedule(override.cron, override.timezone, last_start)
    else:
        if source == "interval":
            interval = float(override.interval_seconds)
        else:
            interval = infer_interval(starts)
        expected = None if interval is None else last_start + interval
        if expected is not None and expected > LAST_TIMESTAMP:
            # Past the year 9999 there is no RFC 3339 time to show, and no clock will get
            # there: no next start is expected, so the job is never late.
            expected = None
    if interval is None:
        return source, None, None, None
    return source, interval, expected, grace_of(interval, override)


def declared_schedule(override: JobOverride | None) -> str:
    """Return where a job's schedule comes from: "cron" or "interval" (the file), or "inferred"."""
    if override is not None and override.cron is not None:
        return "cron"
    if override is not None and override.interval_seconds is not None:
        return "interval"
    return "inferred"


def grace_of(interval: float, override: JobOverride | None) -> float:
    """Return how long past its expected start a job may be before it is late."""
    if override is not None and override.grace_seconds is not None:
        return float(override.grace_seconds)
    return max(interval / 2, MIN_GRACE_SECONDS)


def first_schedule(
    override: JobOverride, since: float
) -> tuple[str, float | None, float | None, float | None]:
    """Return (source, interval, first expected start, grace) of a job that never reported.

    Its first run is expected one interval after since (when the registry began to expect
    it), or at the first cron slot after since; with no schedule set, none is expected.
    """
    source = declared_schedule(override)
    if source == "cron":
        try:
            since_there = datetime.fromtimestamp(since, ZoneInfo(override.timezone))
            expected_ts, interval = cron_slots(override.cron, since_there)
        except _OUT_OF_CALENDAR:
            return source, None, None, None
    elif source == "interval":
        interval = float(override.interval_seconds)
        expected_ts = since + interval
    else:
        return source, None, None, None
    return source, interval, expected_ts, grace_of(interval, override)


def reference_runs(earlier: list[RunSummary]) -> list[RunSummary]:
    """Return the runs a latest run is judged against: its last successes that have a size."""
    reference = []
    for run in reversed(earlier):
        if run.status == "success" and run.bytes_backed_up is not None:
            reference.append(run)
            if len(reference) == REFERENCE_RUNS:
                break
    return reference


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Return a percentile by linear interpolation between closest ranks, or None if empty."""
    if not sorted_values:
        return None
    position = (len(sorted_values) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _twice_median(values: list[int]) -> int:
    """Twice the median, so that sizes up to 2**63 compare exactly, without floats."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return 2 * ordered[middle]
    return ordered[middle - 1] + ordered[middle]


def _duration_us(run: RunSummary) -> int:
    """A run's duration in whole microseconds, exact as its times were written.

    Near 1.8e9 seconds a float keeps about 0.2 us, so each time rounds back to the microsecond
    it was given, where their difference in seconds does not (0.3 s came out as 0.29999995).
    """
    return round(run.end_ts * 1_000_000) - round(run.start_ts * 1_000_000)


def _half(number: int) -> int | float:
    """Half an integer, exact when it is even: a float has 53 bits, and sizes go up to 2**63."""
    return number // 2 if number % 2 == 0 else number / 2


def run_flags(
    latest: RunSummary, reference: list[RunSummary], override: JobOverride | None
) -> list[str]:
    """Return the flags of a job's latest run, judged against earlier successful runs."""
    flags = []
    size = latest.bytes_backed_up
    enough = len(reference) >= MIN_REFERENCE_RUNS
    if size is not None:
        # size < median / 2, in whole numbers
        below_half = enough and 4 * size < _twice_median([run.bytes_backed_up for run in reference])
        minimum = override.min_bytes if override is not None else None
        if below_half or (minimum is not None and size < minimum):
            flags.append("size_drop")
    if enough:
        # In whole microseconds, as sizes are compared in whole bytes: exactly a quarter or
        # four times is no anomaly, and float seconds since 1970 missed that by a hair.
        twice_typical = _twice_median([_duration_us(run) for run in reference])
        duration = _duration_us(latest)
        # A zero median gives no scale to be a quarter or four times of.
        if twice_typical > 0 and (8 * duration < twice_typical or duration > 2 * twice_typical):
            flags.append("duration_anomaly")
    required = override is not None and override.require_encryption
    if (
        latest.encrypted is False
        or latest.encryption_status in UNENCRYPTED_STATUSES
        or (required and latest.encrypted is not True)
    ):
        flags.append("unencrypted")
    return flags


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def utc_moment(timestamp: float) -> datetime:
    """Return Unix seconds as an aware UTC datetime, for any time a run may report."""
    if timestamp >= LAST_TIMESTAMP:
        # A run time in the last second of 9999 may round up to here as a float: undo that.
        return datetime.max.replace(tzinfo=UTC)
    return datetime.fromtimestamp(timestamp, UTC)


def _at(timestamp: float | None) -> str | None:
    return None if timestamp is None else format_timestamp(utc_moment(timestamp))


def _number(value: float | None) -> float | int | None:
    """Show whole numbers of seconds or bytes without a '.0'."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass(slots=True)
class JobSummary:
    """One job as /v1/jobs shows it; attributes are JSON-ready. Treat it as read only."""

    job_name: str
    agent_id: str
    state: str
    unmuted_state: str
    success_rate_7d: float | None
    success_rate_30d: float | None
    flags: list[str]
    muted: bool
    runs: int
    last_success_at: str | None
    last_failure_at: str | None
    duration_p50_seconds: float | int | None
    duration_p95_seconds: float | int | None
    last_bytes: int | None
    median_bytes: float | int | None
    expected_interval_seconds: float | int | None
    next_expected_at: str | None
    grace_seconds: float | int | None
    schedule: str
    last_run: dict | None

    def to_dict(self) -> dict:
        """Return the JSON object /v1/jobs answers for this job."""
        return {name: getattr(self, name) for name in JobSummary.__dataclass_fields__}


STATE_RANK = {state: rank for rank, state in enumerate(STATES)}


def believed_start(run: RunSummary) -> float:
    """When job monitoring takes a run to have begun: its start_time, but not after its report.

    A report cannot arrive before its run began, so a later start_time is an agent's clock
    running ahead (a year, after a flat clock battery, say). Believed, it made that run the
    job's latest until then and pushed the next expected run past it: never late meanwhile.
    """
    return min(run.start_ts, run.received_us / 1_000_000)


def believed_end(run: RunSummary) -> float:
    """When job monitoring takes a run to have ended: its end_time, but not after its report.

    As for believed_start: an end_time a year ahead made the job's last success a year away,
    so an alert on time() - backup_last_success_timestamp_seconds stayed silent that long.
    """
    return min(run.end_ts, run.received_us / 1_000_000)


def _start_order(run: RunSummary) -> tuple:
    return (believed_start(run), run.received_us, run.run_id)


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class JobStats:
    """What a job's runs say, computed once per change of the job: all but the time-dependent.

    A job named in the jobs file that has never reported has no runs: no latest run, and a
    first run expected after `since` (see first_schedule). Without figures, only the runs
    themselves are told: their count, success rates and latest run (see JobMonitor).
    """

    def __init__(
        self,
        job: tuple[str, str],
        version: int | None,
        runs: list[RunSummary],
        override: JobOverride | None,
        last_run: dict | None,
        since: float | None = None,
        *,
        figures: bool = True,
    ):
        runs = sorted(runs, key=_start_order)
        self.job_name, self.agent_id = job
        self.version = version
        self.count = len(runs)
        self.latest = latest = runs[-1] if runs else None
        self.last_run = last_run
        self.muted = override is not None and override.muted
        # Compact arrays: at a million runs a list of floats would cost four times the memory.
        self.starts = array("d", (believed_start(run) for run in runs))
        # successes[i] counts the successes among the first i runs, so a window is two bisects.
        self.successes = array(
            "q", itertools.accumulate((run.status == "success" for run in runs), initial=0)
        )
        if figures:
            self.last_success = _latest_end(runs, "success")
            self.last_failure = _latest_end(runs, "failure")
            durations = sorted(run.end_ts - run.start_ts for run in runs[-DURATION_RUNS:])
            # Milliseconds are plenty, and spare the reader 293.99999999999994.
            self.duration_p50 = _rounded(percentile(durations, 0.5))
            self.duration_p95 = _rounded(percentile(durations, 0.95))
            reference = reference_runs(runs[:-1])
            self.median_bytes = (
                _half(_twice_median([run.bytes_backed_up for run in reference]))
                if reference
                else None
            )
            self.flags = run_flags(latest, reference, override) if latest is not None else []
            self.schedule, self.interval, self.next_expected, self.grace = (
                schedule_of(self.starts, override) if runs else first_schedule(override, since)
            )
        else:
            self.last_success = self.last_failure = None
            self.duration_p50 = self.duration_p95 = self.median_bytes = None
            self.flags = []
            self.schedule = declared_schedule(override)
            self.interval = self.next_expected = self.grace = None
        self.head = {"job_name": self.job_name, "agent_id": self.agent_id}
        # Everything in the JSON that does not depend on the time, formatted once per change.
        self.rest = {
            "flags": self.flags,
            "muted": self.muted,
            "runs": self.count,
            "last_success_at": _at(self.last_success),
            "last_failure_at": _at(self.last_failure),
            "duration_p50_seconds": _number(self.duration_p50),
            "duration_p95_seconds": _number(self.duration_p95),
            "last_bytes": None if latest is None else latest.bytes_backed_up,
            "median_bytes": self.median_bytes,
            "expected_interval_seconds": _number(self.interval),
            "next_expected_at": _at(self.next_expected),
            "grace_seconds": _number(self.grace),
            "schedule": self.schedule,
        }
        # last_run is most of the answer's bytes: encode it once, and close the object with it.
        self.json_tail = ',"last_run":' + _dumps(last_run) + "}"
        self._json: tuple[tuple, str] | None = None

    @property
    def job(self) -> tuple[str, str]:
        """This job's (job_name, agent_id)."""
        return (self.job_name, self.agent_id)

    def state(self, now_ts: float) -> tuple[str, str]:
        """Return (state, state the job would have if it were not muted) at now_ts."""
        if self.next_expected is not None and now_ts > self.next_expected + self.grace:
            state = "late"
        elif self.latest is None:
            state = "new"  # never reported, and not overdue (yet)
        elif self.latest.status != "success":
            state = STATE_OF_STATUS[self.latest.status]
        elif self.interval is None:
            state = "new"
        else:
            state = "ok"
        return ("muted" if self.muted else state), state

    def success_rate(self, since_ts: float) -> float | None:
        """Return the share of runs started at or after since_ts that succeeded, or None."""
        first = bisect_left(self.starts, since_ts)
        total = self.count - first
        if total == 0:
            return None
        return round((self.successes[-1] - self.successes[first]) / total, 4)

    def moment(self, now_ts: float) -> tuple[str, str, float | None, float | None]:
        """Return what depends on the time: (state, unmuted state, 7-day and 30-day rates)."""
        return (
            *self.state(now_ts),
            self.success_rate(now_ts - 7 * DAY),
            self.success_rate(now_ts - 30 * DAY),
        )

    def row(self, moment: tuple) -> dict:
        """Return the job's JSON fields, all but last_run, in the answer's order."""
        state, unmuted, rate_7d, rate_30d = moment
        return {
            **self.head,
            "state": state,
            "unmuted_state": unmuted,
            "success_rate_7d": rate_7d,
            "success_rate_30d": rate_30d,
            **self.rest,
        }

    def json(self, moment: tuple) -> str:
        """Return the job's JSON object; it is encoded again only when moment changed."""
        cached = self._json  # one read: another thread may replace it meanwhile
        if cached is None or cached[0] != moment:
            # Each object is closed by the job's cached last_run text, not by encoding it again.
            cached = (moment, _dumps(self.row(moment))[:-1] + self.json_tail)
            self._json = cached
        return cached[1]


def _latest_end(runs: list[RunSummary], status: str) -> float | None:
    for run in reversed(runs):
        if run.status == status:
            return believed_end(run)
    return None


def parse_states(values: list[str]) -> tuple[str, ...]:
    """Turn `state` query values such as ['late,failing'] into states; raise ValueError if bad.

    state=late&state=failing means both, as state=late,failing does (and as status does for
    listings): reading only the first value left out the failing jobs without a word.
    """
    states = comma_separated(values)
    unknown = [state for state in states if state not in STATE_RANK]
    if unknown:
        raise ValueError(f"state: unknown value {unknown[0]!r}; use {', '.join(STATES)}")
    return states


class JobMonitor:
    """Keeps every job's statistics current with the store, recomputing only changed jobs.

    Jobs the jobs file names (agent included) are listed even before their first report;
    `since` is when the registry began to expect them (see expected_since).
    """

    def __init__(self, store: RunStore, overrides: Overrides | None = None, since: float = 0.0):
        self.store = store
        self.overrides = overrides or Overrides()
        self.since = since
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, str], JobStats] = {}
        # job -> ((its statistics' version, run id), flags): see flags_of
        self._row_flags: dict[tuple[str, str], tuple[tuple, list[str]]] = {}
        self._seen_version: int | None = None

    def snapshot(self) -> tuple[int | None, list[JobStats]]:
        """Return (generation, every job's statistics), refreshing the jobs whose runs changed.

        Equal generations mean equal statistics; None means "do not cache on this one".
        """
        with self._lock:
            # Read the store's version before the job counters: a change in between only makes
            # the next call look again.
            version = self.store.version
            if version != self._seen_version:
                complete = self._refresh()
                self._seen_version = version if complete else None
            return self._seen_version, list(self._stats.values())

    def stats(self) -> list[JobStats]:
        """Return the current statistics of every job."""
        return self.snapshot()[1]

    def _refresh(self) -> bool:
        """Recompute the jobs whose counter moved; return False if one must be looked at again."""
        complete = True
        versions = self.store.job_versions()
        expected = {(entry.job_name, entry.agent_id) for entry in self.overrides.named_jobs()}
        for gone in self._stats.keys() - versions.keys():
            self._row_flags.pop(gone, None)
            if self._stats[gone].count or gone not in expected:  # else still never reported
                del self._stats[gone]
        for job, version in versions.items():
            cached = self._stats.get(job)
            if cached is not None and cached.version == version:
                continue
            runs = self.store.job_runs(job)
            if not runs:
                self._stats.pop(job, None)
                continue
            try:
                last_run = self.store.get(max(runs, key=_start_order).run_id)
            except RunNotFound:
                # Deleted since the index was read: keep what we know, and look again next time.
                last_run, version, complete = None, None, False
            override = self.overrides.for_job(*job)
            self._stats[job] = self._job_stats(job, version, runs, override, last_run)
        # Built once and kept while the job has no run, not again at every change of the store.
        for override in self.overrides.named_jobs():
            job = (override.job_name, override.agent_id)
            if job not in self._stats:
                self._stats[job] = self._job_stats(job, None, [], override, None, self.since)
        return complete

    def flags_of(self, run: RunSummary) -> list[str]:
        """Return the flags run would have as its job's latest, judged by the runs before it.

        The dashboard's row shows a job's latest run by end_time, job monitoring judges the
        latest by start_time; when runs overlap they differ, and a row's flags must be about
        the run it shows. Kept until the job's runs change: judging sorts all of them.
        """
        job = run.job
        with self._lock:
            stats = self._stats.get(job)
            key = (stats.version if stats else None, run.run_id)
            known = self._row_flags.get(job)
        if known is not None and known[0] == key and key[0] is not None:
            return known[1]
        order = _start_order(run)
        try:
            earlier = sorted(
                (other for other in self.store.job_runs(job) if _start_order(other) < order),
                key=_start_order,
            )
            flags = run_flags(run, reference_runs(earlier), self.overrides.for_job(*job))
        except Exception:
            # As in _job_stats: one job's odd runs must not make the dashboard fail. Kept
            # like a result, so logged once per change of the job.
            log.exception("job %r on agent %r: cannot judge run %r", *job, run.run_id)
            flags = stats.flags if stats else []
        with self._lock:
            self._row_flags[job] = (key, flags)
        return flags

    @staticmethod
    def _job_stats(*args) -> JobStats:
        """Return JobStats(*args), or only what the job's runs say if its figures fail."""
        try:
            return JobStats(*args)
        except Exception:
            # One job's odd runs must not make /v1/jobs, /metrics and the dashboard fail for
            # every job. Logged once: the result is kept until the job's runs change. %r
            # escapes line breaks and control characters in the names.
            log.exception(
                "job %r on agent %r: cannot compute its figures; listing it without them", *args[0]
            )
            return JobStats(*args, figures=False)

    def moments(self, now: datetime, states: Iterable[str] = ()) -> list[tuple[JobStats, tuple]]:
        """Return (statistics, moment) per job at now, worst state first, then newest run."""
        now_ts = now.timestamp()
        pairs = [(stats, stats.moment(now_ts)) for stats in self.stats()]
        wanted = set(states)
        if wanted:
            pairs = [(stats, moment) for stats, moment in pairs if moment[0] in wanted]
        # Within a state, the job that never reported comes first: it is the least expected.
        pairs.sort(
            key=lambda pair: (
                STATE_RANK[pair[1][0]],
                -math.inf if pair[0].latest is None else -believed_start(pair[0].latest),
                pair[0].job_name,
                pair[0].agent_id,
            )
        )
        return pairs

    def summaries(self, now: datetime, states: Iterable[str] = ()) -> list[JobSummary]:
        """Return every job's summary at now, worst state first, ties most recent run first."""
        return [
            JobSummary(**stats.row(moment), last_run=stats.last_run)
            for stats, moment in self.moments(now, states)
        ]

    def to_json(self, now: datetime, states: Iterable[str] = ()) -> str:
        """Return the /v1/jobs answer: the summaries as one JSON array."""
        return (
            "[" + ",".join(stats.json(moment) for stats, moment in self.moments(now, states)) + "]"
        )


def job_summaries(app: Flask, now: datetime, states: Iterable[str] = ()) -> list[JobSummary]:
    """Return the summaries of the app's jobs at now (for the dashboard), worst first."""
    return app.extensions["jobs"].summaries(now, states)


# --- Prometheus ------------------------------------------------------------------------------

LABELS = ["job_name", "agent_id"]


class JobCollector:
    """A Prometheus collector over a snapshot of the jobs' statistics, taken at now_ts."""

    def __init__(self, stats: list[JobStats], now_ts: float):
        self._stats = stats
        self._now_ts = now_ts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """Yield one gauge family per metric, one sample per job (and per flag)."""

        def gauge(name: str, text: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=[*LABELS, *extra])

        last_time = gauge("backup_last_run_timestamp_seconds", "End time of the latest run.")
        success = gauge("backup_last_run_success", "Latest run: 1 success, 0.5 partial, 0 failure.")
        duration = gauge("backup_last_run_duration_seconds", "Duration of the latest run.")
        size = gauge("backup_last_run_bytes", "Bytes backed up by the latest run.")
        last_success = gauge(
            "backup_last_success_timestamp_seconds", "End time of the latest successful run."
        )
        late = gauge("backup_job_late", "1 if the job is late (and not muted), else 0.")
        interval = gauge(
            "backup_job_expected_interval_seconds", "Expected time between two starts."
        )
        flag = gauge("backup_job_flag", "1 if the latest run has this flag, else 0.", ("flag",))
        muted = gauge("backup_job_muted", "1 if the jobs file mutes the job, else 0.")
        for stats in sorted(self._stats, key=lambda stats: stats.job):
            labels = list(stats.job)
            latest = stats.latest
            if latest is not None:  # else a job of the jobs file that never reported
                last_time.add_metric(labels, believed_end(latest))
                success.add_metric(labels, SUCCESS_VALUE[latest.status])
                duration.add_metric(labels, latest.end_ts - latest.start_ts)
                if latest.bytes_backed_up is not None:
                    size.add_metric(labels, latest.bytes_backed_up)
            if stats.last_success is not None:
                last_success.add_metric(labels, stats.last_success)
            late.add_metric(labels, float(stats.state(self._now_ts)[0] == "late"))
            if stats.interval is not None:
                interval.add_metric(labels, stats.interval)
            for name in FLAGS:
                flag.add_metric([*labels, name], float(name in stats.flags))
            muted.add_metric(labels, float(stats.muted))
        yield from (last_time, success, duration, size, last_success, late, interval, flag, muted)


class MetricsPage:
    """Renders /metrics with prometheus_client, reusing the last text while nothing changed.

    Formatting is prometheus_client's work and costs some microseconds a sample; with 500 jobs
    that is most of the budget, so the text is kept until a run changes or a job turns late.
    """

    def __init__(self, monitor: JobMonitor):
        self._monitor = monitor
        self._last: tuple[tuple, bytes] | None = None

    def render(self, now: datetime, accept: str) -> tuple[bytes, str]:
        """Return (body, content type) for a scrape with this Accept header."""
        try:
            encoder, content_type = choose_encoder(accept)
        except (TypeError, ValueError):
            # prometheus_client compares the version parameter as numbers, and fails on one like
            # "abc" or a quoted "1.0.0". Every scraper reads the plain text format (Prometheus
            # lists it as its fallback), and the Content-Type says which it got: better than a
            # 406, which would turn one odd header into a failed scrape.
            encoder, content_type = generate_latest, CONTENT_TYPE_PLAIN_0_0_4
        generation, stats = self._monitor.snapshot()
        now_ts = now.timestamp()
        late = frozenset(job.job for job in stats if job.state(now_ts)[0] == "late")
        key = (generation, late, content_type)
        last = self._last  # one read: another thread may replace it meanwhile
        if generation is not None and last is not None and last[0] == key:
            return last[1], content_type
        registry = CollectorRegistry(auto_describe=False)
        registry.register(JobCollector(stats, now_ts))
        body = encoder(registry)
        self._last = (key, body)
        return body, content_type


# --- HTTP ------------------------------------------------------------------------------------


def expected_since(overrides: Overrides, now: float) -> float:
    """Return when the jobs file's entries began to be expected: when it last changed.

    Not when this process started: a registry restarted more often than a job's interval
    plus grace would never call a job that never reported late. A file time in the future
    (a skewed clock, a copy from another machine) counts as now.
    """
    if overrides.changed_at is None:
        return now
    return min(overrides.changed_at, now)


def register(app: Flask, overrides: Overrides | None = None) -> None:
    """Add GET /v1/jobs and GET /metrics to app, over its store and the jobs file's overrides."""
    # The clock is read only when some job is expected: a test's clock may tick per reading.
    expecting = overrides is not None and overrides.named_jobs()
    since = expected_since(overrides, app.config["CLOCK"]().timestamp()) if expecting else 0.0
    monitor = JobMonitor(app.extensions["store"], overrides, since)
    app.extensions["jobs"] = monitor
    page = MetricsPage(monitor)

    @app.get("/v1/jobs")
    def list_jobs() -> Response:
        try:
            states = parse_states(request.args.getlist("state"))
        except ValueError as exc:
            # The app's HTTP error handler answers this in the one error shape.
            raise BadRequest(str(exc)) from None
        body = monitor.to_json(app.config["CLOCK"](), states)
        return Response(body + "\n", mimetype="application/json")

    @app.get("/metrics")
    def metrics() -> Response:
        body, content_type = page.render(app.config["CLOCK"](), request.headers.get("Accept", ""))
        return Response(body, content_type=content_type)
