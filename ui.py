"""The operator dashboard: overview, job history, run pages and API docs, rendered on the server."""

from __future__ import annotations

import itertools
import json
import math
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    render_template,
    request,
    url_for,
)

import jobs
from store import (
    STATUSES,
    InvalidRunId,
    RunNotFound,
    RunStore,
    RunSummary,
    comma_separated,
    parse_timestamp,
)

bp = Blueprint("ui", __name__)

HISTORY_PAGE_SIZE = 50
CHART_MAX_RUNS = 120
CHART_MAX_LABELS = 12
# Between two marks' words, in the chart's units (1,000 wide): 'partial' in 10.5 px bold takes
# about 40, and a word at either edge is anchored to one side of its mark, not centred on it.
CHART_LABEL_SPACING = 64
ERROR_PREVIEW_CHARS = 90

# Without 'unsafe-inline' anywhere, an injected <script> or style attribute cannot run; the
# one script is a static file. frame-ancestors backs up X-Frame-Options in newer browsers.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# Lower sorts first in the default "needs attention" order.
# Job monitoring's states, worst first; a job without one sorts with "ok".
STATE_RANK = {state: rank for rank, state in enumerate(jobs.STATES)}


def register(app: Flask) -> None:
    """Add the dashboard pages, their per-job cache and the security headers to app."""
    app.extensions["ui_jobs"] = LatestRuns(app.extensions["store"])
    # Globals, unlike context variables, reach macros imported from _macros.html.
    for function in (*TEMPLATE_GLOBALS, request_now):
        app.add_template_global(function)
    app.register_blueprint(bp)
    app.after_request(add_security_headers)


def add_security_headers(response: Response) -> Response:
    """Set the browser-hardening headers on every response, unless a view chose its own."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.endpoint != "static":
        # Answers behind auth, about runs that may be deleted: kept in a browser's cache, the
        # Back button after a Delete showed the deleted run again. The static files are the
        # same for everyone, and keep Flask's revalidation.
        response.headers.setdefault("Cache-Control", "no-store")
    return response


# --- the per-job cache -----------------------------------------------------------------------


@dataclass
class JobRow:
    """One job on the overview: its latest run by end_time and how many runs it has."""

    job_name: str
    agent_id: str
    latest: RunSummary
    run_count: int
    # From job monitoring (jobs.py), copied in per request by with_monitoring: a state such
    # as "late", flags such as "size_drop". The cached rows keep the defaults.
    state: str | None = None
    flags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def job(self) -> tuple[str, str]:
        """The job key: (job_name, agent_id)."""
        return (self.job_name, self.agent_id)

    @property
    def encryption(self) -> str:
        """Return unencrypted, encrypted or unknown: what the cards, filter and order go by.

        Unencrypted if the run says so or job monitoring flags it: a job the jobs file says
        must be encrypted is flagged while its run does not say it was.
        """
        if self.latest.encrypted is False or "unencrypted" in self.flags:
            return "unencrypted"
        return "unknown" if self.latest.encrypted is None else "encrypted"

    @property
    def state_adds_to_status(self) -> bool:
        """Tell whether the row's state says more than its run's status badge, so needs one.

        late, new and muted always do. failing, degraded and ok only repeat the status, unless
        runs overlap: then job monitoring judged another run (the latest by start_time), and
        a row showing "Success" for a job /v1/jobs calls failing would hide the failure.
        """
        if self.state in ("late", "new", "muted"):
            return True
        return jobs.STATE_OF_STATUS.get(self.latest.status) != self.state and self.state is not None

    @property
    def shown_flags(self) -> tuple[str, ...]:
        """The flags worth a badge: "unencrypted" only if the encryption badge does not say it."""
        if self.latest.encrypted is False:
            return tuple(flag for flag in self.flags if flag != "unencrypted")
        return self.flags


def latest_first_key(summary: RunSummary) -> tuple:
    """Sort key under which the latest run by end_time is the largest; ties by arrival, id.

    As in job monitoring (jobs.believed_start), a run never counts as ending after its report
    arrived: a later end_time is an agent's clock running ahead, and believed, a run reported
    a year early stayed its job's row for a year, hiding every failure after it.
    """
    believed_end = min(summary.end_ts, summary.received_us / 1_000_000)
    return (believed_end, summary.received_us, summary.run_id)


class LatestRuns:
    """Each job's latest run and run count, recomputed only for jobs whose runs changed.

    The store bumps a job's counter on every change to its runs, so comparing counters finds
    the few jobs to look at again; an unchanged store costs one dict comparison per request.
    """

    def __init__(self, store: RunStore):
        self._store = store
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, str], int] = {}
        self._rows: dict[tuple[str, str], JobRow] = {}

    def rows(self) -> list[JobRow]:
        """Return one row per job, current with the store."""
        versions = self._store.job_versions()
        with self._lock:
            if versions != self._versions:
                for gone in self._rows.keys() - versions.keys():
                    del self._rows[gone]
                for job, version in versions.items():
                    if self._versions.get(job) != version:
                        self._recompute(job)
                # A change after the snapshot bumps the counter again, so the next call
                # looks at that job once more: nothing is missed, at worst done twice.
                self._versions = versions
            return list(self._rows.values())

    def _recompute(self, job: tuple[str, str]) -> None:
        runs = self._store.job_runs(job)
        if runs:
            latest = max(runs, key=latest_first_key)
            self._rows[job] = JobRow(job[0], job[1], latest, len(runs))
        else:
            self._rows.pop(job, None)


def with_monitoring(rows: list[JobRow]) -> tuple[list[JobRow], bool, list[jobs.JobSummary]]:
    """Add each job's state and flags from job monitoring (jobs.py), when the app runs it.

    Rows are copied, so the cached ones stay as they are. The second value tells whether
    monitoring answered, and with it whether the page shows states and the late card. The
    third lists the jobs the jobs file names that have never reported and are not muted, worst
    state first.
    """
    if "jobs" not in current_app.extensions:
        return rows, False, []
    summaries = jobs.job_summaries(current_app, request_now())
    by_job = {(summary.job_name, summary.agent_id): summary for summary in summaries}
    monitored = []
    for row in rows:
        summary = by_job.get(row.job)
        if summary is not None:
            flags = summary.flags
            if (summary.last_run or {}).get("run_id") != row.latest.run_id:
                flags = current_app.extensions["jobs"].flags_of(row.latest)  # runs overlap
            row = replace(row, state=summary.state, flags=tuple(flags))
        monitored.append(row)
    # A muted job needs no one's attention, reported or not.
    never_reported = [job for job in summaries if job.runs == 0 and job.state != "muted"]
    return monitored, True, never_reported


# --- formatting ------------------------------------------------------------------------------


def format_size(size: int | None, *, trim: bool = False) -> str:
    """Return a byte count in binary units: 512 B, 1.50 KiB, 3.20 GiB (trim: 3.2 GiB, 4 GiB)."""
    if size is None:
        return "—"
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        value /= 1024
        number = _three_significant_digits(value)
        # Judged after rounding: 1,048,575 bytes is "1.00 MiB", not "1024 KiB".
        if float(number) < 1024 or unit == "EiB":
            break
    if trim and "." in number:
        number = number.rstrip("0").rstrip(".")
    return f"{number} {unit}"


def _three_significant_digits(value: float) -> str:
    """Format a value of 1 or more as 1.23, 12.3 or 123, the digits counted after rounding."""
    number = f"{value:.2f}"
    if float(number) >= 10:
        number = f"{value:.1f}"  # 9.999 is "10.0", not "10.00"
    if float(number) >= 100:
        number = f"{value:.0f}"
    return number


def format_duration(seconds: float | None) -> str:
    """Return a duration for people: 45 s, 4 min 33 s, 2 min, 1 h 02 min, 2 d 3 h."""
    if seconds is None or seconds < 0:
        return "—"
    whole = round(seconds)
    if whole < 60:
        tenths = round(seconds, 1)  # 9.96 s is "10 s", not "10.0 s"
        return f"{tenths:.1f} s" if tenths < 10 and tenths != whole else f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def format_utc(timestamp: float, *, zone: bool = True) -> str:
    """Return an epoch time as 2026-05-12 02:00 UTC (without " UTC" where a header says it)."""
    # Not strftime: glibc's %Y writes the year 139 as "139" (see store.format_timestamp).
    text = jobs.utc_moment(timestamp).replace(tzinfo=None).isoformat(" ", timespec="minutes")
    return text + " UTC" if zone else text


def iso_utc(timestamp: float) -> str:
    """Return an epoch time as RFC 3339 UTC, for <time datetime="...">."""
    return jobs.utc_moment(timestamp).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def format_age(timestamp: float, now: float) -> str:
    """Return how long ago timestamp was, coarsely: just now, 5 min ago, 3 h ago, 12 d ago."""
    delta = now - timestamp
    if delta < 0:
        return "in the future"  # a client clock ahead of ours; say so rather than hide it
    if delta < 60:
        return "just now"
    if delta < 3600:
        return f"{int(delta // 60)} min ago"
    if delta < 48 * 3600:
        return f"{int(delta // 3600)} h ago"
    return f"{int(delta // 86400)} d ago"


def shorten(text: str | None, limit: int = ERROR_PREVIEW_CHARS) -> str:
    """Return text cut to limit characters on one line, with an ellipsis if it was longer."""
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def encryption_label(encrypted: bool | None, encryption_status: str | None) -> str:
    """Return the encryption badge's text: encrypted, unencrypted, encryption failed, unknown."""
    if encrypted is True:
        return "encrypted"
    if encrypted is False:
        if encryption_status in ("partial", "failed"):
            return f"encryption {encryption_status}"
        return "unencrypted"
    return "unknown"


def is_web_url(value: object) -> bool:
    """Tell whether value is an http(s) URL, the only kind the run page makes a link of."""
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def age(timestamp: float) -> str:
    """Return how long before this request timestamp was (for templates)."""
    return format_age(timestamp, request_now().timestamp())


def request_now() -> datetime:
    """Return the app clock's time, read once per request so every row is aged alike."""
    if "ui_now" not in g:
        g.ui_now = current_app.config["CLOCK"]()
    return g.ui_now


# The text-direction characters schema.json refuses in a report; a file copied in may hold them.
DIRECTION_CONTROLS = dict.fromkeys(
    map(ord, "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
)


def isolated(text: str) -> str:
    """Wrap text in a first-strong isolate (U+2068 ... U+2069), for a page's title.

    CSS isolates stored text on the page, but a title is plain text: a U+202E in a job name
    copied into the store reversed ' on db-01 · Backup Registry' after it in the tab. The
    text's own direction controls are dropped first: a U+2069 among them ended the isolate.
    """
    return f"\u2068{text.translate(DIRECTION_CONTROLS)}\u2069"


TEMPLATE_GLOBALS = (
    isolated,
    format_size,
    format_duration,
    format_utc,
    iso_utc,
    shorten,
    encryption_label,
    age,
)


def _store() -> RunStore:
    return current_app.extensions["store"]


# --- the overview ----------------------------------------------------------------------------


_CALENDAR_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)  # what <input type=date> shows


@dataclass
class OverviewFilters:
    """What the overview's filter form asks for; problems lists the values it had to ignore."""

    agent: str = ""
    job: str = ""
    statuses: tuple[str, ...] = ()
    encryption: str = ""
    states: tuple[str, ...] = ()  # job monitoring's states, such as late; only when it runs
    since: datetime | None = None
    until: datetime | None = None
    since_text: str = ""
    until_text: str = ""
    problems: list[str] = field(default_factory=list)

    def input_type(self, name: str) -> str:
        """Return the type of the form's field for since or until: 'date' for a calendar date
        (or none), 'text' for any other form, which a date picker could not show.

        A week date (2026-W48-1) went into a date picker, which showed it empty and sent it
        back empty at the next change of a menu: the filter was dropped without a word.
        """
        text = getattr(self, f"{name}_text")
        return "date" if not text or _CALENDAR_DATE.fullmatch(text) else "text"

    @property
    def active(self) -> bool:
        """Whether any filter narrows the list."""
        return bool(
            self.agent
            or self.job
            or self.statuses
            or self.encryption
            or self.states
            or self.since
            or self.until
        )

    def keep(self, row: JobRow) -> bool:
        """Tell whether row passes every filter."""
        latest = row.latest
        if not self._keeps_job(row.job_name, row.agent_id, row.state):
            return False
        if self.statuses and latest.status not in self.statuses:
            return False
        if self.encryption and row.encryption != self.encryption:
            return False
        if self.since and latest.start_ts < self.since.timestamp():
            return False
        return not (self.until and latest.start_ts >= self.until.timestamp())

    def keep_unreported(self, job: jobs.JobSummary) -> bool:
        """Tell whether a job that never reported passes: by its name, agent and state. It has
        no run, so a filter on a run's status, encryption or time leaves it out."""
        if self.statuses or self.encryption or self.since or self.until:
            return False
        return self._keeps_job(job.job_name, job.agent_id, job.state)

    def _keeps_job(self, job_name: str, agent_id: str, state: str | None) -> bool:
        if self.agent and agent_id != self.agent:
            return False
        if self.job and self.job.casefold() not in job_name.casefold():
            return False
        return not (self.states and state not in self.states)


ENCRYPTION_FILTERS = ("encrypted", "unencrypted", "unknown")  # JobRow.encryption's values


# The overview's own query parameters; its sort links carry these on, and nothing else.
OVERVIEW_FILTER_NAMES = ("job", "agent", "status", "state", "encryption", "since", "until")
# How much of a bad value a notice repeats: enough to spot a typo, too little for a message
# someone slipped into a link.
ECHOED_CHARS = 24


def shortened(value: str) -> str:
    """Cut text that came from the address to ECHOED_CHARS, for a page or notice to repeat."""
    return value if len(value) <= ECHOED_CHARS else value[:ECHOED_CHARS] + "…"


def _echoed(value: str) -> str:
    """Quote a bad filter value for a notice, cut short."""
    return repr(shortened(value))


def _known_values(args, name: str, known, problems: list[str]) -> tuple[str, ...]:
    """Read a filter that takes several values (a=x,y or a=x&a=y); name the first unknown one."""
    given = [value for value in comma_separated(args.getlist(name)) if value]
    unknown = [value for value in given if value not in known]
    if unknown:
        problems.append(f"{name}: unknown value {_echoed(unknown[0])}; ignored")
    return tuple(value for value in given if value in known)


def parse_overview_filters(args) -> OverviewFilters:
    """Read the filter form; a bad value is reported and ignored rather than failing the page."""
    filters = OverviewFilters(agent=args.get("agent", ""), job=args.get("job", "").strip())
    filters.statuses = _known_values(args, "status", STATUSES, filters.problems)
    # Without job monitoring no row has a state, so a known one matches none.
    filters.states = _known_values(args, "state", STATE_RANK, filters.problems)
    encryption = args.get("encryption", "")
    if encryption in ENCRYPTION_FILTERS:
        filters.encryption = encryption
    elif encryption:
        filters.problems.append(f"encryption: unknown value {_echoed(encryption)}; ignored")
    for name in ("since", "until"):
        text = args.get(name, "").strip()
        if not text:
            continue
        try:
            moment = parse_timestamp(text, date_only_ok=True)
        except (ValueError, OverflowError):
            filters.problems.append(f"{name}: {_echoed(text)} is not a date; ignored")
            continue
        if name == "until" and len(text) == 10:
            try:
                moment += timedelta(days=1)  # "until 12 May" means to the end of that day
            except OverflowError:
                continue  # the end of 9999-12-31: no bound at all
        setattr(filters, name, moment)
        setattr(filters, f"{name}_text", text)
    return filters


def attention_rank(row: JobRow) -> int:
    """Where a row sorts by default, as the README says: late, failed, partial, unencrypted,
    then the rest; muted jobs last, as they need no one.

    The job's state alone would have put a healthy new job above an unencrypted one.
    """
    if row.state == "muted":
        return 5
    if row.state == "late":
        return 0
    # The run's status, or job monitoring's, if runs overlap and it judged a worse one.
    if row.latest.status == "failure" or row.state == "failing":
        return 1
    if row.latest.status == "partial" or row.state == "degraded":
        return 2
    return 3 if row.encryption == "unencrypted" else 4


SORT_KEYS: dict[str, Callable[[JobRow], tuple]] = {
    "job": lambda row: (row.job_name.casefold(), row.agent_id.casefold()),
    "agent": lambda row: (row.agent_id.casefold(), row.job_name.casefold()),
    "status": lambda row: (attention_rank(row), row.job_name.casefold(), row.agent_id.casefold()),
    "started": lambda row: (row.latest.start_ts, row.job_name.casefold()),
    "duration": lambda row: (row.latest.end_ts - row.latest.start_ts, row.job_name.casefold()),
    "size": lambda row: (
        row.latest.bytes_backed_up is not None,
        row.latest.bytes_backed_up or 0,
        row.job_name.casefold(),
    ),
    "encryption": lambda row: (
        {"unencrypted": 0, "unknown": 1, "encrypted": 2}[row.encryption],
        row.job_name.casefold(),
    ),
    "runs": lambda row: (row.run_count, row.job_name.casefold()),
}
# The default puts what needs attention on top: late, failed, partial, then unencrypted.
DEFAULT_SORT = ("status", "asc")


# Times and amounts read best largest first on the first click; names A to Z.
DESCENDING_FIRST = frozenset({"started", "duration", "size", "runs"})


@dataclass(frozen=True)
class SortLink:
    """A column header's link: where a click goes and how the column is sorted now."""

    href: str
    aria_sort: str  # "ascending", "descending" or "none", for screen readers and the arrow


def sort_links(base_args: dict[str, list[str]], sort: str, direction: str) -> dict[str, SortLink]:
    """Return each sortable column's header link, keeping the filters in base_args."""
    links = {}
    for column in SORT_KEYS:
        if column == sort:
            aria = "ascending" if direction == "asc" else "descending"
            next_direction = "desc" if direction == "asc" else "asc"
        else:
            aria = "none"
            next_direction = "desc" if column in DESCENDING_FIRST else "asc"
        href = url_for("ui.overview", **base_args, sort=column, dir=next_direction)
        links[column] = SortLink(href, aria)
    return links


def parse_sort(args) -> tuple[str, str]:
    """Return the (column, direction) asked for, or the default for anything unknown."""
    column = args.get("sort", DEFAULT_SORT[0])
    direction = args.get("dir", "asc")
    if column not in SORT_KEYS:
        return DEFAULT_SORT
    return column, "desc" if direction == "desc" else "asc"


@dataclass(frozen=True)
class Card:
    """A summary number at the top of the overview, linking to the jobs it counts."""

    label: str
    count: int
    tone: str
    href: str


def summary_cards(
    rows: Iterable[JobRow], monitored: bool = False, late_never_reported: int = 0
) -> list[Card]:
    """Count jobs by their latest run's outcome (and lateness, when monitored); each card
    links to the list filtered to the jobs it counts. The late card also counts the jobs of
    the jobs file that never reported and are overdue."""
    rows = list(rows)
    by_status = {status: 0 for status in STATUSES}
    unencrypted = 0
    for row in rows:
        by_status[row.latest.status] += 1
        unencrypted += row.encryption == "unencrypted"
    overview = "ui.overview"
    late = []
    if monitored:
        late_count = sum(row.state == "late" for row in rows) + late_never_reported
        late = [Card("Late", late_count, "late", url_for(overview, state="late"))]
    return [
        Card("Jobs", len(rows), "neutral", url_for(overview)),
        *late,
        Card("Succeeded", by_status["success"], "success", url_for(overview, status="success")),
        Card("Failed", by_status["failure"], "failure", url_for(overview, status="failure")),
        Card("Partial", by_status["partial"], "partial", url_for(overview, status="partial")),
        Card("Unencrypted", unencrypted, "warning", url_for(overview, encryption="unencrypted")),
    ]


@bp.get("/")
def overview() -> tuple[str, int]:
    """The overview: summary cards and one row per job with its latest run."""
    all_rows, monitored, never_reported = with_monitoring(current_app.extensions["ui_jobs"].rows())
    filters = parse_overview_filters(request.args)
    sort, direction = parse_sort(request.args)
    rows = sorted(
        (row for row in all_rows if filters.keep(row)),
        key=SORT_KEYS[sort],
        reverse=direction == "desc",
    )
    # Every value of each filter: status=failure&status=partial keeps both in the sort links.
    # Only the filters: url_for reads _anchor, _scheme and _method itself (a 500 for
    # /?_anchor=x), and any other parameter is noise to carry on.
    base_args = {
        name: values
        for name, values in request.args.to_dict(flat=False).items()
        if name in OVERVIEW_FILTER_NAMES
    }
    return render_template(
        "overview.html",
        rows=rows,
        cards=summary_cards(
            all_rows, monitored, sum(job.state == "late" for job in never_reported)
        ),
        filters=filters,
        agents=sorted({row.agent_id for row in all_rows}, key=str.casefold),
        sort=sort,
        direction=direction,
        sort_links=sort_links(base_args, sort, direction),
        statuses=STATUSES,
        states=tuple(STATE_RANK),
        monitored=monitored,
        empty_store=not all_rows,
        # (summary, first expected start or None) of each job that never reported
        # The box follows the filters as the table does: ?state=ok&agent=db-01 named a late
        # job on another agent above a table of db-01's healthy jobs.
        never_reported=[
            (job, job.next_expected_at and parse_timestamp(job.next_expected_at).timestamp())
            for job in never_reported
            if filters.keep_unreported(job)
        ],
        deleted=deletion_notice(),
        example_curl=example_curl(),
    ), 400 if filters.problems else 200


def deletion_notice() -> str | None:
    """Return the run id the Delete button just removed, for the notice, or None.

    The address says which run that was, and anyone can send the operator an address: the
    notice names only a run this registry removed in the last ten minutes and that is not
    back, never any text at all ("Run 'Call +1 555...' was deleted"), which would pass for a
    run id. Someone with API credentials could still post such a run, delete it and send the
    link; they can show that text as a run id on the dashboard anyway.
    """
    run_id = request.args.get("deleted")
    if not run_id or run_id in _store() or not _store().deleted_lately(run_id):
        return None
    return run_id


def example_curl() -> str:
    """Return a curl command that reports one run to this server."""
    ended = request_now().replace(microsecond=0)
    # A few short lines rather than one long one: a shell string may span lines.
    field_lines = [
        {"run_id": f"first-run-{ended:%Y%m%d%H%M%S}", "job_name": "postgres-daily"},
        {"agent_id": "db-01", "status": "success"},
        {
            "start_time": (ended - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end_time": ended.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        {"bytes_backed_up": 1073741824, "encrypted": True},
    ]
    body = ",\n       ".join(json.dumps(fields)[1:-1] for fields in field_lines)
    auth = ""
    if current_app.config["API_TOKENS"]:
        auth = '  -H "Authorization: Bearer $REGISTRY_TOKEN" \\\n'
    elif current_app.config["AUTH_USER"]:  # Basic only: without it the command gets a 401
        auth = '  -u "$REGISTRY_USER:$REGISTRY_PASSWORD" \\\n'
    return (
        f"curl -sS -X POST {request.url_root}v1/backup-runs \\\n{auth}"
        "  -H 'Content-Type: application/json' \\\n"
        f"  -d '{{{body}}}'"
    )


# --- job history -----------------------------------------------------------------------------


def runs_newest_first(runs: Iterable[RunSummary]) -> list[RunSummary]:
    """Return runs by start time, newest first; ties by end time, then id."""
    return sorted(runs, key=lambda s: (s.start_ts, s.end_ts, s.run_id), reverse=True)


@bp.get("/job")
def history() -> tuple[str, int]:
    """One job's runs, newest first, paged, under a chart of duration and size over time."""
    job_name = request.args.get("job_name", "")
    agent_id = request.args.get("agent_id", "")
    runs = runs_newest_first(_store().job_runs((job_name, agent_id)))
    if not runs:
        # Cut short, as a notice's echo is: any link could make this page say anything.
        return render_template(
            "not_found.html",
            what="job",
            job_name=shortened(job_name),
            agent_id=shortened(agent_id),
        ), 404
    monitoring = job_monitoring(job_name, agent_id)
    page_count = math.ceil(len(runs) / HISTORY_PAGE_SIZE)
    digits = request.args.get("page", "1").lstrip("0")
    # isdigit() alone admits '²', which int() refuses; int() refuses over 4,300 digits.
    if digits.isascii() and digits.isdigit():
        page = min(int(digits) if len(digits) <= 9 else page_count, page_count)
    else:
        page = 1  # '0' too
    shown = runs[(page - 1) * HISTORY_PAGE_SIZE : page * HISTORY_PAGE_SIZE]
    return render_template(
        "history.html",
        job_name=job_name,
        agent_id=agent_id,
        runs=shown,
        run_count=len(runs),
        page=page,
        page_count=page_count,
        chart=history_chart(runs[:CHART_MAX_RUNS]),
        chart_run_count=min(len(runs), CHART_MAX_RUNS),
        counts={status: sum(run.status == status for run in runs) for status in STATUSES},
        monitoring=monitoring,
    ), 200


@dataclass(frozen=True)
class JobMonitoring:
    """What job monitoring says of one job, ready for the history page."""

    state: str
    flags: tuple[str, ...]
    interval: float | None
    next_expected_ts: float | None


def job_monitoring(job_name: str, agent_id: str) -> JobMonitoring | None:
    """Return job monitoring's view of one job, or None without monitoring or such a job."""
    if "jobs" not in current_app.extensions:
        return None
    for summary in jobs.job_summaries(current_app, request_now()):
        if (summary.job_name, summary.agent_id) == (job_name, agent_id):
            next_expected = summary.next_expected_at
            return JobMonitoring(
                state=summary.state,
                flags=tuple(summary.flags),
                interval=summary.expected_interval_seconds,
                next_expected_ts=(
                    parse_timestamp(next_expected).timestamp() if next_expected else None
                ),
            )
    return None


@dataclass
class ChartPoint:
    """One run drawn in both panels of the history chart."""

    x: float
    size_y: float | None
    duration_y: float
    status: str
    label: str
    href: str
    annotate: bool = False  # failed or partial, and few enough to carry a word each
    anchor: str = "middle"  # where its word sits: kept inside the chart at either edge


@dataclass
class HistoryChart:
    """Coordinates for the inline SVG: the template only draws what this computed."""

    width: int
    height: int
    left: int
    right: int
    size_top: int
    size_bottom: int
    duration_top: int
    duration_bottom: int
    points: list[ChartPoint]
    size_line: str
    duration_line: str
    size_ticks: list[tuple[float, str]]  # none when no run reports a size
    duration_ticks: list[tuple[float, str]]
    time_ticks: list[tuple[float, str]]


def history_chart(runs: list[RunSummary]) -> HistoryChart:
    """Lay out duration and size over start time for runs; failed and partial get own shapes."""
    width, left, right = 1000, 78, 984
    size_top, size_bottom = 34, 144
    duration_top, duration_bottom = 184, 294
    ordered = sorted(runs, key=lambda s: (s.start_ts, s.run_id))
    first = ordered[0].start_ts
    span = ordered[-1].start_ts - first
    max_size = nice_size_ceiling(max((r.bytes_backed_up or 0 for r in ordered), default=0))
    max_duration = nice_duration_ceiling(max(r.end_ts - r.start_ts for r in ordered))

    def x_of(timestamp: float) -> float:
        if span == 0:
            return (left + right) / 2
        return left + (timestamp - first) / span * (right - left)

    def y_of(value: float, top: int, bottom: int, maximum: float) -> float:
        return bottom - value / maximum * (bottom - top)

    points = []
    for run in ordered:
        duration = run.end_ts - run.start_ts
        size = run.bytes_backed_up
        label = (
            f"{format_utc(run.start_ts)} · {run.status} · {format_duration(duration)}"
            f" · {format_size(size)}"
        )
        points.append(
            ChartPoint(
                x=round(x_of(run.start_ts), 1),
                size_y=None
                if size is None
                else round(y_of(size, size_top, size_bottom, max_size), 1),
                duration_y=round(y_of(duration, duration_top, duration_bottom, max_duration), 1),
                status=run.status,
                label=label,
                href=url_for("ui.run_page", run_id=run.run_id),
            )
        )

    # A word per mark reads better than a legend, until the words would crowd each other.
    marked = [p for p in points if p.status != "success"]
    gaps = [later.x - earlier.x for earlier, later in itertools.pairwise(marked)]
    if len(marked) <= CHART_MAX_LABELS and min(gaps, default=math.inf) >= CHART_LABEL_SPACING:
        for point in marked:
            point.annotate = True
            if point.x > right - 30:
                point.anchor = "end"
            elif point.x < left + 30:
                point.anchor = "start"

    def polyline(pairs: Iterable[tuple[float, float | None]]) -> str:
        return " ".join(f"{x},{y}" for x, y in pairs if y is not None)

    return HistoryChart(
        width=width,
        height=duration_bottom + 36,
        left=left,
        right=right,
        size_top=size_top,
        size_bottom=size_bottom,
        duration_top=duration_top,
        duration_bottom=duration_bottom,
        points=points,
        size_line=polyline((p.x, p.size_y) for p in points),
        duration_line=polyline((p.x, p.duration_y) for p in points),
        # With no size at all, an axis of 0 B, 1 B and 2 B would claim sizes of nothing.
        size_ticks=[
            (y_of(v, size_top, size_bottom, max_size), format_size(round(v), trim=True))
            for v in (0, max_size / 2, max_size)
        ]
        if any(point.size_y is not None for point in points)
        else [],
        duration_ticks=[
            (y_of(v, duration_top, duration_bottom, max_duration), format_duration(v))
            for v in (0, max_duration / 2, max_duration)
        ],
        time_ticks=_time_ticks(first, span, x_of),
    )


# Axis tops whose halves are round too: 2 → 1, 4 → 2, 5 → 2.5, 10 → 5.
NICE_MANTISSAS = (1, 2, 4, 5, 10)
# Axis tops for durations, in seconds, whose halves read well: 30 s, 1 min, 5 min, 1 h, 12 h...
MINUTE, HOUR, DAY = 60, 3600, 86400
NICE_DURATIONS = (1, 2, 4, 10, 20, 30)
NICE_DURATIONS += tuple(n * MINUTE for n in (1, 2, 4, 10, 20, 30))
NICE_DURATIONS += tuple(n * HOUR for n in (1, 2, 4, 6, 12))
NICE_DURATIONS += tuple(n * DAY for n in (1, 2, 4, 7))


def nice_size_ceiling(size: float) -> float:
    """Return the axis top for sizes up to size: 1, 2, 4 or 5 times a power of ten, binary units."""
    if size <= 0:
        return 2  # ticks 0, 1 and 2 B: whole bytes, not "0 B, 0 B, 1 B"
    unit = 1
    while size / unit >= 1024 and unit < 1024**6:
        unit *= 1024
    scaled = size / unit
    exponent = math.floor(math.log10(scaled))
    for mantissa in NICE_MANTISSAS:
        if unit == 1 and exponent == 0 and mantissa in (1, 5):
            continue  # its half is not a whole byte: a tick "2 B" would sit at 2.5 B
        if mantissa * 10**exponent >= scaled:
            return mantissa * 10**exponent * unit
    return 10 ** (exponent + 1) * unit  # not reached: mantissa 10 always fits


def nice_duration_ceiling(seconds: float) -> float:
    """Return the axis top for durations up to seconds, from NICE_DURATIONS or whole weeks."""
    for top in NICE_DURATIONS:
        if top >= seconds:
            return top
    week = 7 * DAY
    return math.ceil(seconds / week) * week


def _time_ticks(first: float, span: float, x_of: Callable[[float], float]) -> list[tuple]:
    # Ticks a quarter of the span apart: under two days apart, a date alone would repeat one
    # day or skip one ("24 Nov, 26 Nov" for evenly spaced ticks), so they carry the time.
    short = span < 8 * 86400
    moments = [first] if span == 0 else [first + span * i / 4 for i in range(5)]
    times = [jobs.utc_moment(t) for t in moments]
    # Runs of several years (a yearly job) would read "01 Jan, 01 Jan, 31 Dec" without one,
    # and a few days across New Year "29 Dec 02:00 ... 03 Jan 02:00".
    # The year by hand, not %Y: glibc writes the year 139 as "139" (see format_utc).
    with_year = times[0].year != times[-1].year
    pattern = "%d %b %H:%M" if short else "%d %b"
    return [
        (x_of(t), moment.strftime(pattern) + (f" {moment.year:04d}" if with_year else ""))
        for t, moment in zip(moments, times, strict=True)
    ]


# --- one run ---------------------------------------------------------------------------------

# The run page shows these first, in this order; any other stored field follows.
RUN_FIELD_ORDER = (
    "run_id",
    "job_name",
    "agent_id",
    "status",
    "start_time",
    "end_time",
    "bytes_backed_up",
    "encrypted",
    "encryption_status",
    "backup_url",
    "received_at",
)


@bp.get("/run/<run_id:run_id>")
def run_page(run_id: str) -> tuple[str, int]:
    """Every field of one run, its error and metadata, and a delete button."""
    try:
        run = _store().get(run_id)
    except (RunNotFound, InvalidRunId):  # an id no file can hold is no run either
        return render_template("not_found.html", what="run", run_id=shortened(run_id)), 404
    summary = RunSummary(run, run_id, None)
    known = (*RUN_FIELD_ORDER, "error", "metadata")
    extra = {name: value for name, value in run.items() if name not in known}
    return render_template(
        "run.html",
        run=run,
        summary=summary,
        duration=summary.end_ts - summary.start_ts,
        backup_url=run.get("backup_url") if is_web_url(run.get("backup_url")) else None,
        encrypted_field=_pretty_json(run["encrypted"]) if "encrypted" in run else "not reported",
        metadata_json=_pretty_json(run["metadata"]) if "metadata" in run else None,
        extra={name: _pretty_json(value) for name, value in extra.items()},
        delete_url=url_for("delete_run", run_id=run_id),
        done_url=url_for("ui.overview", deleted=run_id),
    ), 200


def _pretty_json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=False)


# --- API reference ---------------------------------------------------------------------------


@bp.get("/docs")
def docs() -> str:
    """A readable reference of the HTTP API, with curl examples for this server."""
    schema = current_app.extensions["validator"].schema
    required = set(schema.get("required", ()))
    fields = [
        {
            "name": name,
            "type": _schema_type(spec),
            "required": name in required,
            "read_only": spec.get("readOnly", False),
            "description": spec.get("description", ""),
        }
        for name, spec in schema["properties"].items()
    ]
    return render_template(
        "docs.html",
        fields=fields,
        statuses=STATUSES,
        base_url=request.url_root.rstrip("/"),
        max_body=format_size(current_app.config["MAX_BODY_BYTES"], trim=True),
    )


def _schema_type(spec: dict) -> str:
    if "enum" in spec:
        return " | ".join(spec["enum"])
    kinds = spec.get("type", "any")
    text = " or ".join(kinds) if isinstance(kinds, list) else kinds
    if spec.get("format") == "date-time":
        text += " (ISO 8601 date-time)"
    return text
