"""The dashboard in a real headless Chromium (Debian's package), driven by Playwright for Python.

Each test starts the real server (`python app.py` under waitress) and talks to it as an
operator's browser would: no Flask test client, no mocks. Playwright never downloads a browser:
it is pointed at /usr/bin/chromium, which scripts/test.sh installs with apt.
"""

from __future__ import annotations

import html
import http.server
import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from conftest import ROOT, make_run
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sample_runs import sample_runs

from store import file_name_for

CHROMIUM = "/usr/bin/chromium"
# Root in a container needs --no-sandbox; the rest keep a closed network quiet and fast.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
RUNS = "/v1/backup-runs"
XSS = "<img src=x onerror=alert(1)><script>alert(2)</script>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium for the module's tests; each test gets its own context."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Problems:
    """Console errors and uncaught script errors a page reported; a test ends with none."""

    def __init__(self, page: Page):
        self.messages: list[str] = []
        page.on(
            "console",
            lambda message: message.type == "error" and self.messages.append(message.text),
        )
        page.on("pageerror", lambda error: self.messages.append(str(error)))


def open_page(browser: Browser, **context_options) -> tuple[Page, Problems]:
    """Open a page in a fresh desktop-sized context; the caller closes its context."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, **context_options)
    context.set_default_timeout(10_000)
    page = context.new_page()
    return page, Problems(page)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page whose console must stay free of errors (a CSP refusal would show there)."""
    page, problems = open_page(browser)
    yield page
    page.context.close()
    assert problems.messages == []


def post_runs(server, runs: list[dict], auth: tuple[str, str] | None = None) -> None:
    """Report runs to the live server through the API."""
    with requests.Session() as session:
        session.auth = auth
        for run in runs:
            response = session.post(server.url + RUNS, json=run, timeout=10)
            assert response.status_code == 201, response.text


def run_exists(server, run_id: str, auth: tuple[str, str] | None = None) -> bool:
    """Ask the API whether run_id is stored."""
    path = requests.utils.quote(run_id, safe="")  # a '/' left as is lets '..' be resolved
    response = requests.get(f"{server.url}{RUNS}/{path}", auth=auth, timeout=10)
    assert response.status_code in (200, 404), response.text
    return response.status_code == 200


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot into the git-ignored test-artifacts folder."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_overview_loads_and_filters(live_server_factory, page: Page):
    server = live_server_factory()
    post_runs(
        server,
        [
            make_run("pg-1", bytes_backed_up=2 * 1024**3),
            make_run("mail-1", job_name="mail-archive", agent_id="mx-01", status="failure"),
            make_run("photos-1", job_name="photos", agent_id="nas-01", status="partial"),
        ],
    )
    page.goto(server.url + "/")
    expect(page).to_have_title("Overview · Backup Registry")
    rows = page.locator("table.jobs tbody tr")
    expect(rows).to_have_count(3)
    # Problems first: the failed job, then the partial one.
    expect(rows.first).to_contain_text("mail-archive")
    expect(rows.first).to_contain_text("Failed")
    expect(rows.nth(1)).to_contain_text("Partial")
    expect(page.locator(".card-failure .card-count")).to_have_text("1")

    page.locator("input[name=job]").fill("GRES")  # job names match case-insensitively
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("postgres-daily")
    expect(rows.first).to_contain_text("2.00 GiB")

    page.get_by_role("link", name="Clear").click()
    page.locator("select[name=status]").select_option("failure,partial")  # submits on change
    expect(page).to_have_url(re.compile(r"status=failure%2Cpartial"))
    expect(rows).to_have_count(2)

    page.get_by_role("link", name="Job", exact=True).click()  # sort by job name
    expect(rows.first).to_contain_text("mail-archive")
    expect(rows.nth(1)).to_contain_text("photos")
    page.get_by_role("link", name="Job", exact=True).click()  # and the other way
    expect(rows.first).to_contain_text("photos")

    page.locator("select[name=agent]").select_option("nas-01")  # each filter menu submits
    expect(page).to_have_url(re.compile(r"agent=nas-01"))
    expect(rows).to_have_count(1)


def test_filter_menus_show_the_address_s_filters_after_back(live_server_factory, page: Page):
    """Chromium restored the menus' last choices on Back: the list was unfiltered while the
    Status menu still read "Failed", and choosing it again did nothing. (A helper's finding.)"""
    server = live_server_factory()
    post_runs(server, [make_run("ok-1"), make_run("bad-1", job_name="mail", status="failure")])
    page.goto(server.url + "/")
    status = page.locator("select[name=status]")

    status.select_option("failure")
    expect(page).to_have_url(re.compile(r"status=failure"))
    page.go_back()

    expect(page).to_have_url(server.url + "/")
    expect(status).to_have_value("")
    expect(page.locator("table.jobs tbody tr")).to_have_count(2)


def test_a_filter_menu_changed_with_the_keyboard_waits_for_enter(live_server_factory, page: Page):
    """Each arrow key sent the form and the page reloaded with focus at its top, so a keyboard
    user could not step past the first option. (A helper's finding.)"""
    server = live_server_factory()
    post_runs(server, [make_run("ok-1"), make_run("bad-1", job_name="mail", status="failure")])
    page.goto(server.url + "/")
    status = page.locator("select[name=status]")

    status.focus()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.wait_for_timeout(300)  # time enough for a submission to have begun
    expect(page).to_have_url(server.url + "/")
    chosen = status.input_value()
    assert chosen != ""
    page.keyboard.press("Enter")

    expect(page).to_have_url(re.compile("status=" + re.escape(chosen).replace(",", "%2C")))


def test_without_javascript_the_run_page_says_how_to_delete(live_server_factory, browser):
    """The Delete button did nothing without JavaScript, and said nothing. (A helper's finding.)"""
    server = live_server_factory()
    post_runs(server, [make_run("r1")])
    page, _ = open_page(browser, java_script_enabled=False)
    try:
        page.goto(server.url + "/run/r1")
        expect(page.get_by_role("button", name="Delete run…")).to_be_hidden()
        expect(page.locator(".danger-zone")).to_contain_text("DELETE /v1/backup-runs/r1")
        js_page, _ = open_page(browser)
        js_page.goto(server.url + "/run/r1")
        expect(js_page.get_by_role("button", name="Delete run…")).to_be_visible()
        expect(js_page.locator("#delete-without-script")).to_be_hidden()
        js_page.context.close()
    finally:
        page.context.close()


def test_open_a_run_and_delete_it_through_the_confirmation(live_server_factory, browser):
    # Behind Basic auth with the localhost bypass off, as an operator on the LAN would be.
    auth = ("operator", "s3cret pass")
    server = live_server_factory(
        {"AUTH_USER": auth[0], "AUTH_PASS": auth[1], "LOCALHOST_BYPASS": "0"}
    )
    run_id = "nightly/2026-05-12 01:00:00+02:00 50%"
    post_runs(server, [make_run(run_id, error="tar: /srv: file changed as we read it")], auth)
    assert requests.get(server.url + "/", timeout=10).status_code == 401

    page, problems = open_page(browser, http_credentials={"username": auth[0], "password": auth[1]})
    try:
        page.goto(server.url + "/")
        page.locator("table.jobs tbody tr").first.get_by_role("link", name="Success").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text(run_id)
        expect(page.locator(".error-box pre")).to_have_text("tar: /srv: file changed as we read it")

        dialogs: list[str] = []

        def answer(accept: bool):
            def handle(dialog) -> None:
                dialogs.append(dialog.message)
                dialog.accept() if accept else dialog.dismiss()

            return handle

        page.once("dialog", answer(False))
        page.get_by_role("button", name="Delete run…").click()
        expect(page.get_by_role("button", name="Delete run…")).to_be_enabled()
        assert len(dialogs) == 1 and run_id in dialogs[0]
        assert run_exists(server, run_id, auth)  # cancelled: nothing happened

        page.once("dialog", answer(True))
        page.get_by_role("button", name="Delete run…").click()
        page.wait_for_url(re.compile(r"/\?deleted="))
        expect(page.get_by_role("status")).to_contain_text(f"Run {run_id} was deleted.")
        expect(page.get_by_text("No backup runs have been reported yet")).to_be_visible()
        assert not run_exists(server, run_id, auth)
    finally:
        page.context.close()
    assert problems.messages == []


def test_a_refused_delete_says_why_and_leaves_the_button_usable(live_server_factory, browser):
    """A DELETE the API refuses shows its error, stays on the run, and re-enables the button."""
    server = live_server_factory()
    post_runs(server, [make_run("kept")])
    page, problems = open_page(browser)
    try:
        page.goto(server.url + "/")
        page.locator("table.jobs tbody tr").first.get_by_role("link", name="Success").click()
        run_url = page.url
        server.store_dir.rename(server.store_dir.parent / "moved-away")  # the API answers 503
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Delete run…").click()

        expect(page.locator("#delete-status")).to_have_text(
            re.compile(r"^Not deleted: cannot delete run: .*missing")
        )
        expect(page.get_by_role("button", name="Delete run…")).to_be_enabled()
        assert page.url == run_url
    finally:
        page.context.close()
    # The browser reports the failed fetch itself; nothing else may show.
    assert [m for m in problems.messages if "status of 503" not in m] == []


def test_a_run_id_with_dot_dot_segments_opens_and_deletes_that_run_only(
    live_server_factory, page: Page
):
    """Browsers drop '..' segments from a URL's path: an id with '/../' must not be left as
    path segments, or its link opens (and its delete button deletes) another run."""
    server = live_server_factory()
    trap = "x/../victim"
    post_runs(
        server,
        [
            make_run("victim", job_name="important-db"),
            make_run(trap, job_name="scratch", status="failure"),
        ],
    )
    page.goto(server.url + "/?job=scratch")
    page.locator("table.jobs tbody tr").first.get_by_role("link", name="Failed").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(trap)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete run…").click()
    page.wait_for_url(re.compile(r"/\?deleted="))
    assert not run_exists(server, trap)
    assert run_exists(server, "victim")


def test_another_sites_form_cannot_write_through_the_operators_browser(
    live_server_factory, browser
):
    # The localhost bypass is on, so the server trusts this browser: only the Origin check
    # stands between a page on another site and the store. A form cannot send DELETE, and a
    # cross-origin fetch DELETE needs a CORS preflight this server never grants, so a POST
    # is what an attacker's page can send; the API tests check DELETE with a foreign Origin.
    server = live_server_factory()
    evil_origin = "http://localhost:9"
    forged = make_run("forged")
    # A text/plain form body is 'name=value': split the JSON so that the '=' lands in a string.
    text = json.dumps({**forged, "pad": ""})[:-2]
    attack = f"""<!doctype html><title>cute cats</title>
    <form method="post" enctype="text/plain" action="{server.url}{RUNS}">
      <input name="{html.escape(text)}" value="{html.escape('"}')}">
    </form>
    <script>document.forms[0].submit()</script>"""
    page, _ = open_page(browser)  # the refusal is logged to the console: that is expected
    try:
        page.route(
            evil_origin + "/**",
            lambda route: route.fulfill(status=200, content_type="text/html", body=attack),
        )
        page.goto(evil_origin + "/cats.html")
        page.wait_for_url(server.url + RUNS)
        expect(page.locator("body")).to_contain_text("cross-site request refused")
    finally:
        page.context.close()
    assert not run_exists(server, "forged")
    # The same body from a script (no Origin) is a valid report: the refusal was the Origin's.
    assert requests.post(server.url + RUNS, data=text + '="}', timeout=10).status_code == 201


def test_script_in_a_job_name_shows_as_text(live_server_factory, page: Page):
    server = live_server_factory()
    post_runs(server, [make_run("xss", job_name=XSS, agent_id=XSS, status="failure", error=XSS)])
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    page.goto(server.url + "/")
    expect(page.locator("table.jobs tbody th").first).to_have_text(XSS)
    page.get_by_role("link", name=XSS).click()  # the job's history
    expect(page.get_by_role("heading", level=1)).to_have_text(XSS)
    page.locator("table.runs tbody td.run-id a").click()
    expect(page.locator(".error-box pre")).to_have_text(XSS)
    expect(page.locator(".fields dd").nth(1)).to_have_text(XSS)  # the agent

    assert page.locator("img[src=x], main script").count() == 0
    assert dialogs == []


def test_a_job_of_the_jobs_file_that_never_reported_is_named_until_it_does(
    live_server_factory, page: Page, tmp_path: Path
):
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(
        json.dumps(
            {"jobs": [{"job_name": "offsite-sync", "agent_id": "nas-01", "cron": "0 3 * * *"}]}
        )
    )
    server = live_server_factory({"JOBS_FILE": str(jobs_file)})
    post_runs(server, [make_run("pg-1")])

    page.goto(server.url + "/")
    section = page.get_by_role("region", name="Expected, never reported")
    expect(section).to_contain_text("offsite-sync on nas-01")
    expect(section.locator(".badge-state-new")).to_have_text("new")
    expect(section).to_contain_text("03:00")
    expect(page.locator("table.jobs tbody tr")).to_have_count(1)  # only the job that reported

    post_runs(server, [make_run("sync-1", job_name="offsite-sync", agent_id="nas-01")])
    page.reload()
    expect(section).to_have_count(0)
    expect(page.locator("table.jobs tbody tr")).to_have_count(2)


PROBING_PAGE = """<!doctype html><script>
function probe(url) {
  return new Promise((done) => {
    const link = document.createElement("link");
    link.rel = "prefetch";
    link.href = url;
    link.onload = () => done("load");
    link.onerror = () => done("error");
    document.head.append(link);
  });
}
window.probed = Promise.all([probe("%s/run/exists"), probe("%s/run/missing")]);
</script>"""


def test_a_page_of_another_site_cannot_tell_which_runs_exist(live_server_factory, browser: Browser):
    """Another site's page on this machine (here 127.0.0.2) prefetched /run/ID: through the
    localhost bypass it saw 'load' for a run that exists and 'error' for one that does not."""
    server = live_server_factory()
    post_runs(server, [make_run("exists")])
    page_bytes = (PROBING_PAGE % (server.url, server.url)).encode()

    class ProbingPage(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page_bytes)

        def log_message(self, *args):
            pass

    other_site = http.server.ThreadingHTTPServer(("127.0.0.2", 0), ProbingPage)
    threading.Thread(target=other_site.serve_forever, daemon=True).start()
    page, _ = open_page(browser)  # its console has the refusals: not this test's concern
    try:
        page.goto(f"http://127.0.0.2:{other_site.server_address[1]}/")
        exists, missing = page.evaluate("window.probed")
    finally:
        page.context.close()
        other_site.shutdown()
        other_site.server_close()

    assert exists == missing == "error"


def test_a_text_direction_control_in_stored_text_reorders_only_that_text(
    live_server_factory, page: Page, tmp_path: Path
):
    """U+202E in a job name copied into the store must not reverse the page's own words."""
    # The API refuses such text in a report; files copied in may hold it, and can be deleted.
    runs = [make_run("rlo", job_name="\u202epostgres"), make_run("\u202er1")]
    write_runs(tmp_path / "store", runs)
    server = live_server_factory(store_dir=tmp_path / "store")
    deleted = requests.delete(server.url + "/v1/backup-runs/%E2%80%AEr1", timeout=10)
    assert deleted.status_code == 204

    page.goto(server.url + "/run/rlo")
    crumbs = page.locator("nav.breadcrumb")
    job_link = crumbs.get_by_role("link").nth(1).bounding_box()
    run_word = crumbs.locator("span", has_text="Run").bounding_box()
    assert job_link["x"] < run_word["x"]  # Overview, then the job, then Run: left to right

    page.goto(server.url + "/?deleted=%E2%80%AEr1")
    notice = page.get_by_role("status")
    expect(notice).to_contain_text("was deleted.")
    code = notice.locator("code").bounding_box()
    words = page.evaluate(
        """() => {
            const range = document.createRange();
            const node = [...document.querySelector('.notice-done').childNodes].pop();
            range.selectNodeContents(node);
            return range.getBoundingClientRect().x;
        }"""
    )
    assert code["x"] < words  # "Run (id) was deleted.", left to right


def test_a_direction_control_in_stored_text_is_isolated_in_titles_and_the_dialog(
    live_server_factory, page: Page, tmp_path: Path
):
    """A title or a dialog is plain text, out of CSS's reach: U+202E in a job name reversed
    ' on db-01 · Backup Registry' after it in the browser's tab. A U+2069 before it closed the
    isolate around it early, so the text's own direction controls are dropped."""
    write_runs(tmp_path / "store", [make_run("\u2069\u202er2", job_name="\u2069\u202epostgres")])
    server = live_server_factory(store_dir=tmp_path / "store")
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    page.goto(server.url + "/job?job_name=%E2%81%A9%E2%80%AEpostgres&agent_id=db-01")
    assert page.title() == "\u2068postgres\u2069 on \u2068db-01\u2069 · Backup Registry"
    page.goto(server.url + "/run/%E2%81%A9%E2%80%AEr2")
    assert page.title() == "Run \u2068r2\u2069 · Backup Registry"
    page.get_by_role("button", name="Delete").click()

    expect(page.locator("#delete-status")).to_have_text("")
    assert dialogs and dialogs[0].startswith("Delete run “\u2068r2\u2069”?")


def test_a_direction_control_in_a_stored_link_leaves_the_note_after_it_alone(
    live_server_factory, page: Page, tmp_path: Path
):
    """A backup_url that is no http link shows with a note; U+202E in the stored text turned
    the note itself around: "(knil sptth ro ptth na ton)". (A helper's finding.)"""
    write_runs(tmp_path / "store", [make_run("ftp", backup_url="ftp://host/\u202eevil-path")])
    server = live_server_factory(store_dir=tmp_path / "store")

    page.goto(server.url + "/run/ftp")
    note = page.locator("span.muted", has_text="not an http or https link")
    first_x, last_x = note.evaluate(
        """(span) => {
            const text = span.firstChild, range = document.createRange();
            const x = (at) => (range.setStart(text, at), range.setEnd(text, at + 1),
                               range.getBoundingClientRect().x);
            return [x(0), x(text.length - 1)];
        }"""
    )
    assert first_x < last_x  # "(" left of ")": the note reads left to right


def test_the_longest_names_allowed_do_not_widen_the_pages(live_server_factory, page: Page):
    """200 characters without a space, the most a name may hold, wrap instead of scrolling."""
    server = live_server_factory()
    long_job, long_agent = "J" * 200, "A" * 200
    post_runs(server, [make_run("long", job_name=long_job, agent_id=long_agent)])
    for path in ["/", f"/job?job_name={long_job}&agent_id={long_agent}", "/run/long"]:
        page.goto(server.url + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 1280, f"{path} is {width} px wide"


def test_the_overview_sorts_on_a_small_phone(live_server_factory, page: Page):
    """At 375 px the header row was hidden: a touch screen could not sort, and its links took
    keyboard focus unseen. (A helper's finding.)"""
    server = live_server_factory()
    post_runs(server, [make_run("a-1", job_name="alpha"), make_run("z-1", job_name="zulu")])
    page.set_viewport_size({"width": 375, "height": 740})
    page.goto(server.url + "/")
    job = page.get_by_role("link", name="Job", exact=True)

    expect(job).to_be_visible()
    assert job.bounding_box()["width"] > 10  # not clipped to a pixel
    job.click()

    expect(page).to_have_url(re.compile(r"sort=job"))
    expect(page.locator("table.jobs tbody tr").first).to_contain_text("alpha")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375


def test_nothing_sticks_out_sideways_on_a_small_phone(live_server_factory, browser, tmp_path):
    """At 375 px (an iPhone SE, a small Android) the relative ages and /docs's parameter
    tables ran past the right edge, so every page scrolled sideways."""
    write_runs(tmp_path / "store", sample_runs(datetime.now(UTC)))
    server = live_server_factory(store_dir=tmp_path / "store")
    page, problems = open_page(browser, color_scheme="light")
    try:
        page.set_viewport_size({"width": 375, "height": 740})
        for path in [
            "/",
            "/job?job_name=photos-offsite&agent_id=nas-01",
            "/docs",
            f"/job?job_name={'J' * 200}&agent_id=nas-01",  # no such job: the not-found page
        ]:
            page.goto(server.url + path)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 375, f"{path} is {width} px wide"
    finally:
        page.context.close()
    # The not-found page is a 404, which Chromium reports; nothing else may be.
    assert problems.messages == [
        "Failed to load resource: the server responded with a status of 404 (NOT FOUND)"
    ]


def test_a_row_the_jobs_state_calls_failing_carries_the_failure_bar(live_server_factory, page):
    """Runs overlap: the row shows a long success that ended last, job monitoring judges the
    failure that began later. The row sorts with the failures and must look like one."""
    server = live_server_factory()
    now = datetime.now(UTC)

    def at(hours_ago: float) -> str:
        return (now - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")

    daily = [
        make_run(
            f"d{day}", job_name="overlap", start_time=at(24 * day + 5), end_time=at(24 * day + 4.9)
        )
        for day in range(1, 6)
    ]
    long_success = make_run("long", job_name="overlap", start_time=at(5), end_time=at(0.2))
    short_failure = make_run(
        "short", job_name="overlap", status="failure", start_time=at(4), end_time=at(3.9)
    )
    post_runs(server, [*daily, long_success, short_failure])

    page.goto(server.url + "/")
    row = page.locator("table.jobs tbody tr").first
    expect(row).to_contain_text("failing")
    bar = row.locator("> :first-child").evaluate("cell => getComputedStyle(cell).boxShadow")
    assert "inset" in bar, bar


def test_on_a_phone_a_late_job_keeps_its_bar_and_a_long_name_its_labels(
    live_server_factory, browser
):
    """At 375 px rows become cards: a late job's card had no bar (only failed, partial and
    unencrypted ones had), and a 200-character name squeezed the labels to a letter a line."""
    server = live_server_factory()
    now = datetime.now(UTC)

    def at(hours_ago: float) -> str:
        return (now - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")

    # Daily, last started 37 h ago: expected 13 h ago, late once the 12 h grace ran out.
    late = [
        make_run(f"l{hours}", job_name="late-job", start_time=at(hours), end_time=at(hours - 0.1))
        for hours in (85, 61, 37)
    ]
    post_runs(server, [*late, make_run("long", job_name="J" * 200, end_time=at(0.5))])
    page, problems = open_page(browser)
    try:
        page.set_viewport_size({"width": 375, "height": 740})
        page.goto(server.url + "/")
        late_row = page.locator("table.jobs tbody tr", has_text="late-job")
        expect(late_row).to_contain_text("late")
        border = late_row.evaluate("row => getComputedStyle(row).borderLeftWidth")
        assert border == "4px", border
        label_width = (
            page.locator("table.jobs tbody tr", has_text="JJJJ")
            .locator("> :first-child")
            .evaluate("cell => parseFloat(getComputedStyle(cell, '::before').width)")
        )
        assert label_width > 20, f"the Job label is {label_width} px wide"
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
    finally:
        page.context.close()
    assert problems.messages == []


def write_runs(store_dir: Path, runs: list[dict]) -> None:
    """Lay run files into a store folder before the server starts, as rsync would."""
    store_dir.mkdir(parents=True, exist_ok=True)
    received = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for run in runs:
        text = json.dumps({**run, "received_at": received}, ensure_ascii=False, indent=2)
        (store_dir / file_name_for(run["run_id"])).write_text(text + "\n", encoding="utf-8")


def test_screenshots_of_a_realistic_registry(live_server_factory, browser, tmp_path):
    write_runs(tmp_path / "store", sample_runs(datetime.now(UTC)))
    server = live_server_factory(store_dir=tmp_path / "store")
    page, problems = open_page(browser, color_scheme="light")
    try:
        page.goto(server.url + "/")
        expect(page.locator("table.jobs tbody tr")).to_have_count(7)
        shots = [screenshot(page, "overview.png")]

        page.get_by_role("link", name="gitea-dump").click()
        expect(page.locator("svg.history-chart")).to_be_visible()
        shots.append(screenshot(page, "history.png"))

        page.goto(server.url + "/job?job_name=nextcloud-data&agent_id=files-01")
        page.locator("table.runs tbody td.run-id a").first.click()
        expect(page.locator(".error-box")).to_be_visible()
        shots.append(screenshot(page, "run.png"))

        # The same pages on a phone, in dark mode.
        page.set_viewport_size({"width": 390, "height": 844})
        page.emulate_media(color_scheme="dark")
        page.goto(server.url + "/")
        shots.append(screenshot(page, "overview-phone-dark.png"))
        page.goto(server.url + "/job?job_name=photos-offsite&agent_id=nas-01")
        shots.append(screenshot(page, "history-phone-dark.png"))
        # Nothing may stick out sideways on a phone but the chart's own scroller.
        overflow = page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= 390
    finally:
        page.context.close()
    assert problems.messages == []
    assert all(shot.stat().st_size > 10_000 for shot in shots)
