"""The dashboard through the Flask client: what each page shows, escaping, headers and auth."""

from __future__ import annotations

import base64
import html
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from conftest import make_run
from jobs_support import Clock
from markupsafe import escape

import app as app_module
import jobs
import ui

NOW = datetime(2026, 5, 12, 12, 0, 0, tzinfo=UTC)
RUNS = "/v1/backup-runs"
GIB = 1024**3
XSS = "<script>alert('x')</script>"
TEMPLATES = Path(ui.__file__).resolve().parent / "templates"


@pytest.fixture
def app_config(app_config: dict) -> dict:
    """The test app, with a clock fixed at NOW."""
    return {**app_config, "CLOCK": lambda: NOW, "WATCH_STORE": False}


def report(client, run_id: str = "run-1", **fields) -> dict:
    """Submit a run through the API and return what was sent."""
    run = make_run(run_id, **fields)
    response = client.post(RUNS, json=run)
    assert response.status_code == 201, response.get_data(as_text=True)
    return run


def page(client, url: str, status: int = 200) -> str:
    """GET url and return its HTML, checking the status."""
    response = client.get(url)
    assert response.status_code == status, response.get_data(as_text=True)[:2000]
    assert response.mimetype == "text/html"
    return response.get_data(as_text=True)


def cards(text: str) -> dict[str, int]:
    """Read the overview's summary cards as {label: count}."""
    found = re.findall(
        r'<span class="card-count">(\d+)</span>\s*<span class="card-label">([^<]+)</span>', text
    )
    return {label: int(count) for count, label in found}


def job_order(text: str) -> list[str]:
    """Return the job names of the overview's rows, top to bottom."""
    return [html.unescape(name) for name in re.findall(r'class="job-link"[^>]*>([^<]*)<', text)]


def hrefs(text: str, pattern: str) -> list[str]:
    """Return the (unescaped) href values that match pattern."""
    return [html.unescape(h) for h in re.findall(r'href="([^"]*)"', text) if re.search(pattern, h)]


# --- overview ------------------------------------------------------------------------------


def test_empty_store_says_so_and_shows_the_curl_that_reports_a_run(client):
    text = page(client, "/")
    assert "No backup runs have been reported yet" in text
    command = html.unescape(re.search(r"<pre[^>]*><code>(.*?)</code></pre>", text, re.S)[1])
    assert command.startswith("curl -sS -X POST http://localhost/v1/backup-runs")
    assert 'class="jobs' not in text
    # The command works: its body is a valid report, and the job then shows up.
    body = re.search(r"-d '(.*)'$", command, re.S)[1]
    assert client.post(RUNS, data=body).status_code == 201
    assert job_order(page(client, "/")) == ["postgres-daily"]


@pytest.mark.parametrize(
    ("settings", "credentials"),
    [
        ({"API_TOKENS": "t0ken"}, "-H &#34;Authorization: Bearer $REGISTRY_TOKEN&#34; \\"),
        (
            {"API_TOKENS": "t0ken", "AUTH_USER": "op", "AUTH_PASS": "s3cret-pw"},
            "Bearer $REGISTRY_TOKEN",
        ),
        # Basic only: the command had no credentials, and got a 401.
        (
            {"AUTH_USER": "op", "AUTH_PASS": "s3cret-pw"},
            "-u &#34;$REGISTRY_USER:$REGISTRY_PASSWORD&#34;",
        ),
    ],
)
def test_empty_state_curl_carries_credentials_when_they_are_needed(
    app_config, settings, credentials
):
    application = app_module.create_app({**app_config, **settings})
    try:
        text = page(application.test_client(), "/")
        assert credentials in text
        assert "s3cret-pw" not in text
    finally:
        application.extensions["store"].close()


def test_a_run_ending_after_its_report_arrived_does_not_hide_later_runs(app_config):
    # Reported on 11 May by an agent whose clock ran a year ahead; its clock fixed, the same
    # agent reports a failure on 12 May. The row is the failure, not the run "from 2027".
    clock = Clock(datetime(2026, 5, 11, 3, 0, tzinfo=UTC))
    application = app_module.create_app({**app_config, "CLOCK": clock})
    try:
        client = application.test_client()
        report(client, "ahead", start_time="2027-05-11T02:00:00Z", end_time="2027-05-11T02:05:00Z")
        clock.moment = NOW
        report(client, "now", status="failure", error="disk full")
        text = page(client, "/")
        assert "/run/now" in text and "/run/ahead" not in text
        assert cards(text)["Failed"] == 1
    finally:
        application.extensions["store"].close()


def test_a_job_that_must_be_encrypted_counts_as_unencrypted_until_a_run_says_so(
    app_config, tmp_path
):
    """require_encryption flags a run that does not say it was encrypted; the card, the
    filter and the default order must count the job the row flags."""
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text('{"jobs": [{"job_name": "vault", "require_encryption": true}]}')
    application = app_module.create_app({**app_config, "JOBS_FILE": str(jobs_file)})
    try:
        client = application.test_client()
        report(client, "vault-1", job_name="vault")  # says nothing of encryption
        report(client, "aa-1", job_name="aa-healthy", encrypted=True)
        report(client, "ab-1", job_name="ab-unknown")  # not required: unknown, no flag
        text = page(client, "/")
        assert "unencrypted" in row_of(text, "vault")
        assert ">unencrypted<" in row_of(text, "vault")  # its flag: the badge says "unknown"
        assert row_of(text, "vault").startswith('<tr class="row-success row-unencrypted')
        assert cards(text)["Unencrypted"] == 1
        assert job_order(text) == ["vault", "aa-healthy", "ab-unknown"]
        assert job_order(page(client, "/?encryption=unencrypted")) == ["vault"]
        assert job_order(page(client, "/?encryption=unknown")) == ["ab-unknown"]
        by_encryption = job_order(page(client, "/?sort=encryption&dir=asc"))
        assert by_encryption == ["vault", "ab-unknown", "aa-healthy"]
    finally:
        application.extensions["store"].close()


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("", True),
        ("?agent=nas-01", True),
        ("?job=SYNC", True),
        ("?state=new", True),
        ("?agent=db-01", False),
        ("?job=postgres", False),
        ("?state=ok,late", False),
        ("?status=success", False),  # it has no run: no status, encryption or time to match
        ("?encryption=unknown", False),
        ("?since=2026-01-01", False),
    ],
)
def test_a_job_that_never_reported_is_named_only_under_filters_it_passes(
    app_config, tmp_path, query, named
):
    """?agent=db-01 showed the box naming a job on nas-01 above a table of db-01's jobs."""
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text('{"jobs": [{"job_name": "offsite-sync", "agent_id": "nas-01"}]}')
    application = app_module.create_app({**app_config, "JOBS_FILE": str(jobs_file)})
    try:
        client = application.test_client()
        report(client, "pg-1")  # postgres-daily on db-01
        text = page(client, "/" + query)
        assert ("Expected, never reported" in text) is named
        assert ("offsite-sync" in text) is named
    finally:
        application.extensions["store"].close()


def test_sort_links_keep_every_value_of_a_repeated_filter(client):
    report(client, "f", status="failure", job_name="a-failed")
    report(client, "p", status="partial", job_name="b-partial")
    report(client, "s", job_name="c-fine")
    text = page(client, "/?status=failure&status=partial")
    assert job_order(text) == ["a-failed", "b-partial"]
    (job_link,) = hrefs(text, r"sort=job")
    assert job_order(page(client, job_link)) == ["a-failed", "b-partial"]


def test_an_unencrypted_job_sorts_above_a_healthy_new_one(client):
    """The README's order: late, failed, partial, unencrypted, then the rest by name."""
    for day in (10, 11, 12):
        start = f"2026-05-{day}T02:00:00Z"
        report(
            client,
            f"zz-{day}",
            job_name="zz-unencrypted",
            start_time=start,
            end_time=start.replace("02:00", "02:05"),
            encrypted=day != 12,
        )
    report(client, "aa-1", job_name="aa-new", encrypted=True)
    states = {job["job_name"]: job["state"] for job in client.get("/v1/jobs").get_json()}
    assert states == {"zz-unencrypted": "ok", "aa-new": "new"}
    assert job_order(page(client, "/")) == ["zz-unencrypted", "aa-new"]


@pytest.mark.parametrize(
    ("query", "kept"),
    [
        ("status=partial,failure", '<option value="failure,partial" selected>'),
        ("status=success,partial", '<option value="partial,success" selected>'),
        ("state=late,failing", '<option value="late,failing" selected>'),
        ("agent=nosuch", '<option value="nosuch" selected>'),
        ("since=2026-05-11T06:00:00Z", 'type="text" name="since" value="2026-05-11T06:00:00Z"'),
        ("until=2026-05-13", 'type="date" name="until" value="2026-05-13"'),
        # Ten characters, but no date a date picker can show: it came back empty.
        ("since=2026-W20-1", 'type="text" name="since" value="2026-W20-1"'),
    ],
)
def test_a_filter_from_the_address_stays_in_the_form(client, query, kept):
    """The form resubmits what it shows: a value no menu entry held was lost at the next change."""
    report(client)
    assert kept in page(client, f"/?{query}")


def test_every_filter_menu_submits_on_change(client):
    """dashboard.js submits only menus marked data-autosubmit: each of the four must be."""
    report(client)
    menus = re.findall(r'<select name="(\w+)"([^>]*)>', page(client, "/"))
    assert [name for name, _ in menus] == ["agent", "status", "state", "encryption"]
    assert all("data-autosubmit" in attributes for _, attributes in menus)


def test_each_job_shows_its_latest_run_by_end_time(client):
    # Received last, but it ended first: the row must still show the later-ending run.
    report(client, "late-end", start_time="2026-05-11T02:00:00Z", end_time="2026-05-11T23:00:00Z")
    report(client, "early-end", start_time="2026-05-11T03:00:00Z", end_time="2026-05-11T03:10:00Z")
    report(client, "other", job_name="mail", agent_id="mx-01")
    text = page(client, "/")
    assert job_order(text) == ["mail", "postgres-daily"]
    assert "/run/late-end" in text and "/run/early-end" not in text
    assert '<time datetime="2026-05-11T02:00:00Z">2026-05-11 02:00</time>' in text
    assert "21 h" in text  # duration of late-end
    assert ">2</a>" in text  # postgres-daily has two runs


def test_a_year_before_1000_is_written_with_four_digits(client):
    """A <time datetime> must be RFC 3339; glibc's strftime writes the year 139 as "139"."""
    report(client, start_time="0139-05-12T02:00:00Z", end_time="0139-05-12T02:04:33Z")
    text = page(client, "/")
    assert '<time datetime="0139-05-12T02:00:00Z">0139-05-12 02:00</time>' in text


def test_row_shows_started_age_duration_size_encryption_and_error(client):
    report(
        client,
        bytes_backed_up=GIB,
        encrypted=True,
        status="failure",
        error="disk full while writing chunk 17 " + "x" * 200,
    )
    text = page(client, "/")
    assert "Started (UTC)</a></th>" in text
    assert '<time datetime="2026-05-12T02:00:00Z">2026-05-12 02:00</time>' in text
    assert "10 h ago" in text  # NOW is 12:00; the run started at 02:00
    assert "4 min 33 s" in text
    assert "1.00 GiB" in text
    assert ">encrypted</span>" in text
    preview = re.search(r'<span class="error-preview" title="([^"]*)">([^<]*)</span>', text)
    assert html.unescape(preview[1]) == "disk full while writing chunk 17 " + "x" * 200
    assert preview[2].endswith("…") and len(preview[2]) <= ui.ERROR_PREVIEW_CHARS


def test_run_count_links_to_the_jobs_history(client):
    for number in range(3):
        report(client, f"r{number}", job_name="db & files", agent_id="host/1")
    text = page(client, "/")
    (link,) = set(hrefs(text, r"^/job\?"))
    assert link == "/job?job_name=db+%26+files&agent_id=host/1"
    assert ">3</a>" in text
    assert "3 runs" in page(client, link)


def test_summary_cards_count_jobs_by_their_latest_run(client):
    report(client, "a1", job_name="a", status="failure")
    report(client, "a2", job_name="a", end_time="2026-05-12T03:00:00Z", status="success")
    report(client, "b", job_name="b", status="failure")
    report(client, "c", job_name="c", status="partial", encrypted=False)
    report(client, "d", job_name="d", encryption_status="failed")
    counts = cards(page(client, "/"))
    counts.pop("Late", None)  # job monitoring's card, tested with it
    assert counts == {
        "Jobs": 4,
        "Succeeded": 2,
        "Failed": 1,
        "Partial": 1,
        "Unencrypted": 2,
    }


def test_summary_cards_link_to_the_jobs_they_count(client):
    """Pins each card's link: the overview filtered to the jobs that card counts."""
    report(client)
    text = page(client, "/")
    links = {
        label: html.unescape(href)
        for href, label in re.findall(
            r'class="card [^"]*" href="([^"]*)">\s*<span class="card-count">\d+</span>\s*'
            r'<span class="card-label">([^<]+)</span>',
            text,
        )
    }
    assert links == {
        "Jobs": "/",
        "Late": "/?state=late",
        "Succeeded": "/?status=success",
        "Failed": "/?status=failure",
        "Partial": "/?status=partial",
        "Unencrypted": "/?encryption=unencrypted",
    }


def test_started_duration_and_runs_columns_sort_by_their_own_values(client):
    """Pins the started, duration and runs sort keys, each set apart from the others."""
    # early: starts first, ends last, runs longest, has two runs; late: starts last, one run;
    # many: three runs. Each order differs from the others and from the names'.
    report(
        client,
        "e0",
        job_name="early",
        start_time="2026-05-10T00:00:00Z",
        end_time="2026-05-10T00:10:00Z",
    )
    report(
        client,
        "e",
        job_name="early",
        start_time="2026-05-11T00:00:00Z",
        end_time="2026-05-12T03:00:00Z",
    )
    report(
        client,
        "l",
        job_name="late",
        start_time="2026-05-11T22:00:00Z",
        end_time="2026-05-11T22:01:00Z",
    )
    for n in range(3):
        start = f"2026-05-11T1{n}:00:00Z"
        report(
            client,
            f"m{n}",
            job_name="many",
            start_time=start,
            end_time=start.replace(":00:00", ":30:00"),
        )

    assert job_order(page(client, "/?sort=started&dir=desc")) == ["late", "many", "early"]
    assert job_order(page(client, "/?sort=duration&dir=desc")) == ["early", "many", "late"]
    assert job_order(page(client, "/?sort=runs&dir=desc")) == ["many", "early", "late"]  # 3, 2, 1


def test_problems_stand_out_in_words_and_shapes_not_colour_alone(client):
    report(client, "f", job_name="failed-job", status="failure", error="boom")
    report(client, "p", job_name="partial-job", status="partial")
    report(client, "u", job_name="plain-job", encrypted=False)
    report(client, "ok", job_name="fine-job", encrypted=True)
    text = page(client, "/")
    for badge, icon, word in [
        ("badge-failure", "i-failure", "Failed"),
        ("badge-partial", "i-partial", "Partial"),
        ("badge-unencrypted", "i-warning", "unencrypted"),
        ("badge-success", "i-success", "Success"),
    ]:
        assert re.search(
            rf'class="badge {badge}"><svg[^>]*><use href="#{icon}"/></svg>{word}<', text
        )
    assert re.search(r'<tr class="row-failure[ "]', text)
    assert re.search(r'<tr class="row-partial[ "]', text)
    assert re.search(r'<tr class="row-success row-unencrypted[ "]', text)


def test_default_order_puts_failed_then_partial_then_unencrypted_on_top(client):
    report(client, "1", job_name="aaa-fine")
    report(client, "2", job_name="bbb-unencrypted", encrypted=False)
    report(client, "3", job_name="ccc-partial", status="partial")
    report(client, "4", job_name="ddd-failed", status="failure")
    assert job_order(page(client, "/")) == [
        "ddd-failed",
        "ccc-partial",
        "bbb-unencrypted",
        "aaa-fine",
    ]


def test_columns_sort_both_ways_and_keep_the_filters(client):
    report(client, "1", job_name="small", bytes_backed_up=10)
    report(client, "2", job_name="big", bytes_backed_up=10 * GIB)
    report(client, "3", job_name="none")
    report(client, "4", job_name="Middle", bytes_backed_up=GIB)
    assert job_order(page(client, "/?sort=job")) == ["big", "Middle", "none", "small"]
    assert job_order(page(client, "/?sort=job&dir=desc")) == ["small", "none", "Middle", "big"]
    assert job_order(page(client, "/?sort=size&dir=desc")) == ["big", "Middle", "small", "none"]
    text = page(client, "/?job=i&sort=size&dir=desc")
    assert re.search(r'aria-sort="descending"><a href="[^"]*sort=size&amp;dir=asc"', text)
    # The next click on another column keeps the job filter.
    assert "/?job=i&sort=job&dir=asc" in hrefs(text, r"sort=job")


def test_an_unknown_size_sorts_below_zero_bytes(client):
    """Pins the size order: a run that reports no size is not taken for one of 0 B."""
    report(client, "1", job_name="b-no-size")
    report(client, "2", job_name="a-zero", bytes_backed_up=0)

    assert job_order(page(client, "/?sort=size&dir=desc")) == ["a-zero", "b-no-size"]
    assert job_order(page(client, "/?sort=size&dir=asc")) == ["b-no-size", "a-zero"]


def test_a_column_s_first_click_sorts_amounts_down_and_names_up(client):
    """Pins the first direction per column, and an unknown dir read as ascending."""
    report(client)
    text = page(client, "/?sort=job&dir=sideways")
    links = {
        column: (aria, html.unescape(href))
        for aria, href, column in re.findall(
            r'aria-sort="(\w+)"><a href="([^"]*sort=(\w+)[^"]*)"', text
        )
    }

    assert links["job"] == ("ascending", "/?sort=job&dir=desc")
    assert links["agent"] == ("none", "/?sort=agent&dir=asc")
    for column in ("started", "duration", "size", "runs"):
        assert links[column] == ("none", f"/?sort={column}&dir=desc")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("job=POSTGRES", ["postgres-weekly", "postgres-daily"]),
        ("job=weekly", ["postgres-weekly"]),
        ("job=%20weekly%20", ["postgres-weekly"]),  # blanks around a typed name
        ("agent=db-02", ["postgres-weekly"]),
        ("agent=db", []),  # agent is an exact choice, not a substring
        ("status=failure", ["mail"]),
        ("status=failure,partial", ["mail", "postgres-weekly"]),
        ("status=success&status=partial", ["postgres-weekly", "postgres-daily"]),
        ("encryption=unencrypted", ["postgres-weekly"]),
        ("encryption=unknown", ["mail"]),
        ("since=2026-05-10", ["mail", "postgres-daily"]),
        ("until=2026-05-09", ["postgres-weekly"]),
        ("since=2026-05-11&until=2026-05-11", ["mail"]),  # until a date includes that day
        ("since=2026-05-11T12:00:00Z", ["postgres-daily"]),
        ("since=2026-05-11T02:00:00Z", ["mail", "postgres-daily"]),  # from: mail starts then
        ("until=2026-05-11T02:00:00Z", ["postgres-weekly"]),  # up to, not including, a time
        ("until=9999-12-31", ["mail", "postgres-weekly", "postgres-daily"]),  # no day after it
    ],
)
def test_filters_narrow_the_jobs(client, query, expected):
    report(client, "1", job_name="postgres-daily", encrypted=True)
    report(
        client,
        "2",
        job_name="postgres-weekly",
        agent_id="db-02",
        status="partial",
        encrypted=False,
        start_time="2026-05-05T02:00:00Z",
        end_time="2026-05-05T03:00:00Z",
    )
    report(
        client,
        "3",
        job_name="mail",
        agent_id="mx-01",
        status="failure",
        start_time="2026-05-11T02:00:00Z",
        end_time="2026-05-11T02:01:00Z",
    )
    text = page(client, "/?" + query)
    assert job_order(text) == expected
    if not expected:
        assert "No jobs match these filters" in text
    assert cards(text)["Jobs"] == 3  # the cards always count every job


def test_filter_form_offers_every_agent_and_keeps_what_was_chosen(client):
    report(client, "1", agent_id="db-01")
    report(client, "2", agent_id="b&b", job_name="x")
    report(client, "3", agent_id="Cache-01", job_name="y")  # sorted without case: after b&b
    text = page(client, "/?agent=b%26b&status=failure,partial&job=pg")
    assert re.findall(r'<option value="([^"]*)"', text)[1:4] == ["b&amp;b", "Cache-01", "db-01"]
    assert '<option value="b&amp;b" selected>b&amp;b</option>' in text
    assert '<option value="db-01">db-01</option>' in text
    assert '<option value="failure,partial" selected>' in text
    assert 'name="job" value="pg"' in text


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=done", "status: unknown value &#39;done&#39;; ignored"),
        ("since=yesterday", "since: &#39;yesterday&#39; is not a date; ignored"),
        ("encryption=maybe", "encryption: unknown value &#39;maybe&#39;; ignored"),
        # It matched no job at all, with no word of why.
        ("state=Late", "state: unknown value &#39;Late&#39;; ignored"),
        # A notice repeats enough of a value to spot a typo, not a message slipped into a link.
        (
            "status=ALERT:+all+backups+were+wiped:+call+the+number+below",
            "status: unknown value &#39;ALERT: all backups were …&#39;; ignored",
        ),
    ],
)
def test_a_bad_filter_value_is_named_and_ignored(client, query, message):
    report(client)
    text = page(client, "/?" + query, status=400)
    assert message in text
    assert job_order(text) == ["postgres-daily"]


def test_parameters_that_are_no_filter_are_not_carried_on(client):
    """url_for reads _anchor, _scheme and _method itself: /?_anchor=x answered 500."""
    report(client)
    text = page(client, "/?status=success&_anchor=x&_scheme=javascript&_external=1&utm=y")
    assert job_order(text) == ["postgres-daily"]
    assert "?status=success&amp;sort=" in text
    assert "_anchor" not in text and "utm" not in text and "http://" not in text


def test_overview_follows_new_and_deleted_runs(client):
    report(client, "old", end_time="2026-05-12T02:10:00Z")
    assert "/run/old" in page(client, "/")
    report(client, "new", start_time="2026-05-12T03:00:00Z", end_time="2026-05-12T03:10:00Z")
    assert "/run/new" in page(client, "/") and "/run/old" not in page(client, "/")
    assert client.delete(RUNS + "/new").status_code == 204
    assert "/run/old" in page(client, "/")
    assert client.delete(RUNS + "/old").status_code == 204
    assert "No backup runs have been reported yet" in page(client, "/")


def test_latest_runs_recomputes_only_the_jobs_that_changed(app, client):
    report(client, "a", job_name="a")
    report(client, "b", job_name="b")
    latest = app.extensions["ui_jobs"]
    before = {row.job: row for row in latest.rows()}
    assert {row.job: row for row in latest.rows()} == before
    report(client, "a2", job_name="a", end_time="2026-05-12T05:00:00Z")
    after = {row.job: row for row in latest.rows()}
    assert after[("b", "db-01")] is before[("b", "db-01")]
    assert after[("a", "db-01")] is not before[("a", "db-01")]
    assert after[("a", "db-01")].latest.run_id == "a2"
    assert after[("a", "db-01")].run_count == 2


def test_a_run_id_too_long_to_store_gets_the_no_such_run_page(client):
    text = page(client, "/run/" + "x" * 300, 404)
    assert "The store holds no run" in text


def test_deleted_notice_shows_the_run_id_as_text(client):
    report(client, XSS)
    assert client.delete(RUNS + "/" + quote(XSS, safe="")).status_code == 204
    text = page(client, "/?" + urlencode({"deleted": XSS}))
    assert "<script>" not in text
    assert "was deleted" in text and escape(XSS) in text


@pytest.mark.parametrize(
    "deleted",
    [
        "run-1",  # still there
        "Call +1 555 0100 now: your backups are compromised",  # could be a run id, never was
        "Your registry is compromised. " * 10,
        " ",
    ],
)
def test_no_deleted_notice_for_a_run_that_is_there_or_was_never_deleted(client, deleted):
    report(client, "run-1")
    assert "was deleted" not in page(client, "/?" + urlencode({"deleted": deleted}))


def test_no_deleted_notice_for_an_id_whose_delete_found_no_run(client):
    """DELETE answers 204 for any id; that must not let it put text in the notice."""
    sentence = "Call +1 555 0100 now: your backups are compromised"
    assert client.delete(RUNS + "/" + quote(sentence, safe="")).status_code == 204
    assert "was deleted" not in page(client, "/?" + urlencode({"deleted": sentence}))


def test_the_deleted_notice_is_for_a_recent_deletion_only(client, app):
    report(client, "gone")
    assert client.delete(RUNS + "/gone").status_code == 204
    assert "was deleted" in page(client, "/?deleted=gone")
    app.extensions["store"]._deletions["gone"] -= 601  # as if deleted over ten minutes ago
    assert "was deleted" not in page(client, "/?deleted=gone")


def test_no_deleted_notice_for_a_run_posted_again_after_its_delete(client):
    """Pins that a run back in the store is not announced as deleted, however recent."""
    report(client, "again")
    assert client.delete(RUNS + "/again").status_code == 204
    report(client, "again")

    assert "was deleted" not in page(client, "/?deleted=again")


# --- job monitoring (jobs.py) ----------------------------------------------------------------


def daily_runs(client, job: str, first_day: int, days: int, **fields) -> None:
    """Report one run a day at 02:00 UTC in May 2026, from first_day on."""
    for day in range(first_day, first_day + days):
        report(
            client,
            f"{job}-{day:02d}",
            job_name=job,
            start_time=f"2026-05-{day:02d}T02:00:00Z",
            end_time=f"2026-05-{day:02d}T02:10:00Z",
            **fields,
        )


def row_of(text: str, job: str) -> str:
    """Return the overview's table row of job."""
    rows = re.findall(r"<tr class=.*?</tr>", text, re.S)
    (row,) = [row for row in rows if f'class="job-link" href="/job?job_name={job}&' in row]
    return row


def test_overview_shows_late_jobs_states_and_flags_from_job_monitoring(client):
    daily_runs(client, "nightly", 1, 6, bytes_backed_up=GIB)  # last ran on 6 May: late
    daily_runs(client, "shrinking", 8, 4, bytes_backed_up=10 * GIB)
    report(
        client,
        "shrinking-12",
        job_name="shrinking",
        start_time="2026-05-12T02:00:00Z",
        end_time="2026-05-12T02:10:00Z",
        bytes_backed_up=GIB,
    )
    report(client, "fresh-1", job_name="fresh")
    text = page(client, "/")
    assert cards(text)["Late"] == 1
    assert job_order(text) == ["nightly", "fresh", "shrinking"]  # late first, new before ok
    late = row_of(text, "nightly")
    assert 'class="row-success row-state-late"' in late
    assert re.search(r'badge-state-late"><svg[^>]*><use href="#i-clock"/></svg>late<', late)
    assert re.search(r'badge-flag"><svg[^>]*><use href="#i-warning"/></svg>size dropped<', text)
    assert "size dropped" in row_of(text, "shrinking")
    assert ">ok<" not in row_of(text, "shrinking")  # "ok" would only repeat "Success"
    assert ">new<" in row_of(text, "fresh")
    assert job_order(page(client, "/?state=late")) == ["nightly"]
    history = page(client, "/job?job_name=nightly&agent_id=db-01")
    assert re.search(r'badge-state-late"><svg[^>]*><use href="#i-clock"/></svg>late<', history)
    assert "runs about every 24 h" in history
    assert "next expected 2026-05-07 02:00 UTC" in history


def test_an_unencrypted_run_is_said_once_not_as_badge_and_flag(client):
    report(client, "plain", job_name="plain", encrypted=False)
    row = row_of(page(client, "/"), "plain")
    assert row.count(">unencrypted<") == 1


def test_a_row_flags_the_run_it_shows_when_runs_overlap(client):
    """The row shows the latest run by end_time, job monitoring judges the latest by start_time.

    A long run that began first and ended last is the row's run; its flags must be its own,
    not those of the short run that began after it.
    """
    daily_runs(client, "overlap", 7, 4, bytes_backed_up=10 * GIB)  # 10 minutes each
    long_run = {"start_time": "2026-05-11T20:00:00Z", "end_time": "2026-05-12T06:00:00Z"}
    report(client, "overlap-long", job_name="overlap", bytes_backed_up=10 * GIB, **long_run)
    report(
        client,
        "overlap-short",
        job_name="overlap",
        start_time="2026-05-12T02:00:00Z",
        end_time="2026-05-12T02:10:00Z",
        bytes_backed_up=GIB,
    )
    (job,) = client.get("/v1/jobs").get_json()
    assert (job["last_run"]["run_id"], job["flags"]) == ("overlap-short", ["size_drop"])

    row = row_of(page(client, "/"), "overlap")
    assert "10 h" in row  # the long run's duration: it is the row's run
    assert "unusual duration" in row
    assert "size dropped" not in row


def test_a_row_whose_run_is_not_the_jobs_latest_shows_the_jobs_state(client):
    """When runs overlap, the row's run (latest by end_time) may have succeeded while the
    job's latest by start_time failed: /v1/jobs says failing and Prometheus alerts, so the
    row must say so too, and sort with the failures (above a healthy job whose name comes
    first), not show a bare "Success"."""
    daily_runs(client, "zz-overlap", 8, 4)
    daily_runs(client, "aa-steady", 8, 4)
    long_run = {"start_time": "2026-05-11T20:00:00Z", "end_time": "2026-05-12T06:00:00Z"}
    report(client, "overlap-long", job_name="zz-overlap", **long_run)
    report(
        client,
        "overlap-short",
        job_name="zz-overlap",
        status="failure",
        start_time="2026-05-12T02:00:00Z",
        end_time="2026-05-12T02:10:00Z",
    )
    states = {job["job_name"]: job["state"] for job in client.get("/v1/jobs").get_json()}
    assert states == {"zz-overlap": "failing", "aa-steady": "ok"}

    text = page(client, "/")
    row = row_of(text, "zz-overlap")
    assert "Success" in row  # the row's own run, as issue 4 asks
    assert re.search(r'badge-state-failing"><svg[^>]*>.*?</svg>failing<', row)
    assert ">ok<" not in row_of(text, "aa-steady")  # where the status says it all: no badge
    assert job_order(text) == ["zz-overlap", "aa-steady"]


def overlapping_runs(client) -> None:
    """A job whose latest run by end_time (overlap-long) began before its latest by start."""
    daily_runs(client, "overlap", 7, 4, bytes_backed_up=10 * GIB)
    long_run = {"start_time": "2026-05-11T20:00:00Z", "end_time": "2026-05-12T06:00:00Z"}
    report(client, "overlap-long", job_name="overlap", **long_run)
    report(client, "overlap-short", job_name="overlap")


def test_a_rows_own_flags_are_computed_once_per_change_of_its_job(client, monkeypatch):
    """Judging a row's run sorts all the job's runs: not again on every page view."""
    overlapping_runs(client)
    judged = []
    real_run_flags = jobs.run_flags

    def run_flags(latest, *args):
        judged.append(latest.run_id)
        return real_run_flags(latest, *args)

    monkeypatch.setattr(jobs, "run_flags", run_flags)
    page(client, "/")
    page(client, "/")
    assert judged.count("overlap-long") == 1
    report(client, "other-job", job_name="other")  # another job's change: still cached
    page(client, "/")
    assert judged.count("overlap-long") == 1
    daily_runs(client, "overlap", 1, 1)  # a change of this job: judged again
    page(client, "/")
    assert judged.count("overlap-long") == 2


def test_a_row_whose_own_flags_fail_keeps_the_jobs_flags(client, monkeypatch, caplog):
    """As for /v1/jobs, one job's odd runs must not make the overview fail."""
    overlapping_runs(client)
    real_run_flags = jobs.run_flags

    def run_flags(latest, *args):
        if latest.run_id == "overlap-long":
            raise ArithmeticError("no flags for this one")
        return real_run_flags(latest, *args)

    monkeypatch.setattr(jobs, "run_flags", run_flags)
    assert "overlap-long" in row_of(page(client, "/"), "overlap")
    assert "no flags for this one" in caplog.text  # the traceback
    page(client, "/")
    logged = [record for record in caplog.records if "cannot judge" in record.getMessage()]
    assert len(logged) == 1  # once, not per view


# --- job history ---------------------------------------------------------------------------


def test_history_lists_runs_newest_first_in_pages(client):
    for day in range(1, 31):
        for hour in (1, 13):
            start = f"2026-04-{day:02d}T{hour:02d}:00:00Z"
            end = f"2026-04-{day:02d}T{hour:02d}:30:00Z"
            report(client, f"r-{day:02d}-{hour:02d}", start_time=start, end_time=end)
    url = "/job?job_name=postgres-daily&agent_id=db-01"
    first = page(client, url)
    ids = re.findall(r'class="run-id"><a href="/run/([^"]+)"', first)
    assert len(ids) == ui.HISTORY_PAGE_SIZE
    assert ids[:3] == ["r-30-13", "r-30-01", "r-29-13"]
    assert "Page 1 of 2" in first
    (older,) = hrefs(first, r"page=2")
    second = page(client, older)
    ids_2 = re.findall(r'class="run-id"><a href="/run/([^"]+)"', second)
    assert ids_2[0] == "r-05-13" and ids_2[-1] == "r-01-01" and len(ids_2) == 10
    assert 'rel="prev"' in second and 'rel="next"' not in second
    assert "Page 2 of 2" in page(client, url + "&page=99")  # past the end: the last page
    assert "Page 2 of 2" in page(client, url + "&page=" + "9" * 5000)  # beyond int()'s reach
    assert "Page 1 of 2" in page(client, url + "&page=²")  # a digit to isdigit(), not to int()


def test_history_chart_marks_failed_and_partial_runs_with_shape_and_word(client):
    report(client, "1", start_time="2026-05-01T02:00:00Z", end_time="2026-05-01T02:10:00Z")
    report(
        client,
        "2",
        status="failure",
        start_time="2026-05-02T02:00:00Z",
        end_time="2026-05-02T02:01:00Z",
    )
    report(
        client,
        "3",
        status="partial",
        bytes_backed_up=5,
        start_time="2026-05-03T02:00:00Z",
        end_time="2026-05-03T02:20:00Z",
    )
    text = page(client, "/job?job_name=postgres-daily&agent_id=db-01")
    chart = re.search(r'<svg class="history-chart".*?</svg>', text, re.S)[0]
    assert chart.count('class="mark-failure"') == 1  # no size: drawn in the duration panel
    assert chart.count('class="mark-partial"') == 2  # size and duration
    assert chart.count('class="mark-success"') == 1
    assert re.search(r'class="marker-text marker-text-failure"[^>]*>failed<', chart)
    assert re.search(r'class="marker-text marker-text-partial"[^>]*>partial<', chart)
    assert "<title>2026-05-02 02:00 UTC · failure · 1 min · —</title>" in chart
    assert 'href="/run/2"' in chart
    assert "style=" not in chart


def test_history_chart_words_stay_inside_the_chart_at_either_edge(client):
    """Pins the anchors of the first and last marks' words: start and end, not middle."""
    report(
        client,
        "1",
        status="failure",
        start_time="2026-05-01T02:00:00Z",
        end_time="2026-05-01T02:05:00Z",
    )
    report(client, "2", start_time="2026-05-02T02:00:00Z", end_time="2026-05-02T02:05:00Z")
    report(
        client,
        "3",
        status="partial",
        start_time="2026-05-03T02:00:00Z",
        end_time="2026-05-03T02:05:00Z",
    )
    chart = page(client, "/job?job_name=postgres-daily&agent_id=db-01")

    assert re.search(r'marker-text-failure"[^>]*text-anchor="start">failed<', chart)
    assert re.search(r'marker-text-partial"[^>]*text-anchor="end">partial<', chart)


@pytest.mark.parametrize(("hours_apart", "words"), [(3, 0), (48, 2)])
def test_history_chart_drops_the_words_when_two_marks_would_overprint(client, hours_apart, words):
    """Two failures hours apart among 20 daily runs printed 'failedfailed' on one line."""
    for day in range(1, 21):
        start = f"2026-04-{day:02d}T02:00:00Z"
        report(client, f"s{day}", start_time=start, end_time=start)
    for number, hour in enumerate((0, hours_apart)):
        start = f"2026-04-{10 + hour // 24:02d}T{4 + hour % 24:02d}:00:00Z"
        report(client, f"f{number}", status="failure", start_time=start, end_time=start)
    text = page(client, "/job?job_name=postgres-daily&agent_id=db-01")
    chart = re.search(r'<svg class="history-chart".*?</svg>', text, re.S)[0]

    assert chart.count('class="mark-failure"') == 2
    assert chart.count(">failed</text>") == words


@pytest.mark.parametrize(("failures", "words"), [(12, 12), (13, 0)])
def test_history_chart_drops_the_words_when_too_many_would_crowd(client, failures, words):
    """Pins CHART_MAX_LABELS: a word per failed run up to twelve, then shapes alone."""
    for day in range(1, failures + 1):
        start = f"2026-04-{day:02d}T02:00:00Z"
        report(client, f"f{day}", status="failure", start_time=start, end_time=start)
    text = page(client, "/job?job_name=postgres-daily&agent_id=db-01")
    chart = re.search(r'<svg class="history-chart".*?</svg>', text, re.S)[0]

    assert chart.count('class="mark-failure"') == failures
    assert chart.count(">failed</text>") == words


def test_history_chart_draws_the_latest_120_runs_only(client):
    """Pins CHART_MAX_RUNS: the chart and its caption stop at the latest 120 runs."""
    for hour in range(121):
        start = f"2026-05-{1 + hour // 24:02d}T{hour % 24:02d}:00:00Z"
        report(client, f"h{hour:03d}", start_time=start, end_time=start)
    text = page(client, "/job?job_name=postgres-daily&agent_id=db-01")
    chart = re.search(r'<svg class="history-chart".*?</svg>', text, re.S)[0]

    assert "Size and duration of the last 120 runs" in text
    assert 'href="/run/h120"' in chart and 'href="/run/h000"' not in chart


def test_history_lists_overlapping_runs_by_start_time(client):
    """Pins the history's order: newest start first, even when an older start ended later."""
    report(client, "long", start_time="2026-05-11T20:00:00Z", end_time="2026-05-12T06:00:00Z")
    report(client, "short", start_time="2026-05-12T02:00:00Z", end_time="2026-05-12T02:10:00Z")
    text = page(client, "/job?job_name=postgres-daily&agent_id=db-01")

    assert re.findall(r'class="run-id"><a href="/run/([^"]+)"', text) == ["short", "long"]


def test_history_chart_says_so_when_no_run_reports_a_size(client):
    """It drew an empty Size panel with an axis of 0 B, 1 B and 2 B."""
    report(client, "1", start_time="2026-05-01T02:00:00Z", end_time="2026-05-01T02:10:00Z")
    report(client, "2", start_time="2026-05-02T02:00:00Z", end_time="2026-05-02T02:10:00Z")
    chart = page(client, "/job?job_name=postgres-daily&agent_id=db-01")
    assert "No run of this job reports a size" in chart
    assert ">0 B<" not in chart and ">2 B<" not in chart
    assert "10 min" in chart  # the duration panel keeps its axis

    report(client, "3", bytes_backed_up=2048, start_time="2026-05-03T02:00:00Z")
    chart = page(client, "/job?job_name=postgres-daily&agent_id=db-01")
    assert "reports a size" not in chart and ">0 B<" in chart


def test_history_chart_times_carry_the_hour_while_ticks_are_under_two_days_apart(client):
    """Three days of runs put a tick every 18 h; labelled by date alone they read
    "01 May, 01 May, 02 May, 03 May, 04 May"."""
    for day in (1, 4):
        report(client, f"{day}", start_time=f"2026-05-0{day}T02:00:00Z")
    chart = page(client, "/job?job_name=postgres-daily&agent_id=db-01")
    tick = r'<text class="tick" x="[\d.]+" y="[\d.]+" text-anchor="\w+">([^<]+)<'
    ticks = re.findall(tick, chart)
    assert ticks[-5:] == [
        "01 May 02:00",
        "01 May 20:00",
        "02 May 14:00",
        "03 May 08:00",
        "04 May 02:00",
    ]


def test_history_chart_times_across_new_year_carry_the_year(client):
    report(client, "1", start_time="2025-12-29T02:00:00Z", end_time="2025-12-29T02:10:00Z")
    report(client, "2", start_time="2026-01-03T02:00:00Z", end_time="2026-01-03T02:10:00Z")
    chart = page(client, "/job?job_name=postgres-daily&agent_id=db-01")
    assert ">29 Dec 02:00 2025<" in chart and ">03 Jan 02:00 2026<" in chart


def test_history_chart_of_a_single_run_is_centred(client):
    report(client, bytes_backed_up=5)
    text = page(client, "/job?job_name=postgres-daily&agent_id=db-01")
    grid = re.search(r'<line class="grid" x1="([\d.]+)" x2="([\d.]+)"', text)
    middle = (float(grid[1]) + float(grid[2])) / 2
    marks = re.findall(r'<circle class="mark-success" cx="([\d.]+)"', text)
    assert [float(x) for x in marks] == [middle, middle]


def test_history_shows_the_error_column_only_when_a_run_has_an_error(client):
    report(client, "ok")
    url = "/job?job_name=postgres-daily&agent_id=db-01"
    assert '<th scope="col">Error</th>' not in page(client, url)
    report(client, "bad", status="failure", error="disk full")
    text = page(client, url)
    assert '<th scope="col">Error</th>' in text and 'title="disk full">disk full<' in text


def test_history_of_an_unknown_job_is_a_404_page(client):
    text = page(client, "/job?job_name=nope&agent_id=db-01", status=404)
    assert "No runs for this job" in text


# --- one run -------------------------------------------------------------------------------


def test_run_page_shows_every_field_the_error_and_pretty_metadata(client):
    report(
        client,
        "pg-1",
        status="failure",
        bytes_backed_up=3 * GIB,
        encrypted=False,
        encryption_status="failed",
        error="pg_dump: error: connection refused\nexit 1",
        backup_url="https://minio.lan/pg/1",
        metadata={"tool": "pg_dump", "tables": [1, 2]},
    )
    text = page(client, "/run/pg-1")
    for shown in [
        "postgres-daily",
        "db-01",
        "Failed",
        "2026-05-12 02:00 UTC",
        "2026-05-12 02:04 UTC",
        "2026-05-12T02:00:00Z",
        "4 min 33 s",
        "3.00 GiB",
        "3,221,225,472 bytes",
        "encryption failed",
        "2026-05-12T12:00:00.000000Z",  # received_at
    ]:
        assert shown in text, shown
    error_box = re.search(r'<section class="error-box".*?</section>', text, re.S)[0]
    assert "<pre>pg_dump: error: connection refused\nexit 1</pre>" in error_box
    assert "{\n  &#34;tool&#34;: &#34;pg_dump&#34;,\n  &#34;tables&#34;: [\n    1," in text
    assert (
        '<a href="https://minio.lan/pg/1" rel="noopener noreferrer" target="_blank" class="url">'
        in text
    )
    assert "/job?job_name=postgres-daily&amp;agent_id=db-01" in text


def test_run_page_links_backup_url_only_when_it_is_http_or_https(app, client):
    # The API refuses such a URL; a file written by hand is shown, never made a link.
    run = {**make_run("hand-made"), "backup_url": "javascript:alert(1)"}
    run["received_at"] = "2026-05-12T02:05:00Z"
    app.extensions["store"].save(run)
    text = page(client, "/run/hand-made")
    assert 'href="javascript' not in text
    assert 'javascript:alert(1)</span> <span class="muted">(not an http or https link)' in text


def test_run_page_links_a_backup_url_whose_scheme_is_in_capitals(client):
    """Pins that the scheme is read without case, as the schema accepts HTTPS:// too."""
    report(client, "caps", backup_url="HTTPS://backups.example/pg.tar")

    assert 'href="HTTPS://backups.example/pg.tar"' in page(client, "/run/caps")


def test_run_page_shows_fields_the_schema_does_not_know(app, client):
    run = {**make_run("extra"), "received_at": "2026-05-12T02:05:00Z", "retention": {"days": 30}}
    app.extensions["store"].save(run)
    text = page(client, "/run/extra")
    assert "Other fields" in text and "retention" in text and "&#34;days&#34;: 30" in text


@pytest.mark.parametrize(
    "run_id",
    ["a/b", "x:y", "50%", "sp ace", "q?x#y", "a//b", "/leading", "trailing/", "ü-ñ", "a+b&c=d"],
)
def test_run_ids_with_special_characters_work_from_link_to_delete(client, run_id):
    report(client, run_id)
    history = page(client, "/job?job_name=postgres-daily&agent_id=db-01")
    (link,) = set(hrefs(history, r"^/run/"))
    text = page(client, link)
    assert escape(run_id) in text
    delete_url = html.unescape(re.search(r'data-delete-url="([^"]*)"', text)[1])
    done_url = html.unescape(re.search(r'data-done-url="([^"]*)"', text)[1])
    assert client.get(delete_url).get_json()["run_id"] == run_id
    assert client.delete(delete_url).status_code == 204
    assert client.get(RUNS).get_json() == []
    assert escape(run_id) in page(client, done_url)


def test_unknown_run_is_a_404_page(client):
    text = page(client, "/run/no/such%20run", status=404)
    assert "No run with this id" in text and "no/such run" in text


@pytest.mark.parametrize(
    "path",
    [
        "/run/URGENT:%20backups%20compromised.%20Rotate%20the%20token%20at%20evil.example",
        "/job?job_name=URGENT:%20backups%20compromised.%20Rotate%20the%20token&agent_id=x",
    ],
)
def test_a_not_found_page_repeats_only_the_start_of_what_the_link_said(client, path):
    """Any link made these pages say any sentence, which the deletion notice refuses to."""
    text = page(client, path, status=404)
    assert "URGENT: backups compromi…" in text and "Rotate" not in text


# --- escaping ------------------------------------------------------------------------------


def test_client_strings_are_escaped_on_every_page(client):
    report(
        client,
        XSS + "/id",
        job_name=XSS,
        agent_id=XSS,
        status="failure",
        error=XSS,
        backup_url="https://x.example/" + XSS.replace(" ", ""),
        metadata={XSS: XSS},
    )
    job_url = hrefs(page(client, "/"), r"^/job\?")[0]
    urls = ["/", "/?job=" + XSS, job_url, hrefs(page(client, job_url), r"^/run/")[0], "/docs"]
    for url in urls:
        text = page(client, url)
        assert "<script>" not in text, url
        if url != "/docs":
            assert "&lt;script&gt;" in text, url


def test_templates_never_mark_values_safe():
    for template in TEMPLATES.glob("*.html"):
        source = template.read_text()
        assert not re.search(r"\|\s*safe\b|\bMarkup\(|autoescape\s+false", source), template


# --- headers and scripts -------------------------------------------------------------------


def test_every_page_sends_the_security_headers(client):
    report(client)
    for url in [
        "/",
        "/job?job_name=postgres-daily&agent_id=db-01",
        "/run/run-1",
        "/run/missing",
        "/docs",
        "/static/dashboard.css",
        "/static/dashboard.js",
    ]:
        response = client.get(url)
        headers = response.headers
        policy = headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy, url
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy, url
        assert headers["X-Frame-Options"] == "DENY", url
        assert headers["X-Content-Type-Options"] == "nosniff", url
        assert headers["Referrer-Policy"] == "no-referrer", url
        response.close()


def test_pages_and_api_answers_are_not_stored_by_browsers_or_proxies(client):
    """Behind auth, and about runs that may be deleted: the Back button after a Delete
    showed the deleted run's page from the browser's cache."""
    report(client)
    for url in ["/", "/job?job_name=postgres-daily&agent_id=db-01", "/run/run-1", RUNS, "/metrics"]:
        response = client.get(url)
        assert response.headers["Cache-Control"] == "no-store", url
        response.close()
    static = client.get("/static/dashboard.css")
    assert "no-store" not in static.headers.get("Cache-Control", "")  # the same for everyone
    static.close()


def test_pages_have_no_inline_script_or_style_the_policy_would_block(client):
    report(client, status="failure", error="x", metadata={"a": 1})
    for url in ["/", "/job?job_name=postgres-daily&agent_id=db-01", "/run/run-1", "/docs"]:
        text = page(client, url)
        scripts = re.findall(r"<script\b[^>]*>", text)
        assert scripts == ['<script src="/static/dashboard.js" defer>'], url
        assert not re.search(r"\sstyle=|<style|\son[a-z]+=", text), url


def test_unknown_paths_and_wrong_methods_stay_json(client):
    missing = client.get("/no/such/page")
    assert missing.status_code == 404 and missing.get_json() == {"error": "not found"}
    wrong = client.put(RUNS)
    assert wrong.status_code == 405 and "error" in wrong.get_json()


# --- auth and cross-site deletes -----------------------------------------------------------


@pytest.mark.parametrize("url", ["/", "/docs", "/run/run-1", "/job?job_name=a&agent_id=b"])
def test_pages_need_the_same_auth_as_the_api(app_config, url):
    config = {**app_config, "LOCALHOST_BYPASS": False, "AUTH_USER": "op", "AUTH_PASS": "pw"}
    application = app_module.create_app(config)
    try:
        client = application.test_client()
        refused = client.get(url)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Basic ")
        basic = "Basic " + base64.b64encode(b"op:pw").decode()
        assert client.get(url, headers={"Authorization": basic}).status_code in (200, 404)
    finally:
        application.extensions["store"].close()


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://localhost.evil.example"},
    ],
)
def test_a_cross_site_delete_is_refused(client, headers):
    report(client)
    response = client.delete(RUNS + "/run-1", headers=headers)
    assert response.status_code == 403
    assert client.get(RUNS + "/run-1").status_code == 200


def test_the_dashboards_own_same_origin_delete_is_accepted(client):
    report(client)
    headers = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    assert client.delete(RUNS + "/run-1", headers=headers).status_code == 204
    assert client.get(RUNS + "/run-1").status_code == 404


def test_no_get_or_form_post_on_a_page_deletes(client):
    report(client)
    page(client, "/run/run-1?delete=1&method=DELETE&_method=DELETE")
    assert client.post("/run/run-1", data={"_method": "DELETE"}).status_code == 405
    assert client.get("/v1/backup-runs/run-1?_method=DELETE").status_code == 200
    assert client.get(RUNS + "/run-1").status_code == 200


# --- docs ----------------------------------------------------------------------------------


def test_docs_describe_every_api_endpoint(app, client):
    text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", page(client, "/docs"))))
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("ui."):
            continue
        path = re.sub(r"<[^>]*?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert f"{method} {path}" in text, f"{method} {path}"


def test_docs_list_parameters_headers_auth_fields_and_curl(app, client):
    text = html.unescape(page(client, "/docs"))
    for name in ["job_name", "agent_id", "status", "since", "until", "encrypted", "q", "limit"]:
        assert f"<code>{name}</code></th>" in text, name
    assert "<code>cursor</code></th>" in text
    for needed in ["X-Total-Count", 'rel="next"', "Bearer", "X-API-Key", "HTTP Basic", "curl -sS"]:
        assert needed in text, needed
    for field in app.extensions["validator"].schema["properties"]:
        assert f"<code>{field}</code></th>" in text, field
    assert "/openapi.json" in text
    limits = f"1 to {app_module.MAX_LIMIT}, default {app_module.DEFAULT_LIMIT}"
    assert limits in text
    assert "<td>string (ISO 8601 date-time)</td>" in text  # start_time's type, said in words


def test_docs_list_every_error_status_the_contract_declares(client):
    """415 (a compressed body) was in the README and openapi.json but missing from /docs."""
    contract = json.loads((Path(app_module.__file__).parent / "openapi.json").read_text())
    declared = {
        status
        for operations in contract["paths"].values()
        for operation in operations.values()
        if isinstance(operation, dict)
        for status in operation.get("responses", {})
        if status[0] in "45"
    }
    errors = page(client, "/docs").split("<h2>Errors</h2>", 1)[1].split("</section>", 1)[0]

    assert declared and {s for s in declared if f"<dt><code>{s}</code></dt>" not in errors} == set()


def test_docs_give_this_servers_body_limit(app_config):
    """It said 1 MiB whatever MAX_BODY_BYTES was."""
    app = app_module.create_app({**app_config, "MAX_BODY_BYTES": str(4 * 1024 * 1024)})
    try:
        text = page(app.test_client(), "/docs")
    finally:
        app.extensions["store"].close()
    assert "for a body over 4 MiB" in text and "1 MiB" not in text


# --- formatting ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (None, "—"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (1536, "1.50 KiB"),
        (10239, "10.0 KiB"),  # rounds to 10.0: three digits, not "10.00"
        (102399, "100 KiB"),
        (1024**2 - 1, "1.00 MiB"),  # rounds to 1024 KiB, which is the next unit
        (GIB - 1, "1.00 GiB"),
        (15 * 1024**2, "15.0 MiB"),
        (GIB, "1.00 GiB"),
        (412 * GIB, "412 GiB"),
        (5 * 1024**4, "5.00 TiB"),
        (2**63 - 1, "8.00 EiB"),
    ],
)
def test_sizes_are_in_binary_units(size, text):
    assert ui.format_size(size) == text


@pytest.mark.parametrize(
    ("size", "text"), [(4 * GIB, "4 GiB"), (2.5 * GIB, "2.5 GiB"), (100 * GIB, "100 GiB")]
)
def test_axis_sizes_drop_trailing_zeros(size, text):
    assert ui.format_size(int(size), trim=True) == text


@pytest.mark.parametrize(
    ("largest", "top"),
    [
        (0, 2),  # a job that reports no sizes: 0, 1, 2 B
        (1, 2),
        (3, 4),
        (5, 10),  # 5 would put a "2 B" tick at 2.5 B
        (90.6 * GIB, 100 * GIB),
        (2.04 * GIB, 4 * GIB),
        (212 * 1024**2, 400 * 1024**2),
    ],
)
def test_size_axis_tops_are_round_numbers(largest, top):
    assert ui.nice_size_ceiling(largest) == top


@pytest.mark.parametrize(
    ("first", "last", "labels"),
    [
        ("2022-01-01", "2026-01-01", ["01 Jan 2022", "01 Jan 2023", "01 Jan 2024"]),
        ("2026-01-01", "2026-03-01", ["01 Jan", "15 Jan", "30 Jan"]),
        ("0141-01-01", "0145-01-01", ["01 Jan 0141", "01 Jan 0142", "01 Jan 0143"]),
    ],
)
def test_time_ticks_name_the_year_when_the_runs_span_more_than_one(first, last, labels):
    start = datetime.fromisoformat(first).replace(tzinfo=UTC).timestamp()
    span = datetime.fromisoformat(last).replace(tzinfo=UTC).timestamp() - start
    ticks = ui._time_ticks(start, span, lambda t: t)
    assert [label for _, label in ticks][:3] == labels


@pytest.mark.parametrize(
    ("largest", "top"),
    [(0, 1), (9, 10), (62, 120), (1900, 3600), (90_000, 172_800), (10**6, 1_209_600)],
)
def test_duration_axis_tops_are_round_numbers(largest, top):
    assert ui.nice_duration_ceiling(largest) == top


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (2.5, "2.5 s"),
        (9.94, "9.9 s"),
        (9.96, "10 s"),
        (45, "45 s"),
        (273, "4 min 33 s"),
        (3720, "1 h 02 min"),
        (120, "2 min"),
        (7200, "2 h"),
        (47 * 3600, "47 h"),
        (3 * 86400 + 7200, "3 d 2 h"),
        (2 * 86400, "2 d"),
        (-5, "—"),  # a hand-written file may end before it starts: no "-5 s"
        (None, "—"),
    ],
)
def test_durations_read_like_people_say_them(seconds, text):
    assert ui.format_duration(seconds) == text


@pytest.mark.parametrize(
    ("ago", "text"),
    [
        (-5, "in the future"),
        (30, "just now"),
        (600, "10 min ago"),
        (7200, "2 h ago"),
        (47 * 3600, "47 h ago"),
        (5 * 86400, "5 d ago"),
    ],
)
def test_ages_are_coarse(ago, text):
    assert ui.format_age(1_000_000 - ago, 1_000_000) == text
