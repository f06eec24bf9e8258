"""Shared fixtures: an app over a temporary store, its client, and a real server under waitress."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from app import create_app

ROOT = Path(__file__).resolve().parent.parent
# Root reads and searches any file and folder: a command prefix that runs the server without
# that power, so that chmod keeps it out. setpriv is part of util-linux, on every Debian.
AS_AN_ORDINARY_USER = (
    ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")
    if os.geteuid() == 0
    else ()
)


def make_run(run_id: str = "run-1", **fields) -> dict:
    """Return a valid run report; keyword arguments override or add fields."""
    run = {
        "run_id": run_id,
        "job_name": "postgres-daily",
        "agent_id": "db-01",
        "start_time": "2026-05-12T02:00:00Z",
        "end_time": "2026-05-12T02:04:33Z",
        "status": "success",
    }
    run.update(fields)
    return run


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A fresh, empty store folder."""
    return tmp_path / "store"


@pytest.fixture
def app_config(store_dir: Path) -> dict:
    """Settings for the test app; tests may change them before asking for `app`."""
    return {"STORE_DIR": str(store_dir), "API_TOKENS": "", "AUTH_USER": "", "AUTH_PASS": ""}


@pytest.fixture
def app(app_config: dict):
    """The Flask app over a temporary store, with its watcher stopped afterwards."""
    application = create_app(dict(app_config))
    yield application
    application.extensions["store"].close()


@pytest.fixture
def client(app):
    """A Flask test client; its requests come from 127.0.0.1, so the bypass applies."""
    return app.test_client()


def free_port() -> int:
    """Return a TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """`python app.py` in a subprocess, under waitress, on a loopback port."""

    def __init__(
        self,
        store_dir: Path,
        env: dict | None = None,
        host: str = "127.0.0.1",
        prefix: tuple[str, ...] = (),  # a command to run it under, such as setpriv
    ):
        self.port = free_port()
        self.host = host
        self.url = f"http://{host}:{self.port}"
        self.store_dir = store_dir
        full_env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("API_TOKENS", "AUTH_USER", "AUTH_PASS", "LOCALHOST_BYPASS")
        }
        full_env.update({"HOST": host, "PORT": str(self.port), "STORE_DIR": str(store_dir)})
        full_env.update(env or {})
        self.log_path = store_dir.parent / f"server-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [*prefix, sys.executable, str(ROOT / "app.py")],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30) -> LiveServer:
        """Block until /health answers, or fail with the server's log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                requests.get(self.url + "/health", timeout=1)
                return self
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start:\n{self.log()}")

    def log(self) -> str:
        """Return what the server has logged so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop the server and close its log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
def live_server_factory(tmp_path: Path):
    """Start real servers with given environment settings; all are stopped after the test."""
    servers: list[LiveServer] = []

    def start(env: dict | None = None, store_dir: Path | None = None) -> LiveServer:
        server = LiveServer(store_dir or tmp_path / "store", env)
        servers.append(server)
        return server.wait_ready()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def start_client(app_config: dict):
    """Start apps when the test says so, with settings changed; return each one's test client."""
    apps = []

    def start(**settings):
        application = create_app({**app_config, **settings})
        apps.append(application)
        return application.test_client()

    yield start
    for application in apps:
        application.extensions["store"].close()


@pytest.fixture
def local_time_not_utc(monkeypatch):
    """Make local time UTC-5, so code that read a naive time as local time, not UTC, errs."""
    monkeypatch.setenv("TZ", "EST5")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
