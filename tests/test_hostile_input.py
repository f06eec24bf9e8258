"""Hostile input, as a catalogue: each gets a clear 4xx or is stored safely inside the store.

Nothing may be written or read outside the store folder, no credential may be forged, and the
server must stay up. Checks that depend on the real socket or on waitress's parser run against
the real server; the rest go through the Flask client, whose peer address a test can set.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from conftest import LiveServer, make_run

import app as app_module
import store as store_module
from app import create_app

RUNS = "/v1/backup-runs"
TOKEN = "tok-A1-4b9e"
OTHER_TOKEN = "tok-B2-77c0"
USER, PASSWORD = "admin", "s3cret-pw"


def raw_request(server: LiveServer, data: bytes, timeout: float = 10) -> tuple[int, bytes]:
    """Send bytes as they are to the server; return the status and the body (0 if it hung up)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        received = b""
        try:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # it answered before reading all we sent, then closed
    if not received:
        return 0, b""
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def get(path: bytes, *headers: bytes) -> bytes:
    """A raw GET request with the given header lines, closing the connection after it."""
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: localhost", *headers, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def files_outside(root: Path, store_dir: Path) -> dict[str, bytes]:
    """Every file under root but outside the store, with its content; server logs and the
    index snapshot (written beside the store a few seconds after start) excluded."""
    found = {}
    snapshot = f".{store_dir.name}.index-snapshot"
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if store_dir in path.parents or name.startswith(("server-", snapshot)):
                continue
            found[str(path)] = path.read_bytes()
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real server for the catalogue: tokens and Basic set, no localhost bypass."""
    root = tmp_path_factory.mktemp("hostile")
    # A valid run file one level above the store: no run id may reach it.
    (root / "secret.json").write_text(json.dumps(make_run("../secret")))
    (root / "x.json").write_text(json.dumps(make_run("../x")))
    live = LiveServer(
        root / "store",
        {
            "API_TOKENS": f" {TOKEN} ,, {OTHER_TOKEN} ",
            "AUTH_USER": USER,
            "AUTH_PASS": PASSWORD,
            "LOCALHOST_BYPASS": "0",
        },
    )
    try:
        yield live.wait_ready()
    finally:
        live.stop()
    log = live.log_path.read_text(errors="replace")
    assert "Traceback" not in log
    assert TOKEN not in log and PASSWORD not in log


@pytest.fixture
def authed(server):
    """A requests session that sends a valid token; checks afterwards that the server is up."""
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        yield session
    assert requests.get(server.url + "/health", timeout=5).status_code == 200


def run_url(server: LiveServer, run_id: str) -> str:
    """The run's URL, every reserved character encoded; dots too, or the client would resolve
    '..' as a path segment before sending."""
    return f"{server.url}{RUNS}/{quote(run_id, safe='').replace('.', '%2E')}"


@pytest.fixture
def make_client(store_dir):
    """Start an in-process app with the given settings; return its test client."""
    apps = []

    def start(**settings):
        application = create_app({"STORE_DIR": str(store_dir), "WATCH_STORE": "0", **settings})
        apps.append(application)
        return application.test_client()

    yield start
    for application in apps:
        application.extensions["store"].close()


# --- run ids ---------------------------------------------------------------------------------

# Ids the schema allows: each must be stored as one flat file inside the store, under a name
# that maps back to it, and be read back and deleted through its URL-encoded form.
STORABLE_IDS = [
    "../x",
    "../../etc/passwd",
    "..",
    ".",
    "./x",
    "/etc/passwd",
    "a/../../b",
    "..\\..\\x",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2fsecret",
    ".hidden",
    ".tmp-0123.tmp",
    "x.json",
    "CON",
    "\uff0e\uff0e\uff0fsecret",  # fullwidth full stops and solidus
    "\u2024\u2024/secret",  # one-dot leaders
    "..\u2215secret",  # division slash
    "a" * 200,
]


@pytest.mark.parametrize("run_id", STORABLE_IDS)
def test_hostile_run_id_is_stored_flat_inside_the_store(server, authed, run_id, tmp_path):
    outside_before = files_outside(server.store_dir.parent, server.store_dir)
    before = set(os.listdir(server.store_dir))

    posted = authed.post(server.url + RUNS, json=make_run(run_id))

    assert posted.status_code == 201, posted.text
    [name] = set(os.listdir(server.store_dir)) - before
    assert not name.startswith(".") and "/" not in name and "\\" not in name
    assert store_module.run_id_for(name) == run_id
    assert (server.store_dir / name).resolve().parent == server.store_dir.resolve()
    assert authed.get(run_url(server, run_id)).json()["run_id"] == run_id
    assert authed.delete(run_url(server, run_id)).status_code == 204
    assert name not in os.listdir(server.store_dir)
    assert files_outside(server.store_dir.parent, server.store_dir) == outside_before


REJECTED_IDS = [
    pytest.param("x\x00y", id="nul"),
    pytest.param("\x00", id="only-nul"),
    pytest.param("a\nb", id="newline"),
    # Python's `$` also matches before a final newline; the schema's patterns mean ECMA-262's.
    pytest.param("a\n", id="trailing-newline"),
    pytest.param("a" * 201, id="201-chars"),
    pytest.param("a" * 100_000, id="100k-chars"),
    pytest.param("\u20ac" * 100, id="too-long-encoded"),
    pytest.param("   ", id="blank"),
    pytest.param("\u3000", id="ideographic-space"),
    pytest.param("\u202esecret", id="right-to-left-override"),
    pytest.param(["../x"], id="not-a-string"),
]


@pytest.mark.parametrize("run_id", REJECTED_IDS)
def test_run_id_that_cannot_be_stored_is_a_clear_400(server, authed, run_id):
    before = set(os.listdir(server.store_dir))

    response = authed.post(server.url + RUNS, json=make_run(run_id))

    assert response.status_code == 400
    assert response.json()["error"].startswith("run_id: ")
    assert set(os.listdir(server.store_dir)) == before


# Raw request targets, as an attacker would type them: dot segments, encoded separators,
# double encoding, NUL and an id far too long. None may reach ../secret.json.
RAW_PATHS = [
    b"/v1/backup-runs/../secret",
    b"/v1/backup-runs/..%2Fsecret",
    b"/v1/backup-runs/%2E%2E%2Fsecret",
    b"/v1/backup-runs/%2e%2e/%2e%2e/secret",
    b"/v1/backup-runs/..%252Fsecret",
    b"/v1/backup-runs/..%5Csecret",
    b"/v1/backup-runs/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    b"/v1/backup-runs/%EF%BC%8E%EF%BC%8E%EF%BC%8Fsecret",
    b"/v1/backup-runs/secret%00",
    b"/v1/backup-runs/a\x00b",
    b"/v1/backup-runs/%C0%AE%C0%AE%2Fsecret",  # overlong UTF-8 dots
    b"/v1/backup-runs/" + b"a" * 100_000,
]


@pytest.mark.parametrize("path", RAW_PATHS, ids=lambda p: p[16:48].decode("latin-1"))
def test_raw_traversal_in_the_url_never_reaches_outside(server, path):
    secret = server.store_dir.parent / "secret.json"
    for method in (b"GET", b"DELETE"):
        request = get(path, b"X-API-Key: " + TOKEN.encode()).replace(b"GET", method, 1)

        status, body = raw_request(server, request)

        assert status in (204, 400, 404), (method, status, body)
        assert b"secret" not in body or status == 400
        assert b"root:" not in body
    assert secret.exists()
    assert json.loads(secret.read_text())["run_id"] == "../secret"


@pytest.mark.parametrize("encoded", ["a%0Ab", "%0A", "a%0Db", "%09x", "x%0A%0Ay", "a%0A/b"])
def test_control_characters_in_a_url_id_are_an_id_not_a_missing_route(make_client, encoded):
    """An id no run can have is still an id: DELETE is 204 and GET "run not found"."""
    client = make_client(API_TOKENS="")

    assert client.delete(f"{RUNS}/{encoded}").status_code == 204
    response = client.get(f"{RUNS}/{encoded}")
    assert response.status_code == 404 and response.json == {"error": "run not found"}


# --- headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([b"X-Big: " + b"a" * 300_000], id="one-300k-header"),
        pytest.param([b"X-A: b"] * 40_000, id="40k-headers"),
        pytest.param([b"Authorization: Bearer " + b"t" * 300_000], id="300k-token"),
        pytest.param([b"Cookie: " + b"c=1; " * 60_000], id="300k-cookie"),
    ],
)
def test_oversized_headers_get_431_and_the_server_stays_up(server, headers):
    status, _ = raw_request(server, get(b"/health", *headers))

    assert status == 431
    assert requests.get(server.url + "/health", timeout=5).status_code == 200


def test_oversized_request_line_is_refused(server):
    status, _ = raw_request(server, get(b"/v1/backup-runs/" + b"a" * 300_000))

    assert 400 <= status < 500


# --- credentials -----------------------------------------------------------------------------


def basic(text: bytes | str) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return "Basic " + base64.b64encode(raw).decode()


MALFORMED_BASIC = [
    pytest.param("Basic", id="no-credentials"),
    pytest.param("Basic ", id="empty"),
    pytest.param("Basic !!!not-base64!!!", id="bad-base64"),
    pytest.param(basic(f"{USER}:{PASSWORD}")[:-2], id="truncated-base64"),
    pytest.param(basic(f"{USER}:{PASSWORD}")[:12] + "=" + basic("x")[6:], id="padding-inside"),
    pytest.param(basic(f"{USER}{PASSWORD}"), id="no-colon"),
    pytest.param(basic(b"\xff\xfe:\xff"), id="not-utf8"),
    pytest.param("Basic \u00e9", id="not-ascii"),  # b64decode raises ValueError (was a 500)
    pytest.param(basic(f"{USER}:"), id="no-password"),
    pytest.param(basic(f":{PASSWORD}"), id="no-user"),
    pytest.param(basic(f"{USER}:{PASSWORD} "), id="password-padded"),
    pytest.param(basic(f" {USER}:{PASSWORD}"), id="user-padded"),
    pytest.param(basic(f"{USER}:{PASSWORD}:{PASSWORD}"), id="extra-colon"),
    pytest.param(basic(f"{USER.upper()}:{PASSWORD}"), id="user-case"),
    pytest.param(basic(f"{USER}:{PASSWORD[:-1]}"), id="password-prefix"),
    pytest.param("Digest " + basic(f"{USER}:{PASSWORD}")[6:], id="other-scheme"),
    pytest.param(f"Basic {USER}:{PASSWORD}", id="not-encoded"),
]


@pytest.mark.parametrize("authorization", MALFORMED_BASIC)
def test_malformed_basic_auth_is_401(server, authorization):
    response = requests.get(server.url + RUNS, headers={"Authorization": authorization}, timeout=5)

    assert response.status_code == 401
    assert response.json()["error"].startswith("authentication required")
    assert response.headers["WWW-Authenticate"].startswith("Basic ")


BAD_TOKENS = [
    pytest.param({"Authorization": "Bearer"}, id="bearer-empty"),
    pytest.param({"Authorization": "Bearer "}, id="bearer-space"),
    pytest.param({"Authorization": f"Bearer {TOKEN}\u00a0".encode("latin-1")}, id="nbsp"),
    pytest.param({"Authorization": f"Bearer {TOKEN[:-1]}"}, id="prefix"),
    pytest.param({"Authorization": f"Bearer {TOKEN}x"}, id="suffix"),
    pytest.param({"Authorization": f"Bearer {TOKEN.upper()}"}, id="case"),
    pytest.param({"Authorization": f"Bearer {TOKEN},{OTHER_TOKEN}"}, id="both-joined"),
    pytest.param({"Authorization": f"Token {TOKEN}"}, id="other-scheme"),
    pytest.param({"Authorization": TOKEN}, id="no-scheme"),
    pytest.param({"X-API-Key": ""}, id="api-key-empty"),
    pytest.param({"X-API-Key": f"{TOKEN} {OTHER_TOKEN}"}, id="api-key-two"),
    pytest.param({"X-API-Key": f"Bearer {TOKEN}"}, id="api-key-with-scheme"),
    pytest.param({"Cookie": f"api_key={TOKEN}"}, id="cookie"),
    pytest.param({"X-Api-Token": TOKEN}, id="other-header"),
]


@pytest.mark.parametrize("headers", BAD_TOKENS)
def test_bad_or_empty_token_is_401(server, headers):
    response = requests.get(server.url + RUNS, headers=headers, timeout=5)

    assert response.status_code == 401


def test_token_in_the_query_string_is_not_accepted(server):
    response = requests.get(server.url + RUNS, params={"api_key": TOKEN}, timeout=5)

    assert response.status_code == 401


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {TOKEN}"},
        {"Authorization": f"bearer {OTHER_TOKEN}"},
        {"Authorization": f"Bearer  {TOKEN}"},  # RFC 9110: one or more spaces
        {"X-API-Key": TOKEN},
        {"Authorization": basic(f"{USER}:{PASSWORD}")},
    ],
    ids=["bearer", "bearer-lower-case", "bearer-two-spaces", "api-key", "basic"],
)
def test_valid_credentials_still_work(server, headers):
    """The control for the 401s above: the same server admits the right credentials."""
    assert requests.get(server.url + RUNS, headers=headers, timeout=5).status_code == 200


@pytest.mark.parametrize("value", [f" {TOKEN}", f"{TOKEN} ", f"\t{TOKEN}", f" {TOKEN} "])
def test_token_padded_with_whitespace_is_not_the_token(make_client, value):
    """The app compares exactly. (On the wire, HTTP strips spaces around a header value before
    any application sees it, RFC 9110 section 5.5; padding inside the value is tested above.)
    Only spaces between 'Bearer' and the token are no padding: RFC 9110 allows several."""
    client = make_client(API_TOKENS=TOKEN, LOCALHOST_BYPASS="0")
    bearer_status = 200 if value == f" {TOKEN}" else 401

    assert client.get(RUNS, headers={"X-API-Key": value}).status_code == 401
    assert (
        client.get(RUNS, headers={"Authorization": f"Bearer {value}"}).status_code == bearer_status
    )
    assert client.get(RUNS, headers={"X-API-Key": TOKEN}).status_code == 200


# --- bypass forgery --------------------------------------------------------------------------

FORGED = [
    pytest.param({"Host": "localhost"}, id="host-localhost"),
    pytest.param({"Host": "127.0.0.1:8080"}, id="host-loopback"),
    pytest.param({"Host": "[::1]"}, id="host-ipv6-loopback"),
    pytest.param({"X-Forwarded-For": "127.0.0.1"}, id="x-forwarded-for"),
    pytest.param({"X-Forwarded-For": "203.0.113.9, 127.0.0.1"}, id="x-forwarded-for-chain"),
    pytest.param({"Forwarded": "for=127.0.0.1"}, id="forwarded"),
    pytest.param({"Forwarded": 'for="[::1]"'}, id="forwarded-ipv6"),
    pytest.param({"X-Real-IP": "127.0.0.1"}, id="x-real-ip"),
    pytest.param({"X-Forwarded-Host": "localhost"}, id="x-forwarded-host"),
    pytest.param({"X-Client-IP": "127.0.0.1", "True-Client-IP": "127.0.0.1"}, id="client-ip"),
    pytest.param({"X-Originating-IP": "127.0.0.1", "X-Remote-Addr": "::1"}, id="misc"),
]


@pytest.mark.parametrize("headers", FORGED)
def test_a_remote_peer_cannot_forge_a_local_one(make_client, headers):
    """Only the socket's address counts; no header can make a remote peer local."""
    client = make_client(API_TOKENS=TOKEN)
    remote = {"REMOTE_ADDR": "203.0.113.7"}

    assert client.get(RUNS, headers=headers, environ_base=remote).status_code == 401
    assert (
        client.post(RUNS, json=make_run(), headers=headers, environ_base=remote).status_code == 401
    )
    assert client.get(RUNS, environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 200


@pytest.fixture(scope="module")
def bypass_server(tmp_path_factory):
    """A real server with the localhost bypass on (the default) and a token."""
    live = LiveServer(tmp_path_factory.mktemp("bypass") / "store", {"API_TOKENS": TOKEN})
    try:
        yield live.wait_ready()
    finally:
        live.stop()


@pytest.mark.parametrize(
    "header",
    [
        b"X-Forwarded-For: 127.0.0.1",
        b"x-forwarded-for: ::1",
        b"Forwarded: for=127.0.0.1",
        b"X-Real-IP: 127.0.0.1",
        b"Via: 1.1 squid",  # a forward proxy need add no other
    ],
    ids=["x-forwarded-for", "lower-case", "forwarded", "x-real-ip", "via"],
)
def test_loopback_peer_with_a_proxy_header_gets_no_bypass(bypass_server, header):
    """A proxy on this host relays strangers from loopback; its headers end the bypass."""
    status, body = raw_request(bypass_server, get(RUNS.encode(), header))

    assert status == 401, body
    assert raw_request(bypass_server, get(RUNS.encode()))[0] == 200  # the bypass itself


@pytest.mark.parametrize("encoded", [b"%FF", b"%C3", b"%ED%A0%80", b"a%E9b"])
def test_a_path_whose_percent_encoding_is_not_utf8_is_refused(bypass_server, encoded):
    """Werkzeug would decode these with U+FFFD in place of each bad byte, and serve, or
    delete, the run named so: a guess at what the client meant."""
    replaced = bypass_server.store_dir / store_module.file_name_for("\ufffd")
    replaced.write_text(json.dumps(make_run("\ufffd", received_at="2026-05-12T02:05:00Z")))
    try:
        for method in (b"GET", b"DELETE"):
            request = get(RUNS.encode() + b"/" + encoded).replace(b"GET", method, 1)
            status, body = raw_request(bypass_server, request)
            assert status == 400, body
            assert json.loads(body) == {"error": "path: not valid UTF-8 once percent-decoded"}
        assert replaced.exists()
        # Timed from the first hook: the refusal came before the one that started the clock.
        timings = re.findall(r" 400 (-?[0-9.]+)ms", bypass_server.log())
        assert timings and not any(ms.startswith("-") for ms in timings)
        # The path as sent, not as Werkzeug replaced its bytes.
        assert f"GET {RUNS}/{encoded.decode()} 400 " in bypass_server.log()
    finally:
        replaced.unlink()


@pytest.mark.parametrize("query", [b"job_name=%FF", b"q=a%E9b", b"status=failure&x=%C3", b"q=\xe9"])
def test_a_query_that_is_not_utf8_is_refused(bypass_server, query):
    """Werkzeug read ?job_name=%FF as U+FFFD: a 200 with an empty list for no name at all."""
    status, body = raw_request(bypass_server, get(RUNS.encode() + b"?" + query))

    assert status == 400, body
    assert json.loads(body) == {"error": "query: not valid UTF-8 once percent-decoded"}
    assert raw_request(bypass_server, get(RUNS.encode() + b"?q=%C3%A9+x%25"))[0] == 200


def test_an_absolute_target_is_judged_by_its_own_host_not_the_host_header(bypass_server):
    """RFC 9112: an absolute-form target's authority, not Host, names the host asked for.
    waitress serves its path and passes 'Host: localhost' on, which vouched for any name."""
    elsewhere = get(b"http://evil.example" + RUNS.encode() + b"?limit=1")
    here = get(f"http://localhost:{bypass_server.port}{RUNS}?limit=1".encode())

    assert raw_request(bypass_server, elsewhere)[0] == 401
    assert raw_request(bypass_server, here)[0] == 200
    assert "(Host evil.example names no loopback" in bypass_server.log()


def test_only_a_loopback_host_name_keeps_the_bypass(bypass_server, server):
    """Host cannot turn the bypass on; a name other than loopback's turns it off (a page
    rebound to 127.0.0.1 sends its own name)."""
    for host, bypassed in [
        (b"Host: localhost", True),
        (b"Host: 127.0.0.1", True),
        (b"Host: 0.0.0.0:8080", True),  # the start-up line's address with HOST=0.0.0.0
        (b"Host: ip6-localhost", False),  # only /etc/hosts may say where: DNS might
        (b"Host: evil.example", False),
        (b"Host: localhost.evil.example", False),
        (b"Host: 0.0.0.0.evil.example", False),
        (b"Host:", True),  # RFC 9112: an empty Host is no authority, as no Host at all
    ]:
        request = get(RUNS.encode()).replace(b"Host: localhost", host)
        assert raw_request(bypass_server, request)[0] == (200 if bypassed else 401), host
        assert raw_request(server, request)[0] == 401  # bypass off: Host cannot turn it on
    # No Host at all: HTTP/1.0, or a raw health check; no browser sends that.
    assert raw_request(bypass_server, b"GET " + RUNS.encode() + b" HTTP/1.0\r\n\r\n")[0] == 200


# --- slow clients ----------------------------------------------------------------------------


def test_slow_clients_do_not_block_others_and_are_timed_out(live_server_factory):
    server = live_server_factory({"CHANNEL_TIMEOUT": "3", "THREADS": "2"})
    slow = []
    try:
        for index in range(8):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=20)
            if index % 2:  # headers never finished
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            else:  # a body that never arrives
                sock.sendall(
                    b"POST /v1/backup-runs HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{"
                )
            slow.append(sock)
        started = time.monotonic()
        assert requests.get(server.url + "/health", timeout=5).status_code == 200
        assert requests.post(server.url + RUNS, json=make_run(), timeout=5).status_code == 201
        # Well under CHANNEL_TIMEOUT: the others were served, not merely served after it.
        assert time.monotonic() - started < 2.5, "the slow clients held up the others"
        for sock in slow:  # the server hangs up on each once CHANNEL_TIMEOUT has passed
            assert sock.recv(1024) == b""
        assert time.monotonic() - started < 15
    finally:
        for sock in slow:
            sock.close()


def test_slow_clients_at_the_connection_limit_only_delay_others(live_server_factory):
    """With every connection slot held by a slow client, a new one waits for the timeout."""
    server = live_server_factory({"CHANNEL_TIMEOUT": "2", "CONNECTION_LIMIT": "3"})
    slow = [socket.create_connection(("127.0.0.1", server.port), timeout=20) for _ in range(3)]
    try:
        for sock in slow:
            sock.sendall(b"GET /health HTTP/1.1\r\n")
        started = time.monotonic()

        response = requests.get(server.url + "/health", timeout=15)

        assert response.status_code == 200
        assert time.monotonic() - started >= 0.5  # it did wait for a free slot
    finally:
        for sock in slow:
            sock.close()


# --- scripts in every field the dashboard shows ----------------------------------------------

SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '"><img src=x onerror=alert(2)>'
SINGLE = "'><svg onload=alert(3)>"
URL = 'https://example.org/"onmouseover="alert(4)"><script>alert(5)</script>'
PAYLOADS = (SCRIPT, ATTRIBUTE, SINGLE, URL, '"onmouseover="')
HOSTILE_RUN = make_run(
    f"run-{SCRIPT}",
    job_name=f"job{ATTRIBUTE}",
    agent_id=f"agent{SINGLE}",
    status="failure",
    error=f"failed: {SCRIPT} {ATTRIBUTE} {SINGLE}",
    backup_url=URL,
    encryption_status="failed",
    metadata={SCRIPT: ATTRIBUTE, "note": [SINGLE]},
)


def test_scripts_in_every_shown_field_are_escaped(make_client):
    client = make_client(API_TOKENS="")
    assert client.post(RUNS, json=HOSTILE_RUN).status_code == 201
    job, agent = HOSTILE_RUN["job_name"], HOSTILE_RUN["agent_id"]
    pages = [
        "/",
        f"/?job={quote(job)}&agent={quote(agent)}",
        f"/?q={quote(SCRIPT)}",
        f"/run/{quote(HOSTILE_RUN['run_id'], safe='')}",
        f"/job?job_name={quote(job)}&agent_id={quote(agent)}",
        f"/run/{quote(SCRIPT, safe='')}",  # not found: the id is echoed back
        "/docs",
    ]
    for page in pages:
        response = client.get(page)
        assert response.status_code in (200, 404), page
        assert response.mimetype == "text/html", page
        assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
        for payload in PAYLOADS:
            assert payload not in response.text, (page, payload)
        assert "<script>alert" not in response.text
    run_page = client.get(pages[3]).text
    # The fields are shown, escaped, not left out.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in run_page
    assert "onerror=alert(2)" in run_page and "onload=alert(3)" in run_page


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "data:text/html,<script>alert(1)</script>", "//evil.example/"]
)
def test_a_backup_url_that_is_not_http_is_refused(make_client, url):
    client = make_client(API_TOKENS="")

    response = client.post(RUNS, json=make_run(backup_url=url))

    assert response.status_code == 400
    assert response.json["error"].startswith("backup_url: ")


# --- patterns that must not backtrack ----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "prefix"),
    [("run_id", ""), ("job_name", ""), ("agent_id", " "), ("backup_url", "https://")],
)
def test_a_long_field_with_a_bad_last_character_is_refused_at_once(field, prefix):
    """jsonschema runs a pattern even on a string already over its maxLength, and re holds the
    GIL for the whole match: a pattern that backtracks on the length froze every request (the
    earlier patterns took about 10 s on 40,000 characters, growing with the square)."""
    validator = app_module.shared_validator()
    report = make_run(**{field: prefix + "a" * 60_000 + "\u0001"})

    started = time.perf_counter()
    with pytest.raises(app_module.ApiError) as refused:
        validator.clean(report)
    elapsed = time.perf_counter() - started

    assert f"{field}: " in str(refused.value)
    # A linear match takes milliseconds; the quadratic one about 20 s. The bound only has to
    # tell the two apart on a slow, shared CI machine.
    assert elapsed < 2.0


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("^a$", "a", True),
        ("^a$", "a\n", False),  # Python's own `$` says True
        (r"^a\$$", "a$", True),  # an escaped `$` is a dollar sign
        ("^[$]a$", "$a", True),  # so is one in a class
        ("^(a$|b)", "a\n", False),
        ("^(a$|b)", "b\n", True),  # not anchored: the newline may follow
        ("^[]$]+$", "]$", True),  # Python reads a ']' first in a class as a character
        ("^[^]$]+$", "ab", True),
    ],
)
def test_schema_patterns_read_dollar_as_ecma_262_does(pattern, text, matches):
    validator = app_module.SchemaValidator({"type": "string", "pattern": pattern})

    assert validator.is_valid(text) is matches


def test_raw_utf8_in_the_request_line_reads_as_its_percent_encoding(server, authed):
    """curl sends a query as typed: raw UTF-8 got waitress's plain-text "Bad URI", where the
    original registry, like a browser, took it."""
    run = make_run("r\u00e4-1", job_name="postgres-t\u00e4glich")
    assert authed.post(server.url + RUNS, json=run).status_code == 201
    token = b"Authorization: Bearer " + TOKEN.encode()

    listed = raw_request(server, get(f"{RUNS}?job_name=postgres-t\u00e4glich".encode(), token))
    one = raw_request(server, get(f"{RUNS}/r\u00e4-1".encode(), token))
    not_utf8 = raw_request(server, get(f"{RUNS}/r".encode() + b"\xe4-1", token))

    assert listed[0] == 200 and [r["run_id"] for r in json.loads(listed[1])] == ["r\u00e4-1"]
    assert one[0] == 200 and json.loads(one[1])["job_name"] == "postgres-t\u00e4glich"
    assert not_utf8[0] == 400 and json.loads(not_utf8[1])["error"].startswith("path: ")


def test_only_a_request_target_of_bounded_length_is_percent_encoded(server):
    """The encoding runs on waitress's one I/O thread: a byte at a time, a 250 KB line held
    every connection up for 0.28 s. Past 8 KiB, and in a method or HTTP version, raw bytes
    are left for waitress to refuse, as before."""
    encode = app_module.percent_encode_request_target
    assert encode(b"GET /r\xc3\xa4?q=\xe2\x82\xac HTTP/1.1") == b"GET /r%C3%A4?q=%E2%82%AC HTTP/1.1"
    assert encode(b"GET /\xc3\xa4 HTTP/1.1 ") == b"GET /%C3%A4 HTTP/1.1"  # as waitress reads it
    assert encode(b"G\xc3\x89T /health HTTP/1.1") == b"G\xc3\x89T /health HTTP/1.1"
    # Only raw bytes in the target make the method's check matter: left whole, not half-encoded.
    assert encode(b"G\xc3\x89T /\xc3\xa4 HTTP/1.1") == b"G\xc3\x89T /\xc3\xa4 HTTP/1.1"
    assert encode(b"GET /\xc3\xa4 HTTP/1.\xc3\x89") == b"GET /\xc3\xa4 HTTP/1.\xc3\x89"
    assert encode(b"GET /health HTTP/1.\xc3\x89") == b"GET /health HTTP/1.\xc3\x89"
    too_long = b"GET /health?x=" + "\u00e4".encode() * 5000 + b" HTTP/1.1"
    assert encode(too_long) is too_long
    # Every byte from 0x80 up; a line of exactly MAX_ENCODED_REQUEST_LINE bytes, not one more.
    assert encode(b"GET /\x80\xff HTTP/1.1") == b"GET /%80%FF HTTP/1.1"
    fill = app_module.MAX_ENCODED_REQUEST_LINE - len(b"GET /? HTTP/1.1")
    longest = b"GET /?" + b"a" * (fill % 2) + b"\xc3\xa4" * (fill // 2) + b" HTTP/1.1"
    assert len(longest) == app_module.MAX_ENCODED_REQUEST_LINE
    assert encode(longest) == longest.replace(b"\xc3\xa4", b"%C3%A4")
    one_more = longest.replace(b"GET /?", b"GET /?a")
    assert encode(one_more) is one_more

    assert raw_request(server, get(b"/health?x=" + "\u00e4".encode() * 5000))[0] == 400
    assert raw_request(server, get(b"/health").replace(b"GET", "G\u00c9T".encode()))[0] == 400


def test_a_request_with_too_many_header_lines_is_refused_before_waitress_joins_them(server):
    """waitress joins a repeated header's values one string at a time, on its one I/O
    thread: 62,500 empty "A:" lines held every client up for 0.4 s, without credentials."""
    # get() adds Host and Connection: these make MAX_HEADER_LINES + 1 header lines, and exactly
    # MAX_HEADER_LINES, the request line and the blank line that ends them not counted.
    many = get(b"/health", *[b"A:"] * (app_module.MAX_HEADER_LINES - 1))
    enough = get(b"/health", *[b"A: x"] * (app_module.MAX_HEADER_LINES - 2))

    refused = raw_request(server, many)
    assert refused[0] == 400
    assert f"more than {app_module.MAX_HEADER_LINES} header lines".encode() in refused[1]
    assert raw_request(server, enough)[0] == 200


def test_a_long_path_is_cut_short_in_the_log(server):
    """Logged whole and percent-encoded on the refusal and the access line, a 250 KB path
    wrote six times its size to the log for every request without credentials."""
    path = "/" + "\u2039" * 20_000
    before = len(server.log())

    assert requests.get(server.url + quote(path), timeout=10).status_code == 401

    written = server.log()[before:]
    assert 0 < len(written) < 8_000, len(written)
    assert "...(+59701-bytes)" in written  # 3 bytes a character, as sent
