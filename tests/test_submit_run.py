"""POST /v1/backup-runs: what a backup script may send, and what it gets back."""

from __future__ import annotations

import gzip
import json
import re
from datetime import UTC, datetime

import pytest
from conftest import make_run

RUNS = "/v1/backup-runs"
MIB = 1024 * 1024
NOW = datetime(2026, 5, 12, 2, 5, 0, 123456, tzinfo=UTC)
MISSING = object()  # as a field value: leave the field out


@pytest.fixture
def app_config(app_config: dict) -> dict:
    """The test app, with a clock that always says NOW; nothing here needs the folder watched."""
    return {**app_config, "CLOCK": lambda: NOW, "WATCH_STORE": False}


def post(client, body, **kwargs):
    """POST body: bytes as they are, anything else as JSON."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(RUNS, data=data, **kwargs)


def report(**fields) -> dict:
    """Return a valid run with fields changed; MISSING removes a field."""
    run = make_run(**fields)
    return {name: value for name, value in run.items() if value is not MISSING}


def assert_error(response, status: int, mentions: str) -> None:
    """Check an error answer: its status, and an error text that names the cause."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert list(response.get_json()) == ["error"]
    assert mentions in response.get_json()["error"]


def test_valid_run_is_201_with_the_stored_object(client):
    response = post(client, make_run())

    assert response.status_code == 201
    assert response.get_json() == {**make_run(), "received_at": "2026-05-12T02:05:00.123456Z"}
    assert client.get(f"{RUNS}/run-1").get_json() == response.get_json()


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/x-www-form-urlencoded",  # what curl -d sends
        "text/plain",
        None,
    ],
)
def test_body_is_read_as_json_whatever_the_content_type(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}

    response = post(client, make_run(), headers=headers)

    assert response.status_code == 201
    assert response.get_json()["run_id"] == "run-1"


def test_optional_fields_are_stored_as_sent(client):
    optional = {
        "bytes_backed_up": 1073741824,
        "encrypted": True,
        "encryption_status": "encrypted",
        "error": None,
        "backup_url": "https://backups.example/pg/2026-05-12.tar.zst",
        "metadata": {"compression": "zstd", "tags": ["nightly"], "nested": {"level": 2}},
    }

    response = post(client, make_run(**optional))

    assert response.status_code == 201
    stored = client.get(f"{RUNS}/run-1").get_json()
    assert {name: stored[name] for name in optional} == optional


def test_a_null_backup_url_means_none_as_in_the_original(client):
    response = post(client, make_run(backup_url=None))

    assert response.status_code == 201
    assert client.get(f"{RUNS}/run-1").get_json()["backup_url"] is None
    assert client.get("/run/run-1").status_code == 200  # the dashboard shows no link


def test_a_byte_order_mark_before_the_json_is_ignored(client):
    """PowerShell 5 writes one before UTF-8 text; RFC 8259 lets a parser ignore it."""
    response = post(client, b"\xef\xbb\xbf" + json.dumps(make_run()).encode())

    assert response.status_code == 201
    assert client.get(f"{RUNS}/run-1").get_json()["job_name"] == make_run()["job_name"]


def test_whole_float_byte_count_is_stored_as_integer(client):
    response = post(client, make_run(bytes_backed_up=5.0))

    assert response.status_code == 201
    stored = client.get(f"{RUNS}/run-1").get_json()["bytes_backed_up"]
    assert stored == 5 and type(stored) is int  # "5", not "5.0", on disk


def test_unknown_top_level_fields_are_accepted_and_dropped(client):
    response = post(client, make_run(hostname="db-01", retries=3, status_text="fine"))

    assert response.status_code == 201
    assert set(response.get_json()) == {*make_run(), "received_at"}
    assert set(client.get(f"{RUNS}/run-1").get_json()) == {*make_run(), "received_at"}


def test_unknown_fields_are_dropped_unread_whatever_they_hold(client, store_dir):
    """Text that could not be stored, or nesting too deep to keep, in a field that is dropped
    anyway refused the whole run: the report was lost for a field no one would read."""
    body = make_run(extra={"\udc80": "\ud800"}, **{"\ud800": 1}, deep=deep_metadata(40))

    response = post(client, json.dumps(body).encode())

    assert response.status_code == 201, response.get_json()
    assert json.loads((store_dir / "run-1.json").read_text()).keys() == {
        *make_run(),
        "received_at",
    }


def test_received_at_is_utc_with_microseconds_and_z(client):
    received_at = post(client, make_run()).get_json()["received_at"]

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", received_at)
    assert received_at == "2026-05-12T02:05:00.123456Z"


@pytest.mark.parametrize("sent", ["2000-01-01T00:00:00Z", "yesterday", 5, None, {"at": 1}])
def test_received_at_sent_by_the_client_is_replaced(client, sent):
    response = post(client, make_run(received_at=sent))

    assert response.status_code == 201
    assert response.get_json()["received_at"] == "2026-05-12T02:05:00.123456Z"
    assert client.get(f"{RUNS}/run-1").get_json()["received_at"] == "2026-05-12T02:05:00.123456Z"


def test_overwrite_keeps_one_file(client, store_dir):
    post(client, make_run(status="failure", error="disk full"))

    response = post(client, make_run(status="success"))

    assert response.status_code == 201
    assert client.get(f"{RUNS}/run-1").get_json() == response.get_json()
    assert "error" not in response.get_json()
    assert [run["status"] for run in client.get(RUNS).get_json()] == ["success"]
    assert [path.name for path in store_dir.iterdir()] == ["run-1.json"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("run_id", MISSING),
        ("run_id", ""),
        ("run_id", "   "),
        ("run_id", 42),
        ("run_id", None),
        ("run_id", "x" * 201),
        ("run_id", "line\nbreak"),
        ("job_name", MISSING),
        ("job_name", "\t "),
        ("job_name", ["postgres"]),
        ("job_name", "j" * 201),
        ("agent_id", MISSING),
        ("agent_id", " "),
        ("agent_id", 7),
        ("agent_id", "a" * 201),
        ("job_name", "\u202eyliad-sergtsop"),  # shows as "postgres-daily": a lookalike
        ("agent_id", "db\u2067-01"),  # a right-to-left isolate
        ("run_id", "run\u200f-1"),  # a right-to-left mark
        # C1 controls: U+009B is a terminal's CSI, which `less` or a log viewer obeys.
        ("job_name", "csi\u009b2J"),
        ("agent_id", "nel\u0085x"),
        ("run_id", "\u0080r1"),
        # Names of characters that show nothing alone: an empty link on the dashboard.
        ("job_name", "\u200b"),
        ("agent_id", "\u3164"),
        ("run_id", "\u2800 \u2060"),
        ("job_name", "\ufe0f\u2063"),  # a variation selector, an invisible separator
        ("job_name", "postgres\n"),  # Python's `$` would match before the newline
        ("agent_id", "db-01\n"),
        ("backup_url", "https://backups.example/x\n"),
        ("start_time", MISSING),
        ("start_time", "yesterday"),
        ("start_time", "2026-05-12"),
        ("start_time", "2026-13-01T00:00:00Z"),
        ("start_time", 1778551200),
        ("end_time", MISSING),
        ("end_time", "12/05/2026 02:04"),
        ("end_time", None),
        ("status", MISSING),
        ("status", "SUCCESS"),
        ("status", "ok"),
        ("status", None),
        ("bytes_backed_up", -1),
        ("bytes_backed_up", 1.5),
        ("bytes_backed_up", "1024"),
        ("bytes_backed_up", True),
        ("encrypted", "true"),
        ("encrypted", 1),
        ("encryption_status", "yes"),
        ("encryption_status", True),
        ("error", 500),
        ("error", ["failed"]),
        ("backup_url", "ftp://backups.example/x"),
        ("backup_url", "javascript:alert(1)"),
        ("backup_url", "backups.example/x"),
        ("backup_url", "https://"),
        ("metadata", []),
        ("metadata", "zstd"),
        ("metadata", None),
    ],
)
def test_broken_field_rule_is_400_naming_the_field(client, store_dir, field, value):
    response = post(client, report(**{field: value}))

    assert_error(response, 400, f"{field}:")
    assert list(store_dir.iterdir()) == []


@pytest.mark.parametrize("field", ["run_id", "job_name", "agent_id"])
def test_names_may_be_200_characters(client, field):
    response = post(client, make_run(**{field: "n" * 200}))

    assert response.status_code == 201


@pytest.mark.parametrize(
    "name",
    [
        "\U0001f468\u200d\U0001f469\u200d\U0001f467 family photos",  # joined by U+200D
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, with a U+200C
        "\u200bpostgres",  # an invisible character before a visible one is no blank name
        "caf\u00e9 \u00a0 \u00ff",  # Latin-1 letters beside the C1 block stay allowed
    ],
)
def test_names_with_joiners_and_letters_are_accepted(client, name):
    run = make_run("r1", job_name=name, agent_id=name)
    assert client.post(RUNS, json=run).status_code == 201


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("run_id", "x" * 201, "run_id: must be at most 200 characters"),
        ("run_id", 42, "run_id: must be a string"),
        ("start_time", 1778551200, "start_time: must be a string"),  # no format error besides
        (
            "start_time",
            "yesterday",
            "start_time: must be an ISO 8601 date-time, such as 2026-05-12T02:00:00Z",
        ),
        ("status", "ok", "status: must be one of success, failure, partial"),
        ("bytes_backed_up", "1024", "bytes_backed_up: must be an integer"),
        ("bytes_backed_up", -1, "bytes_backed_up: must be at least 0"),
        ("bytes_backed_up", 2**63, "bytes_backed_up: must be at most 9223372036854775807"),
        ("encrypted", "true", "encrypted: must be a boolean"),
        ("error", 500, "error: must be a string or null"),
        ("metadata", [], "metadata: must be an object"),
        ("backup_url", "ftp://x", "backup_url: must be an http:// or https:// URL"),
    ],
)
def test_a_broken_field_is_told_why_in_words(client, field, value, error):
    """Pins each rule's whole message: the field, and the reason in plain words, said once."""
    response = post(client, report(**{field: value}))

    assert response.status_code == 400
    assert response.get_json() == {"error": error}


@pytest.mark.parametrize(
    "start_time",
    [
        "2026-05-12T02:00:00+00:00",  # date -Iseconds
        "2026-05-12T02:00:00.000Z",  # JavaScript's toISOString()
        "2026-05-12T04:00:00.0000000+02:00",  # PowerShell's Get-Date -Format o
        "2026-05-12 02:00:00.123456",  # Python's str() of a datetime: a space, no offset
        "2026-05-12t02:00:00z",  # RFC 3339 allows lower case
        "20260512T020000Z",  # ISO 8601's basic format
        "2026-W20-2T02:00",  # a week date
        "2026-05-12T02:00:00,5+0000",  # a decimal comma, an offset without its colon
        "2026-05-12 04:00:00 +0200",  # git's %ci, Ruby's Time#to_s: a space before the offset
        "2026-05-12T02:00:00 Z",
    ],
)
def test_iso_8601_date_times_that_tools_write_are_accepted(client, start_time):
    response = post(client, report(start_time=start_time, end_time="2026-05-12T03:00:00Z"))

    assert response.status_code == 201, response.get_json()
    assert response.get_json()["start_time"] == start_time  # stored as sent


@pytest.mark.parametrize(
    "start_time",
    [
        "2026-05-12X02:00:00",  # Python 3.11's fromisoformat takes any separator...
        "2026-05-12702:00:00",  # ...even a digit
        "2026-05-12\u00e902:00:00",
        "2026-05-12T02:00:00.Z",  # a decimal point and no digits
        "2026-05-12T02:00:00+00:00:30",  # an offset with seconds
        "2026-05-12T02:00:00  Z",  # one space before an offset is taken, not two
        "\uff12\uff10\uff12\uff16-05-12T02:00:00",  # full-width digits
    ],
)
def test_date_times_iso_8601_has_no_form_for_are_refused(client, start_time):
    """Refuse rather than guess: these were stored as sent, and shown as they were."""
    response = post(client, report(start_time=start_time, end_time="2026-05-12T03:00:00Z"))

    assert response.get_json() == {
        "error": "start_time: must be an ISO 8601 date-time, such as 2026-05-12T02:00:00Z"
    }
    assert client.get(f"{RUNS}/run-1").status_code == 404


def test_a_date_time_past_year_9999_in_utc_is_told_so(client):
    """Well formed, and so not 'must be an ISO 8601 date-time': the offset is the trouble."""
    response = post(client, report(end_time="9999-12-31T23:00:00-12:00"))

    assert response.get_json() == {
        "error": "end_time: out of range once converted to UTC (years 1 to 9999 only)"
    }


def test_a_compressed_body_is_refused_naming_content_encoding(client):
    """A gzip body was refused as 'body: not valid UTF-8 (byte 1)', which sent its sender to
    look for a wrong character; a plain body labelled 'br' was taken as plain."""
    plain = json.dumps(make_run()).encode()

    compressed = post(client, gzip.compress(plain), headers={"Content-Encoding": "gzip"})
    mislabelled = post(client, plain, headers={"Content-Encoding": "br"})

    assert compressed.status_code == mislabelled.status_code == 415
    assert compressed.get_json() == {
        "error": "Content-Encoding: 'gzip' is not supported; send the body uncompressed"
    }
    assert compressed.headers["Accept-Encoding"] == "identity"
    assert client.get(f"{RUNS}/run-1").status_code == 404
    assert post(client, plain, headers={"Content-Encoding": "Identity"}).status_code == 201


def test_problems_are_listed_in_the_schemas_field_order(client):
    """Pins the order of several problems: the report's own field order, not the alphabet."""
    response = post(client, {})

    assert response.get_json()["error"] == (
        "run_id: is required; job_name: is required; agent_id: is required; "
        "start_time: is required; end_time: is required; status: is required"
    )


def test_every_problem_is_named_at_once(client):
    response = post(client, report(job_name=MISSING, status="ok", bytes_backed_up=-5))

    error = response.get_json()["error"]
    assert response.status_code == 400
    assert "job_name:" in error and "status:" in error and "bytes_backed_up:" in error


def test_end_before_start_is_400(client):
    response = post(
        client, make_run(start_time="2026-05-12T02:00:00Z", end_time="2026-05-12T01:59:59Z")
    )

    assert_error(response, 400, "end_time:")


def test_end_equal_to_start_is_accepted(client):
    response = post(
        client, make_run(start_time="2026-05-12T02:00:00Z", end_time="2026-05-12T02:00:00Z")
    )

    assert response.status_code == 201


@pytest.mark.parametrize(
    ("start_time", "end_time", "status"),
    [
        # A naive time means UTC, so it compares with an aware one.
        ("2026-05-12T02:00:00", "2026-05-12T02:30:00Z", 201),
        ("2026-05-12T03:00:00", "2026-05-12T02:30:00Z", 400),
        ("2026-05-12T02:00:00Z", "2026-05-12T02:30:00", 201),
        ("2026-05-12T02:00:00Z", "2026-05-12T01:30:00", 400),
        # Offsets are understood: 04:00+02:00 is 02:00Z, before 02:30Z.
        ("2026-05-12T04:00:00+02:00", "2026-05-12T02:30:00Z", 201),
        ("2026-05-12T02:00:00Z", "2026-05-12T03:30:00+02:00", 400),
        ("2026-05-11T23:00:00-05:00", "2026-05-12T04:30:00Z", 201),
        # Lower-case separators and fractions, as RFC 3339 allows.
        ("2026-05-12t02:00:00.5z", "2026-05-12T02:00:00.750Z", 201),
    ],
)
def test_times_compare_in_utc(client, local_time_not_utc, start_time, end_time, status):
    response = post(client, make_run(start_time=start_time, end_time=end_time))

    assert response.status_code == status, response.get_json()
    if status == 201:
        # Times are stored as sent; only the comparison normalises them.
        assert response.get_json()["start_time"] == start_time


def deep_metadata(levels: int) -> dict:
    """Return metadata nested the given number of objects deep."""
    metadata: dict = {"leaf": True}
    for _ in range(levels - 1):
        metadata = {"next": metadata}
    return metadata


def bad_json_encoding(text: str) -> bytes:
    """Return a valid run whose job_name is text, encoded as Latin-1 rather than UTF-8."""
    return json.dumps(make_run(job_name=text), ensure_ascii=False).encode("latin-1")


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b" \r\n\t", "empty", id="only-whitespace"),
        pytest.param(b"run_id=run-1&status=success", "not valid JSON", id="form-fields"),
        pytest.param(json.dumps(make_run())[:-1].encode(), "not valid JSON", id="truncated"),
        pytest.param(bad_json_encoding("café"), "UTF-8", id="latin-1"),
        pytest.param(b"\xff\xfe{\x00}\x00", "UTF-8", id="utf-16"),
        pytest.param(b"[]", "object", id="array"),
        pytest.param(b'"run-1"', "object", id="string"),
        pytest.param(b"42", "object", id="number"),
        pytest.param(b"null", "object", id="null"),
        pytest.param(json.dumps(make_run(metadata={"x": float("nan")})).encode(), "NaN", id="nan"),
        pytest.param(
            json.dumps(make_run(metadata={"x": float("inf")})).encode(), "Infinity", id="inf"
        ),
        pytest.param(
            json.dumps(make_run(metadata={"x": float("-inf")})).encode(), "Infinity", id="-inf"
        ),
        pytest.param(
            json.dumps(make_run(metadata={"x": 1})).encode().replace(b'"x": 1', b'"x": 1e400'),
            "the number 1e400 is out of range",
            id="too-large-for-a-double",
        ),
        pytest.param(
            json.dumps(make_run(job_name="ab")).encode().replace(b"ab", b"a\x01b"),
            "body: not valid JSON (Invalid control character at line 1 column",
            id="raw-control-character",
        ),
        pytest.param(
            json.dumps(make_run(metadata={"x": 1}))
            .encode()
            .replace(b'"x": 1', b'"x": ' + b"9" * 5000),
            "body: a number has more than 4300 digits",
            id="5000-digits",
        ),
        pytest.param(json.dumps(make_run(job_name="\ud800")).encode(), "surrogate", id="surr"),
        pytest.param(
            json.dumps(make_run(metadata={"\udc00": 1})).encode(), "surrogate", id="surr-key"
        ),
        pytest.param(b"[" * 10000 + b"]" * 10000, "nested", id="10000-arrays"),
        pytest.param(b'{"a":' * 10000 + b"1" + b"}" * 10000, "nested", id="10000-objects"),
        pytest.param(
            json.dumps(make_run(metadata=deep_metadata(100))).encode(), "nested", id="deep-meta"
        ),
    ],
)
def test_body_that_is_not_a_json_object_is_400(client, store_dir, body, mentions):
    response = post(client, body)

    assert_error(response, 400, mentions)
    assert list(store_dir.iterdir()) == []


def test_a_key_given_twice_keeps_its_last_value_as_the_original_did(client, store_dir):
    """JSON.parse in the original kept the last: a script appending an override still works."""
    body = (
        json.dumps(make_run("twice", status="success", metadata={"host": "a"}))
        .replace('"host": "a"', '"host": "a", "host": "b"')
        .replace("{", '{"status": "failure", ', 1)
        .encode()
    )

    response = post(client, body)

    assert response.status_code == 201
    assert (response.get_json()["status"], response.get_json()["metadata"]) == (
        "success",
        {"host": "b"},
    )
    on_disk = (store_dir / "twice.json").read_text()
    assert on_disk.count('"status"') == 1 and json.loads(on_disk)["status"] == "success"


def test_nesting_past_what_the_parser_follows_is_refused_without_a_wrong_limit(client):
    """An unknown field may nest past 32 levels (it is dropped); one nested past what the
    parser follows was refused as 'nested deeper than 32 levels', which said a wrong limit."""
    body = json.dumps(make_run()).encode()[:-1] + b', "extra": ' + b"[" * 5000 + b"]" * 5000 + b"}"

    assert_error(post(client, body), 400, "body: JSON nested too deeply to read")


def test_nesting_is_refused_from_the_33rd_level_on(client):
    """Pins MAX_JSON_DEPTH for objects: 32 levels in all are fine, 33 are refused."""
    fits = post(client, make_run("fits", metadata=deep_metadata(31)))  # body + 31 = 32 levels
    too_deep = post(client, make_run("too-deep", metadata=deep_metadata(32)))

    assert fits.status_code == 201
    assert too_deep.status_code == 400
    assert too_deep.get_json()["error"].endswith("JSON nested deeper than 32 levels")


def test_text_that_cannot_be_stored_is_named_by_its_full_path(client):
    """Pins the dotted path in the surrogate error: metadata.note, not a bare note."""
    body = json.dumps(make_run(metadata={"note": "\ud800"})).encode()

    assert_error(post(client, body), 400, "metadata.note: contains an unpaired UTF-16 surrogate")


def test_sane_nesting_in_metadata_is_accepted(client):
    response = post(client, make_run(metadata=deep_metadata(10)))

    assert response.status_code == 201
    assert response.get_json()["metadata"] == deep_metadata(10)


def test_body_over_one_mebibyte_is_413_with_json_error(client, store_dir):
    body = json.dumps(make_run(metadata={"pad": "x" * MIB})).encode()

    response = post(client, body)

    assert_error(response, 413, "larger than 1048576 bytes")
    assert list(store_dir.iterdir()) == []


def test_body_of_exactly_one_mebibyte_is_accepted(client):
    body = json.dumps(make_run()).encode()
    body += b" " * (MIB - len(body))

    response = post(client, body)

    assert response.status_code == 201
