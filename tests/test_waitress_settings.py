"""Production settings for waitress, and how the registry behaves behind a trusted proxy."""

from __future__ import annotations

import logging
import re
import socket
import time

import pytest
import requests
import waitress
from conftest import make_run

import app as app_module

RUNS = "/v1/backup-runs"
TOKEN = "proxy-test-token"

DEFAULTS = {
    "threads": 8,
    "connection_limit": 100,
    "channel_timeout": 60,
    "max_request_body_size": 1024 * 1024 + 64 * 1024,
}


@pytest.fixture
def served(monkeypatch, tmp_path):
    """Run main() with waitress's server replaced by a recorder; return (exit code, settings)."""
    calls: list[dict] = []

    class Recorder:
        def __init__(self, app, **kwargs):
            calls.append(kwargs)

        def run(self):
            pass

    monkeypatch.setattr(waitress.server, "create_server", Recorder)
    # main() installs a SIGTERM handler and a log handler for the real server; keep pytest's.
    monkeypatch.setattr(app_module.signal, "signal", lambda *args: None)
    root_handlers = logging.getLogger().handlers[:]
    for name in ("THREADS", "CONNECTION_LIMIT", "CHANNEL_TIMEOUT", "TRUSTED_PROXY"):
        monkeypatch.delenv(name, raising=False)

    def run(*flags: str) -> tuple[int, dict | None]:
        store = str(tmp_path / "store")
        code = app_module.main(["--store-dir", store, "--watch-store", "0", *flags])
        return code, (calls[-1] if calls else None)

    yield run
    logging.getLogger().handlers[:] = root_handlers


def test_waitress_gets_the_documented_defaults(served):
    code, kwargs = served()

    assert code == 0
    assert {name: kwargs[name] for name in DEFAULTS} == DEFAULTS
    assert kwargs["clear_untrusted_proxy_headers"] is False
    assert "trusted_proxy" not in kwargs


def test_every_production_setting_reaches_waitress(served):
    _, kwargs = served(
        "--threads", "16",
        "--connection-limit", "250",
        "--channel-timeout", "20",
        "--max-body-bytes", "2048",
        "--trusted-proxy", "127.0.0.1",
    )  # fmt: skip

    assert kwargs["threads"] == 16
    assert kwargs["connection_limit"] == 250
    assert kwargs["channel_timeout"] == 20
    assert kwargs["cleanup_interval"] == 10  # idle channels are looked for often enough
    assert kwargs["max_request_body_size"] == 2048 + 64 * 1024
    assert kwargs["trusted_proxy"] == "127.0.0.1"
    assert kwargs["trusted_proxy_headers"] == {"x-forwarded-for", "x-forwarded-proto"}


@pytest.mark.parametrize("flag", ["--threads", "--connection-limit", "--channel-timeout"])
def test_a_bad_waitress_setting_stops_the_start(served, flag, capsys):
    code, kwargs = served(flag, "0")

    assert code == 2 and kwargs is None
    assert re.search(
        r"^backup-registry: .*must be a whole number from 1 ", capsys.readouterr().err, re.M
    )


def test_body_limit_is_a_setting(tmp_path):
    app = app_module.create_app(
        {"STORE_DIR": str(tmp_path / "store"), "WATCH_STORE": "0", "MAX_BODY_BYTES": "2000"}
    )
    try:
        client = app.test_client()
        small = client.post(RUNS, json=make_run())
        large = client.post(RUNS, json=make_run(error="x" * 2000))
    finally:
        app.extensions["store"].close()

    assert small.status_code == 201
    assert large.status_code == 413
    assert large.json == {"error": "body: larger than 2000 bytes"}


# --- behind a proxy: the real server, its socket peer is 127.0.0.1 ---------------------------


def refused_from(server) -> list[str]:
    """The client addresses the server logged for refused requests, oldest first."""
    time.sleep(0.05)  # the log line is written just before the response goes out
    return re.findall(r"refused \S+ \S+ from (\S+): no valid credentials", server.log())


def ask(server, headers: dict[str, str]) -> int:
    return requests.get(server.url + RUNS, headers=headers, timeout=5).status_code


def test_behind_a_trusted_proxy_the_client_address_is_the_forwarded_one(live_server_factory):
    """nginx or Caddy on this host, TRUSTED_PROXY=127.0.0.1: the client's address is the one the
    proxy forwards, and the localhost bypass never applies to proxied requests."""
    server = live_server_factory({"API_TOKENS": TOKEN, "TRUSTED_PROXY": "127.0.0.1"})

    # A stranger on the internet, relayed by the proxy.
    assert ask(server, {"X-Forwarded-For": "203.0.113.9"}) == 401
    # The client forged a first hop; the proxy appended the real address, which waitress takes.
    assert ask(server, {"X-Forwarded-For": "127.0.0.1, 198.51.100.4"}) == 401
    # A browser on the proxy's own host: local to the proxy, still not admitted without
    # credentials, as the proxy might as well be relaying anyone.
    assert ask(server, {"X-Forwarded-For": "127.0.0.1"}) == 401
    assert refused_from(server) == ["203.0.113.9", "198.51.100.4", "127.0.0.1"]

    # Credentials work through the proxy; a script on this host that skips the proxy keeps
    # the bypass.
    headers = {"X-Forwarded-For": "203.0.113.9", "Authorization": f"Bearer {TOKEN}"}
    assert ask(server, headers) == 200
    assert ask(server, {}) == 200


def test_without_trusted_proxy_forwarded_addresses_are_not_believed(live_server_factory):
    """No TRUSTED_PROXY: the peer address stays the socket's, and the header still ends the
    bypass, so a proxy that was not declared opens nothing."""
    server = live_server_factory({"API_TOKENS": TOKEN})

    assert ask(server, {"X-Forwarded-For": "203.0.113.9"}) == 401
    assert ask(server, {"Forwarded": "for=198.51.100.4"}) == 401

    assert refused_from(server) == ["127.0.0.1", "127.0.0.1"]


def test_a_peer_that_is_not_the_trusted_proxy_is_not_believed(live_server_factory):
    server = live_server_factory({"API_TOKENS": TOKEN, "TRUSTED_PROXY": "192.0.2.1"})

    assert ask(server, {"X-Forwarded-For": "203.0.113.9"}) == 401

    assert refused_from(server) == ["127.0.0.1"]


def test_behind_a_tls_proxy_the_dashboard_s_origin_is_https(live_server_factory, store_dir):
    """nginx as the README sets it up: Host with its port, and X-Forwarded-Proto: https.

    The browser's Origin then matches, scheme included; a page of the same host and port
    served over plain http (a network attacker's) is another origin.
    """
    server = live_server_factory({"API_TOKENS": TOKEN, "TRUSTED_PROXY": "127.0.0.1"}, store_dir)
    proxied = {
        "Host": "backups.example.org:8443",
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https",
        "Authorization": f"Bearer {TOKEN}",
    }
    for run_id in ["kept", "deleted"]:
        posted = requests.post(server.url + RUNS, json=make_run(run_id), headers=proxied, timeout=5)
        assert posted.status_code == 201

    def delete(run_id: str, origin: str) -> requests.Response:
        headers = {**proxied, "Origin": origin}
        return requests.delete(f"{server.url}{RUNS}/{run_id}", headers=headers, timeout=5)

    refused = delete("kept", "http://backups.example.org:8443")
    assert refused.status_code == 403
    assert "TRUSTED_PROXY" not in refused.json()["error"]  # the proxy is set up right
    assert delete("deleted", "https://backups.example.org:8443").status_code == 204
    assert sorted(path.name for path in store_dir.glob("*.json")) == ["kept.json"]


def test_a_malformed_forwarded_header_from_the_proxy_is_a_400(live_server_factory):
    server = live_server_factory({"API_TOKENS": TOKEN, "TRUSTED_PROXY": "127.0.0.1"})
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"GET /v1/backup-runs HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: gopher\r\n"
            b"Connection: close\r\n\r\n"
        )
        answer = sock.recv(4096)

    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
    assert requests.get(server.url + "/health", timeout=5).status_code == 200
