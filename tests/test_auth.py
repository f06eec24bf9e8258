"""Auth: API tokens, HTTP Basic, and the localhost bypass, checked in that order."""

from __future__ import annotations

import base64
import logging

import pytest
from conftest import make_run

from app import LOGGED_HOST_BYTES

RUNS = "/v1/backup-runs"
REMOTE = {"REMOTE_ADDR": "10.0.0.5"}  # a peer on the network, not loopback
TOKENS = " tok-alpha-5f1c , ,tok-beta-93ab,, "
USER, PASSWORD = "admin", "pass-c0ffee-s3cret"
SECRETS = ["tok-alpha-5f1c", "tok-beta-93ab", PASSWORD]


def basic(user: str, password: str) -> dict:
    """Return an Authorization header for HTTP Basic."""
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


@pytest.fixture
def app_config(app_config: dict) -> dict:
    """The test app with tokens and a Basic user configured; no folder watcher needed."""
    return {
        **app_config,
        "API_TOKENS": TOKENS,
        "AUTH_USER": USER,
        "AUTH_PASS": PASSWORD,
        "WATCH_STORE": False,
    }


def assert_401(response) -> None:
    """Check the answer asks for credentials: 401, a JSON error, and WWW-Authenticate."""
    assert response.status_code == 401
    assert list(response.get_json()) == ["error"]
    assert response.headers["WWW-Authenticate"].startswith("Basic realm=")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Authorization": "Bearer tok-alpha-5f1c"}, id="bearer-first"),
        pytest.param({"Authorization": "Bearer tok-beta-93ab"}, id="bearer-second"),
        pytest.param({"Authorization": "bearer tok-beta-93ab"}, id="bearer-lower-case"),
        # RFC 9110: one or more spaces after the scheme, as Basic already took them.
        pytest.param({"Authorization": "Bearer   tok-beta-93ab"}, id="bearer-spaces"),
        pytest.param({"X-API-Key": "tok-alpha-5f1c"}, id="x-api-key"),
        pytest.param(basic(USER, PASSWORD), id="basic"),
        pytest.param({"Authorization": "Basic bad", "X-API-Key": "tok-beta-93ab"}, id="key-wins"),
    ],
)
def test_valid_credentials_admit_a_remote_client(client, headers):
    response = client.get(RUNS, headers=headers, environ_base=REMOTE)

    assert response.status_code == 200


def test_credentials_admit_writes_and_deletes(client):
    headers = {"Authorization": "Bearer tok-alpha-5f1c"}

    posted = client.post(RUNS, json=make_run(), headers=headers, environ_base=REMOTE)
    deleted = client.delete(f"{RUNS}/run-1", headers=headers, environ_base=REMOTE)

    assert (posted.status_code, deleted.status_code) == (201, 204)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param({"Authorization": "Bearer wrong-token"}, id="wrong-token"),
        pytest.param({"Authorization": "Bearer tok-alpha"}, id="token-prefix"),
        pytest.param({"Authorization": "Bearer tok-alpha-5f1cX"}, id="token-longer"),
        pytest.param({"Authorization": "Bearer tok-alpha-5f1c "}, id="token-padded"),
        pytest.param({"X-API-Key": " tok-alpha-5f1c"}, id="key-padded"),
        pytest.param({"Authorization": "Bearer "}, id="empty-bearer"),
        pytest.param({"Authorization": "tok-alpha-5f1c"}, id="no-scheme"),
        pytest.param({"Authorization": "Token tok-alpha-5f1c"}, id="other-scheme"),
        pytest.param({"X-API-Key": ""}, id="empty-key"),  # the list's empty entries admit none
        pytest.param({"X-API-Key": "tok-alpha-5f1c,tok-beta-93ab"}, id="whole-list"),
        pytest.param(basic(USER, "wrong"), id="wrong-password"),
        pytest.param(basic("root", PASSWORD), id="wrong-user"),
        pytest.param(basic(USER, ""), id="empty-password"),
        pytest.param(basic("tok-alpha-5f1c", "tok-alpha-5f1c"), id="token-as-basic"),
        pytest.param({"Authorization": "Basic !!!not-base64"}, id="bad-base64"),
        pytest.param({"Authorization": "Bearer " + PASSWORD}, id="password-as-token"),
    ],
)
def test_missing_or_wrong_credentials_are_401(client, headers):
    response = client.get(RUNS, headers=headers, environ_base=REMOTE)

    assert_401(response)


@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_every_run_endpoint_needs_credentials(client, method):
    path = RUNS if method != "delete" else f"{RUNS}/run-1"

    response = getattr(client, method)(path, json=make_run(), environ_base=REMOTE)

    assert_401(response)


def test_health_needs_no_credentials(client):
    response = client.get("/health", environ_base=REMOTE)

    assert response.status_code == 200


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_loopback_peer_needs_no_credentials(client, peer):
    response = client.post(RUNS, json=make_run(), environ_base={"REMOTE_ADDR": peer})

    assert response.status_code == 201


@pytest.mark.parametrize("peer", ["10.0.0.5", "192.168.1.20", "::ffff:10.0.0.5", "fe80::1", ""])
def test_other_peers_get_no_bypass(client, peer):
    response = client.get(RUNS, environ_base={"REMOTE_ADDR": peer})

    assert_401(response)


@pytest.mark.parametrize(
    "header",
    [
        {"X-Forwarded-For": "203.0.113.9"},
        {"X-Forwarded-For": "127.0.0.1"},
        {"Forwarded": "for=203.0.113.9"},
        {"X-Real-IP": "203.0.113.9"},
        {"x-forwarded-for": ""},
    ],
)
def test_proxy_headers_turn_the_bypass_off(client, header):
    refused = client.get(RUNS, headers=header)
    admitted = client.get(RUNS, headers={**header, "X-API-Key": "tok-beta-93ab"})

    assert_401(refused)
    assert admitted.status_code == 200


def test_the_bypass_needs_a_loopback_peer_and_a_loopback_host_name(client):
    remote_claiming_localhost = client.get(RUNS, headers={"Host": "localhost"}, environ_base=REMOTE)
    # A page whose name was re-pointed at 127.0.0.1 (DNS rebinding) connects from loopback
    # but names itself in Host.
    rebound_page = client.get(RUNS, headers={"Host": "registry.example.com"})
    local = [
        client.get(RUNS, headers={"Host": host})
        for host in ("localhost:8080", "127.0.0.1:8080", "[::1]:8080", "registry.localhost")
    ]

    assert_401(remote_claiming_localhost)
    assert_401(rebound_page)
    assert [response.status_code for response in local] == [200, 200, 200, 200]


def test_a_local_request_refused_for_its_host_says_why_in_the_log(client, caplog):
    caplog.set_level(logging.WARNING)

    assert_401(client.get(RUNS, headers={"Host": "registry.example.com"}))
    assert_401(client.get(RUNS, headers={"Host": "a b"}))  # as sent, not as Werkzeug cleans it
    assert "(Host registry.example.com names no loopback: no localhost bypass" in caplog.text
    assert "(Host a%20b names no loopback" in caplog.text


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
@pytest.mark.parametrize(
    ("mode", "dest"),
    [("no-cors", "empty"), ("cors", "empty"), ("no-cors", "image"), ("navigate", "iframe")],
)
def test_another_site_s_page_gets_no_bypass_for_what_it_embeds(client, caplog, site, mode, dest):
    """A prefetch or an image from another local page told a 200 from a 404 through the
    bypass (a reviewer showed it in Chromium): whether a run existed. Now both are a 401.
    A frame is a navigation too, but not of a whole document: refused as well."""
    caplog.set_level(logging.WARNING)
    client.post(RUNS, json=make_run("exists"))
    fetch = {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": mode, "Sec-Fetch-Dest": dest}

    answers = [client.get(f"{RUNS}/{run_id}", headers=fetch) for run_id in ("exists", "not")]

    assert [answer.status_code for answer in answers] == [401, 401]
    assert "(a page of another site asked for it: no localhost bypass)" in caplog.text


@pytest.mark.parametrize(
    "fetch",
    [
        # A link or a form on another site's page
        {
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "navigate",
            "Sec-Fetch-Dest": "document",
        },
        {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"},  # the dashboard's own
        {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"},  # typed, or a bookmark
    ],
)
def test_the_bypass_still_admits_navigations_and_the_dashboard_s_own_requests(client, fetch):
    client.post(RUNS, json=make_run("exists"))

    assert client.get(f"{RUNS}/exists", headers=fetch).status_code == 200


def test_a_local_request_refused_for_a_proxy_s_header_says_why_in_the_log(client, caplog):
    """A proxy on this host without TRUSTED_PROXY set: every request it passed on was refused
    with 'no valid credentials', and nothing said the bypass was off for its header."""
    caplog.set_level(logging.WARNING)

    assert_401(client.get(RUNS, headers={"X-Forwarded-For": "203.0.113.9"}))
    assert_401(client.get(RUNS, environ_base=REMOTE, headers={"X-Forwarded-For": "203.0.113.9"}))
    [local, remote] = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert local.endswith(
        "no valid credentials (a proxy's header came with it: no localhost bypass; "
        "see TRUSTED_PROXY)"
    )
    assert remote.endswith("no valid credentials")  # no bypass to miss from another host


def test_a_long_host_is_cut_short_on_the_refusal_s_log_line(client, caplog):
    """Logged whole and percent-encoded, an 80 KB Host of '%' wrote 240 KB to the log for
    every refused request from loopback."""
    caplog.set_level(logging.WARNING)

    assert_401(client.get(RUNS, headers={"Host": "%" * 80_000}))

    (line,) = [record.getMessage() for record in caplog.records if "names no" in record.message]
    assert len(line) < 1_000
    assert "(Host " + "%25" * LOGGED_HOST_BYTES + "...(+79900-bytes) names no" in line


def test_wrong_credentials_from_loopback_are_admitted_with_a_warning(client, caplog):
    """As the original did; but an agent tested on the registry's host must learn its token is
    wrong before it runs on its own host, where it would get 401."""
    caplog.set_level(logging.WARNING)
    wrong_token = client.post(RUNS, json=make_run(), headers={"Authorization": "Bearer tok-X"})
    wrong_password = client.get(RUNS, headers=basic(USER, "guess"))
    no_scheme = client.get(RUNS, headers={"Authorization": "tok-beta-93ab"})  # Bearer forgotten
    right = client.get(RUNS, headers={"X-API-Key": "tok-beta-93ab"})
    without = client.get(RUNS)

    statuses = [r.status_code for r in (wrong_token, wrong_password, no_scheme, right, without)]
    assert statuses == [201, 200, 200, 200, 200]
    warnings = [r.getMessage() for r in caplog.records if "bypass" in r.getMessage()]
    assert (
        warnings
        == [
            "wrong credentials from 127.0.0.1 admitted by the localhost bypass; "
            "from another host they would be refused"
        ]
        * 3
    )
    assert "tok-X" not in caplog.text and "guess" not in caplog.text


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer"},
        {"X-API-Key": ""},
        {"X-API-Key": "  "},
    ],
    ids=["bearer-space", "bearer", "empty-api-key", "blank-api-key"],
)
def test_an_empty_credential_from_loopback_is_no_wrong_one(client, caplog, headers):
    """The README's curl lines send 'Bearer $REGISTRY_TOKEN'; on the registry's own host the
    variable may be unset, and each such request warned of wrong credentials."""
    caplog.set_level(logging.WARNING)

    assert client.get(RUNS, headers=headers).status_code == 200
    assert "bypass" not in caplog.text


@pytest.mark.parametrize("setting", ["0", "false", "no", "off", False])
def test_localhost_bypass_can_be_turned_off(start_client, setting):
    client = start_client(LOCALHOST_BYPASS=setting)

    assert_401(client.get(RUNS))
    assert client.get(RUNS, headers={"X-API-Key": "tok-alpha-5f1c"}).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer anything"},
        {"X-API-Key": ""},
        basic("", ""),
        basic("admin", ""),
    ],
)
def test_without_configured_credentials_only_the_bypass_admits(start_client, headers):
    client = start_client(API_TOKENS="", AUTH_USER="", AUTH_PASS="")

    assert_401(client.get(RUNS, headers=headers, environ_base=REMOTE))
    assert client.get(RUNS, headers=headers).status_code == 200


def test_tokens_alone_admit_without_basic_configured(start_client):
    client = start_client(AUTH_USER="", AUTH_PASS="")

    assert (
        client.get(RUNS, headers={"X-API-Key": "tok-beta-93ab"}, environ_base=REMOTE).status_code
        == 200
    )
    assert_401(client.get(RUNS, headers=basic("", ""), environ_base=REMOTE))


def test_secrets_never_appear_in_responses_or_logs(client, caplog):
    caplog.set_level(logging.DEBUG)
    attempts = [
        {"Authorization": "Bearer tok-alpha-5f1c"},
        {"X-API-Key": "tok-beta-93ab"},
        basic(USER, PASSWORD),
        {"Authorization": "Bearer tok-beta-93abX"},
        basic(USER, PASSWORD + "X"),
    ]
    answers = []
    for headers in attempts:
        for method, path in [("get", RUNS), ("post", RUNS), ("get", "/nope"), ("put", RUNS)]:
            response = getattr(client, method)(
                path, json=make_run(), headers=headers, environ_base=REMOTE
            )
            answers.append(str(response.headers) + response.get_data(as_text=True))

    seen = "\n".join([*answers, caplog.text, *(str(r.args) for r in caplog.records)])
    for secret in SECRETS:
        assert secret not in seen
    assert base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in seen


@pytest.mark.parametrize("method", ["post", "delete", "put", "patch"])
@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "http://localhost.evil.example"},
        {"Origin": "null"},
        {"Origin": "http://["},  # urlsplit raises ValueError (was a 500)
        {"Origin": "https://localhost"},  # this host, but not the scheme the request came in
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
def test_cross_site_writes_are_403(client, store_dir, method, headers):
    client.post(RUNS, json=make_run())
    path = RUNS if method == "post" else f"{RUNS}/run-1"

    response = getattr(client, method)(path, json=make_run(status="failure"), headers=headers)

    assert response.status_code == 403
    assert list(response.get_json()) == ["error"]
    assert client.get(f"{RUNS}/run-1").get_json()["status"] == "success"


def test_an_origin_differing_only_in_scheme_is_refused_with_the_likely_fix(client):
    response = client.post(RUNS, json=make_run(), headers={"Origin": "https://localhost"})

    assert response.status_code == 403
    assert "TRUSTED_PROXY" in response.get_json()["error"]


def test_cross_site_refusal_holds_with_valid_credentials(client):
    headers = {"Origin": "https://evil.example", **basic(USER, PASSWORD)}

    response = client.post(RUNS, json=make_run(), headers=headers, environ_base=REMOTE)

    assert response.status_code == 403


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://localhost"},  # the test client's own host
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},
        {},
    ],
)
def test_same_site_and_script_writes_are_allowed(client, headers):
    posted = client.post(RUNS, json=make_run(), headers=headers)
    deleted = client.delete(f"{RUNS}/run-1", headers=headers)

    assert (posted.status_code, deleted.status_code) == (201, 204)


def test_cross_site_reads_are_not_refused(client):
    response = client.get(RUNS, headers={"Origin": "https://evil.example"})

    assert response.status_code == 200


def test_a_right_api_key_admits_beside_a_wrong_bearer_token(client):
    """Pins that X-API-Key is tried even when the Authorization header holds a wrong token."""
    headers = {"Authorization": "Bearer wrong-token", "X-API-Key": "tok-beta-93ab"}

    response = client.get(RUNS, headers=headers, environ_base=REMOTE)

    assert response.status_code == 200


@pytest.mark.parametrize("scheme", ["basic", "BASIC"])
def test_the_basic_scheme_name_is_read_without_case(client, scheme):
    """Pins RFC 9110's case-insensitive auth scheme for Basic, as for Bearer."""
    encoded = basic(USER, PASSWORD)["Authorization"].split(" ", 1)[1]

    response = client.get(
        RUNS, headers={"Authorization": f"{scheme} {encoded}"}, environ_base=REMOTE
    )

    assert response.status_code == 200


@pytest.mark.parametrize(
    "host",
    [
        "",  # RFC 9112: a target with no authority; no browser sends it
        "localhost.",  # the fully qualified spelling
        "localhost.:8080",
        "0.0.0.0:8080",  # what the start-up line names with HOST=0.0.0.0
        "[::]:8080",
    ],
)
def test_the_bypass_takes_every_spelling_of_a_loopback_host(client, host):
    """Pins the Host forms the bypass accepts beside localhost: empty, trailing dot, unspecified."""
    response = client.get(RUNS, headers={"Host": host})

    assert response.status_code == 200


def test_an_origin_compares_its_host_without_case(client):
    """Pins that a same-origin write is not refused for a host name in other letter case."""
    posted = client.post(RUNS, json=make_run(), headers={"Origin": "http://LocalHost"})

    assert posted.status_code == 201


def test_an_http_origin_is_refused_on_a_request_that_came_in_over_https(client):
    """Pins the scheme check the other way round: an http page is not this https server."""
    response = client.post(
        RUNS, json=make_run(), headers={"Origin": "http://localhost"}, base_url="https://localhost"
    )
    same = client.post(
        RUNS, json=make_run(), headers={"Origin": "https://localhost"}, base_url="https://localhost"
    )

    assert response.status_code == 403
    assert "TRUSTED_PROXY" not in response.get_json()["error"]
    assert same.status_code == 201


def test_options_from_another_site_is_not_refused_as_a_write(client):
    """Pins OPTIONS among the safe methods the cross-site check leaves alone."""
    response = client.options(RUNS, headers={"Origin": "https://evil.example"})

    assert response.status_code == 204
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize(
    "host",
    [
        "[",
        "[::1",
        "localhost:notaport]",
        # What a URL parser would read as localhost, had the Host been a URL.
        "evil.example@localhost",
        "localhost/evil.example",
        "localhost?evil.example",
        "localhost#evil.example",
        "localhost\\evil.example",
        "localhost evil.example",
        # A port that is no number, and text after an IPv6 literal, the parser drops.
        "localhost:evil.example",
        "127.0.0.1:80:evil.example",
        "[::1]:evil.example",
        "[::1]evil.example",
    ],
)
def test_a_host_header_that_is_no_host_gets_no_bypass(client, host):
    """Pins that a Host that is no name and port names no loopback: refused, not admitted."""
    assert_401(client.get(RUNS, headers={"Host": host}))


def test_head_from_another_site_is_not_refused_as_a_write(client):
    """Pins HEAD among the safe methods the cross-site check leaves alone."""
    response = client.head(RUNS, headers={"Origin": "https://evil.example"})

    assert response.status_code == 200
