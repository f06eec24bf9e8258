"""Configuration: environment variables and flags, refusing bad settings, and the access log."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import AS_AN_ORDINARY_USER, ROOT, LiveServer, free_port, make_run

from app import MAX_THREADS, SETTINGS, ConfigError, create_app, load_config, main, parse_args
from store import MAX_RUN_FILE_BYTES

RUNS = "/v1/backup-runs"
ISSUE_SETTINGS = [
    "HOST",
    "PORT",
    "STORE_DIR",
    "API_TOKENS",
    "AUTH_USER",
    "AUTH_PASS",
    "LOCALHOST_BYPASS",
]
ACCESS_LINE = re.compile(r"[A-Z]+ /.* \d{3} \d+\.\dms")  # METHOD path status N.Nms


@pytest.fixture
def app_config(app_config: dict) -> dict:
    """The test app; nothing here needs the folder watched."""
    return {**app_config, "WATCH_STORE": False}


def clean_environ(**settings: str) -> dict:
    """Return this process's environment without any registry setting, plus the given ones."""
    environ = {name: value for name, value in os.environ.items() if name not in SETTINGS}
    return {**environ, **settings}


def run_app_py(
    *args: str, prefix: tuple[str, ...] = (), **settings: str
) -> subprocess.CompletedProcess:
    """Run `python app.py` with these flags and settings until it exits (it must, here);
    prefix is a command to run it under, such as setpriv."""
    return subprocess.run(
        [*prefix, sys.executable, str(ROOT / "app.py"), *args],
        cwd=ROOT,
        env=clean_environ(**settings),
        capture_output=True,
        text=True,
        timeout=20,
    )


# --- settings --------------------------------------------------------------------------------


def test_defaults_when_nothing_is_set():
    config = load_config({}, environ={})

    assert {name: config[name] for name in ISSUE_SETTINGS} == {
        "HOST": "127.0.0.1",
        "PORT": 8080,
        "STORE_DIR": "./store",
        "API_TOKENS": (),
        "AUTH_USER": "",
        "AUTH_PASS": "",
        "LOCALHOST_BYPASS": True,
    }


def test_environment_variables_are_read():
    environ = {
        "HOST": "0.0.0.0",
        "PORT": "9000",
        "STORE_DIR": "/srv/registry",
        "API_TOKENS": "a,b",
        "AUTH_USER": "admin",
        "AUTH_PASS": "secret",
        "LOCALHOST_BYPASS": "0",
    }

    config = load_config({}, environ=environ)

    assert {name: config[name] for name in ISSUE_SETTINGS} == {
        **environ,
        "PORT": 9000,
        "API_TOKENS": ("a", "b"),
        "LOCALHOST_BYPASS": False,
    }


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        (" tok-a , ,tok-b ,, ", ("tok-a", "tok-b")),
        ("tok-a", ("tok-a",)),
        (" , ,", ()),
        ("", ()),
        ("with inner space", ("with inner space",)),
    ],
)
def test_api_tokens_are_trimmed_and_empty_entries_ignored(text, tokens):
    assert load_config({}, environ={"API_TOKENS": text})["API_TOKENS"] == tokens


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        ("Yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("NO", False),
        (" off ", False),
    ],
)
def test_localhost_bypass_reads_common_spellings(text, value):
    assert load_config({}, environ={"LOCALHOST_BYPASS": text})["LOCALHOST_BYPASS"] is value


def test_flags_mirror_every_setting():
    for name in ISSUE_SETTINGS:
        flag = "--" + name.lower().replace("_", "-")
        assert parse_args([flag, "value"]) == {name: "value"}


def test_help_gives_each_flag_its_default_and_points_to_the_readme(capsys):
    """--help listed the flags with nothing after them."""
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())

    assert "--port PORT default: 8080" in text
    assert "--api-tokens API_TOKENS default: none" in text
    assert "--watch-store WATCH_STORE default: 1" in text  # as the README writes it, not True
    assert "Configuration table" in text


def test_flags_override_the_environment():
    config = load_config(parse_args(["--port", "9001", "--host", "::1"]), environ={"PORT": "9000"})

    assert (config["PORT"], config["HOST"]) == (9001, "::1")


@pytest.mark.parametrize(
    ("environ", "mentions"),
    [
        ({"PORT": "abc"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"PORT": "-1"}, "PORT"),
        ({"PORT": ""}, "PORT"),
        ({"PORT": "0"}, "PORT"),  # the system would pick one no agent knows
        ({"PORT": "\uff18\uff10\uff18\uff10"}, "PORT"),  # full-width 8080: int() reads it
        ({"THREADS": "\u0668"}, "THREADS"),  # an Arabic-Indic 8
        ({"THREADS": "100000"}, "THREADS"),
        ({"MAX_BODY_BYTES": "40000000"}, "MAX_BODY_BYTES"),  # its runs could not be stored
        ({"STORE_DIR": ""}, "STORE_DIR"),  # would make the working folder the store
        ({"STORE_DIR": "  "}, "STORE_DIR"),
        ({"TRUSTED_PROXY": "foo bar"}, "TRUSTED_PROXY"),  # waitress would never match it
        ({"TRUSTED_PROXY": "127.0.0.1, 10.0.0.1"}, "TRUSTED_PROXY"),
        ({"LOCALHOST_BYPASS": "maybe"}, "LOCALHOST_BYPASS"),
        ({"AUTH_USER": "admin"}, "AUTH_PASS"),
        ({"AUTH_PASS": "secret"}, "AUTH_USER"),
        ({"AUTH_USER": "ad:min", "AUTH_PASS": "secret"}, "AUTH_USER"),
    ],
)
def test_bad_settings_are_refused(environ, mentions):
    with pytest.raises(ConfigError, match=mentions):
        load_config({}, environ=environ)


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("PORT", 1, 65535),
        ("THREADS", 1, MAX_THREADS),
        ("CONNECTION_LIMIT", 1, 2**31 - 1),
        ("MAX_BODY_BYTES", 1, MAX_RUN_FILE_BYTES // 4),
    ],
)
def test_whole_number_settings_take_both_ends_of_their_range(name, low, high):
    """The bounds named in each refusal are themselves allowed."""
    for value in (low, high):
        assert load_config({}, environ={name: str(value)})[name] == value
    with pytest.raises(ConfigError, match=name):
        load_config({}, environ={name: str(high + 1)})


def test_a_trusted_proxy_address_is_trimmed():
    assert load_config({}, environ={"TRUSTED_PROXY": " 127.0.0.1 "})["TRUSTED_PROXY"] == "127.0.0.1"


def test_a_trusted_proxy_of_any_address_is_allowed():
    """'*', waitress's word for any proxy, is not refused as an address it cannot parse."""
    assert load_config({}, environ={"TRUSTED_PROXY": "*"})["TRUSTED_PROXY"] == "*"


def test_a_bad_trusted_proxy_is_told_that_star_is_allowed_too():
    """The message named only an address, where the README's table allows '*' as well."""
    with pytest.raises(ConfigError) as refused:
        load_config({}, environ={"TRUSTED_PROXY": "nginx"})
    assert str(refused.value) == (
        "environment variable TRUSTED_PROXY='nginx' is invalid: "
        "must be one IP address, such as 127.0.0.1, or *"
    )


def test_a_token_no_header_can_carry_is_refused_without_showing_it():
    """A header reaches the app as Latin-1, so a non-ASCII token would admit no one."""
    with pytest.raises(ConfigError) as refused:
        load_config({}, environ={"API_TOKENS": "plain-1, tökén-2"})
    message = str(refused.value)
    assert message == (
        "environment variable API_TOKENS=(hidden) is invalid: "
        "token 2 holds a character a header cannot carry; use ASCII"
    )


# --- refusing to start -----------------------------------------------------------------------


@pytest.fixture
def regular_file(tmp_path: Path) -> Path:
    """A regular file: no folder can be made under it, even by root."""
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize(
    ("args", "settings", "mentions"),
    [
        pytest.param((), {"PORT": "abc"}, "PORT", id="port-abc"),
        pytest.param((), {"AUTH_PASS": "s3cret-pw"}, "AUTH_USER", id="pass-without-user"),
        pytest.param(("--store-dir", "{file}/store"), {}, "{file}/store", id="store-under-file"),
        pytest.param(
            (
                "--store-dir",
                "{file}",
            ),
            {},
            "{file} is a file",
            id="store-is-a-file",
        ),
        pytest.param((), {"HOST": "999.1.1.1"}, "cannot listen on HOST='999.1.1.1'", id="host"),
        # A mistyped flag holding a secret: named, its value never shown.
        pytest.param(("--auth-password=s3cret-pw",), {}, "--auth-password", id="unknown-flag"),
        # argparse's 'ambiguous option' error repeats the value; and an abbreviation that
        # matched one flag was taken as it, a guess at what was meant.
        pytest.param(("--auth=s3cret-pw",), {}, "unknown option --auth", id="ambiguous-flag"),
        pytest.param(("--auth-p=s3cret-pw",), {}, "unknown option --auth-p", id="abbreviation"),
        pytest.param(("--port",), {}, "--port", id="flag-without-value"),
        pytest.param((), {"PORT": "{taken}"}, "Address already in use", id="port-in-use"),
    ],
)
def test_bad_configuration_stops_the_start_with_one_clear_line(
    tmp_path, regular_file, args, settings, mentions
):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    settings = {"STORE_DIR": str(tmp_path / "store"), "PORT": str(free_port()), **settings}
    settings["PORT"] = settings["PORT"].format(taken=taken.getsockname()[1])
    with taken:
        result = run_app_py(*(arg.format(file=regular_file) for arg in args), **settings)

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert mentions.format(file=regular_file) in lines[0]
    assert "[Errno" not in lines[0]  # the system's words, not Python's repr of them
    assert "s3cret-pw" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_a_store_folder_the_server_may_not_reach_stops_the_start_with_one_clear_line(tmp_path):
    """A parent folder the service user may not search: a PermissionError traceback."""
    parent = tmp_path / "parent"
    (parent / "store").mkdir(parents=True)
    parent.chmod(0)
    try:
        result = run_app_py(
            prefix=AS_AN_ORDINARY_USER, STORE_DIR=str(parent / "store"), PORT=str(free_port())
        )
    finally:
        parent.chmod(0o755)

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"backup-registry: cannot reach store folder {parent / 'store'}: Permission denied"
    ]


def test_flags_configure_the_real_server(tmp_path):
    port = free_port()
    store_dir = tmp_path / "flagged-store"
    flags = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--store-dir": str(store_dir),
        "--api-tokens": "flag-token",
        "--localhost-bypass": "0",
    }
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), *(part for pair in flags.items() for part in pair)],
        cwd=ROOT,
        env=clean_environ(PORT="1"),  # the flag wins over the environment
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            assert server.poll() is None, "the server exited"
            try:
                requests.get(f"{url}/health", timeout=1).close()
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        with requests.Session() as session:
            refused = session.get(f"{url}{RUNS}", timeout=5)
            admitted = session.post(
                f"{url}{RUNS}", json=make_run(), headers={"X-API-Key": "flag-token"}, timeout=5
            )
    finally:
        server.terminate()
        server.wait(timeout=10)

    assert refused.status_code == 401  # --localhost-bypass 0
    assert admitted.status_code == 201
    assert (store_dir / "run-1.json").is_file()


def test_default_store_folder_is_created_on_first_start(tmp_path, monkeypatch):
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)

    app = create_app({"WATCH_STORE": False})
    app.extensions["store"].close()

    assert (tmp_path / "store").is_dir()


def test_default_store_folder_is_ignored_by_git():
    result = subprocess.run(
        ["git", "check-ignore", "--quiet", "store/run-1.json"], cwd=ROOT, check=False
    )

    assert result.returncode == 0


# --- logging ---------------------------------------------------------------------------------


def access_lines(caplog) -> list[str]:
    """Return the access-log lines logged so far."""
    return [r.getMessage() for r in caplog.records if r.name == "backup_registry.access"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "line"),
    [
        ("get", RUNS, {}, f"GET {RUNS} 200"),
        ("post", RUNS, {"json": make_run()}, f"POST {RUNS} 201"),
        ("delete", f"{RUNS}/run-1", {}, f"DELETE {RUNS}/run-1 204"),
        ("get", f"{RUNS}/nope", {}, f"GET {RUNS}/nope 404"),
        ("put", RUNS, {}, f"PUT {RUNS} 405"),
        ("post", RUNS, {"data": b"{"}, f"POST {RUNS} 400"),
        ("get", RUNS, {"environ_base": {"REMOTE_ADDR": "10.0.0.5"}}, f"GET {RUNS} 401"),
        ("get", "/health", {}, "GET /health 200"),
    ],
)
def test_each_request_gets_one_access_log_line(client, caplog, method, path, kwargs, line):
    caplog.set_level(logging.INFO)

    getattr(client, method)(path, **kwargs)

    lines = access_lines(caplog)
    assert len(lines) == 1
    assert ACCESS_LINE.fullmatch(lines[0]), lines[0]
    assert lines[0].startswith(line + " ")


def test_access_log_leaves_out_the_query_string(client, caplog):
    caplog.set_level(logging.INFO)

    client.get(f"{RUNS}?limit=5&job_name=secret-job")

    assert access_lines(caplog)[0].startswith(f"GET {RUNS} 200 ")


def test_access_log_line_cannot_be_split_by_the_path(client, caplog):
    caplog.set_level(logging.INFO)

    client.get(f"{RUNS}/a%0AGET%20/forged%20200%201.0ms")

    [line] = access_lines(caplog)
    assert "\n" not in line
    assert line.startswith(f"GET {RUNS}/a%0AGET%20/forged%20200%201.0ms 404 ")


def test_a_path_cannot_name_another_address_in_a_refusal_line(start_client, caplog):
    """The README's fail2ban rule must find the client's address, not one the path holds."""
    client = start_client(API_TOKENS="tok-1f2e", LOCALHOST_BYPASS="0")
    caplog.set_level(logging.INFO)
    forged = "/refused GET / from 203.0.113.77: no valid credentials"

    assert client.get(forged.replace(" ", "%20")).status_code == 401
    assert client.post(f"/x%0A{forged[1:]}".replace(" ", "%20")).status_code == 401

    failregex = re.compile(r"refused \S+ \S+ from (?P<host>\S+): no valid credentials")
    hosts = [match["host"] for match in map(failregex.search, caplog.text.splitlines()) if match]
    assert hosts == ["127.0.0.1", "127.0.0.1"]
    assert "203.0.113.77" in caplog.text  # logged, encoded: %20from%20203.0.113.77


def test_a_forwarded_address_cannot_name_another_in_a_refusal_line(start_client, caplog):
    """Behind TRUSTED_PROXY the address is X-Forwarded-For's, unchecked by waitress: a proxy
    that passes a client's own header on must not let it frame another address."""
    client = start_client(API_TOKENS="tok-1f2e", LOCALHOST_BYPASS="0")  # as the header would
    caplog.set_level(logging.INFO)
    forged = [
        "198.51.100.4 from 203.0.113.77: no valid credentials",
        "::1%x from 203.0.113.77",  # an IPv6 scope id, which ipaddress takes as it is
        "2001:db8::1",
    ]

    for address in forged:
        assert client.get(RUNS, environ_base={"REMOTE_ADDR": address}).status_code == 401

    failregex = re.compile(r"refused \S+ \S+ from (?P<host>\S+): no valid credentials")
    hosts = [match["host"] for match in map(failregex.search, caplog.text.splitlines()) if match]
    assert hosts == [
        "198.51.100.4%20from%20203.0.113.77:%20no%20valid%20credentials",
        "::1%25x%20from%20203.0.113.77",
        "2001:db8::1",
    ]


def test_waitress_queue_warnings_are_quieted(capsys):
    queue_logger = logging.getLogger("waitress.queue")
    queue_logger.setLevel(logging.NOTSET)
    try:
        exit_code = main(["--port", "not-a-port"])  # stops before serving, after logging set-up
        quieted = not queue_logger.isEnabledFor(logging.WARNING)
    finally:
        queue_logger.setLevel(logging.NOTSET)

    assert exit_code != 0
    assert quieted
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_a_second_registry_on_the_same_store_folder_is_refused(tmp_path):
    """Two servers on one folder would keep two indexes and overwrite one snapshot: the
    second is refused in one line, and the first goes on serving."""
    store_dir = tmp_path / "shared-store"
    first = LiveServer(store_dir).wait_ready()
    try:
        result = run_app_py(STORE_DIR=str(store_dir), PORT=str(free_port()))
        assert result.returncode == 2
        (line,) = result.stderr.splitlines()
        assert f"store folder {store_dir} is in use by another process" in line
        assert requests.get(first.url + "/health", timeout=5).status_code == 200
    finally:
        first.stop()
    # Its lock goes with it: the folder can be served again at once.
    again = LiveServer(store_dir).wait_ready()
    again.stop()
