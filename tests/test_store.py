"""The flat-file store on a real folder: file names, atomic writes, and the folder as the truth."""

from __future__ import annotations

import codecs
import contextlib
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from conftest import AS_AN_ORDINARY_USER, LiveServer, make_run
from test_get_delete import ODD_IDS
from test_index import run_in_thread

import store as store_module
from store import RunStore, file_name_for, run_id_for

RUNS = "/v1/backup-runs"
PLAIN_IDS = ["run-1", "a.b", "A_b-9", "x" * 200, "2026-05-12.postgres_daily", "_", "-"]
RECEIVED = "2026-05-12T02:05:00.000000Z"


def stored_run(run_id: str, **fields) -> dict:
    """Return a run as the store keeps it: with received_at."""
    return make_run(run_id, received_at=RECEIVED, **fields)


def drop_in(folder: Path, name: str, content: str | dict) -> None:
    """Write a file into the folder from outside, as cp would; a dict is written as JSON."""
    text = content if isinstance(content, str) else json.dumps(content)
    (folder / name).write_text(text, encoding="utf-8")


def eventually(check: Callable[[], object], timeout: float = 2.0) -> object:
    """Return check()'s first true result, polling until the deadline; fail after it."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            assert result, f"not true within {timeout} s"
            return result
        time.sleep(0.01)


def listed_ids(client) -> list[str]:
    """Return the ids the listing shows, newest first."""
    response = client.get(f"{RUNS}?limit=1000")
    assert response.status_code == 200
    return [run["run_id"] for run in response.get_json()]


def warnings_about(caplog, name: str) -> list[str]:
    """Return the store's warnings that mention a file name."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and name in record.getMessage()
    ]


# --- file names ------------------------------------------------------------------------------


@pytest.mark.parametrize("run_id", PLAIN_IDS)
def test_plain_id_is_stored_under_its_own_name(run_id):
    assert file_name_for(run_id) == f"{run_id}.json"
    assert run_id_for(f"{run_id}.json") == run_id


@pytest.mark.parametrize("run_id", ODD_IDS)
def test_other_ids_get_a_flat_reversible_name(run_id):
    name = file_name_for(run_id)

    assert name.endswith(".json")
    assert not name.startswith(".")
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert name not in (".json", "..json")
    assert run_id_for(name) == run_id


def test_encoded_names_stay_readable():
    assert file_name_for("run/2026-05-12:job1") == "run%2F2026-05-12%3Ajob1.json"


def test_no_two_ids_share_a_file_name():
    ids = [
        *PLAIN_IDS,
        *ODD_IDS,
        "a/b",
        "a%2Fb",
        "a%2fb",
        ".x",
        "%2Ex",
        "a b",
        "a%20b",
        "é",
        "%C3%A9",
        "A",
        "a",
    ]

    assert len({file_name_for(run_id) for run_id in ids}) == len(set(ids))


@pytest.mark.parametrize(
    "name",
    [
        "a%2fb.json",
        "a%41.json",
        "%2Fx.json.bak",
        ".x.json",
        "x.JSON",
        "%FF.json",  # decodes to no UTF-8 text
        os.fsdecode(b"caf\xe9.json"),  # not UTF-8: os.listdir gives it a surrogate escape
    ],
)
def test_names_the_store_would_not_write_belong_to_no_run(name):
    assert run_id_for(name) is None


def test_odd_ids_keep_the_folder_flat(start_client, store_dir, tmp_path):
    client = start_client(WATCH_STORE=False)

    for run_id in ODD_IDS:
        assert client.post(RUNS, json=make_run(run_id)).status_code == 201

    entries = list(store_dir.iterdir())
    assert all(entry.is_file() for entry in entries)
    assert sorted(entry.name for entry in entries) == sorted(map(file_name_for, ODD_IDS))
    beside = [path for path in tmp_path.rglob("*") if store_dir not in (path, path.parent)]
    # Only dot-files, such as the index snapshot, may sit beside the store folder.
    assert [path for path in beside if not path.name.startswith(".")] == []


def test_a_folder_that_cannot_be_listed_says_so_at_start(store_dir, monkeypatch):
    """A folder with mode 333 (writable, not readable): the start's one line said "cannot
    scan run", as if one run were at fault."""
    store_dir.mkdir()

    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(store_module.os, "scandir", refuse)
    with pytest.raises(store_module.StoreUnavailable) as raised:
        store_module.RunStore(store_dir, watch=False)
    assert str(raised.value) == (
        "cannot list the store folder: permission denied on the store folder"
    )


def test_a_run_whose_mtime_is_in_the_future_is_trusted_once_its_change_is_old(
    store_dir, monkeypatch
):
    """rsync -a from a host whose clock runs ahead, or touch -d 2030: judged by its mtime,
    such a file stayed "too young to trust" until that date, read from disk at every
    listing and left out of every snapshot. Its ctime says when it really changed."""
    monkeypatch.setattr(store_module, "RACY_NS", 300_000_000)
    store_dir.mkdir()
    drop_in(store_dir, "ahead.json", stored_run("ahead"))
    in_ten_years = time.time() + 10 * 365 * 86400
    os.utime(store_dir / "ahead.json", (in_ten_years, in_ten_years))

    store = store_module.RunStore(store_dir, watch=False)
    assert "ahead" in store._racy  # changed just now: not yet
    time.sleep(0.4)
    store.settle_racy()

    assert not store._racy
    assert store._runs["ahead"].signature is not None
    store.close()
    assert store_module.RunStore(store_dir, watch=False).files_read_at_start == 0


@pytest.mark.parametrize("watching", ["inotify", "polling"])
def test_a_run_copied_in_is_trusted_once_its_file_is_old_enough(store_dir, monkeypatch, watching):
    """A file seconds old may still be rewritten within one timestamp tick, so its signature is
    not trusted at first; it stayed so under inotify, its bytes read from disk at every
    listing, and it was left out of every snapshot."""
    if watching == "polling":
        without_inotify(monkeypatch)
    store_dir.mkdir()
    store = store_module.RunStore(store_dir)
    try:
        drop_in(store_dir, "copied.json", stored_run("copied"))
        eventually(lambda: "copied" in store)
        assert store._runs["copied"].signature is None  # seconds old: not yet
        eventually(lambda: store._runs["copied"].signature is not None, timeout=8)
        assert not store._racy
    finally:
        store.close()
    assert store_module.RunStore(store_dir, watch=False).files_read_at_start == 0


def test_id_too_long_once_encoded_is_400(start_client, store_dir):
    client = start_client(WATCH_STORE=False)

    response = client.post(RUNS, json=make_run("é" * 100))  # 200 characters, 600 bytes encoded

    assert response.status_code == 400
    assert response.get_json()["error"].startswith("run_id: too long once encoded")
    assert list(store_dir.iterdir()) == []


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_reading_or_deleting_an_id_too_long_once_encoded_is_400(start_client, method):
    client = start_client(WATCH_STORE=False)

    response = client.open(f"{RUNS}/{quote('é' * 100, safe='')}", method=method)

    # Wrong, not missing (README): a 404 or 204 would tell a script the id could exist.
    assert response.status_code == 400
    assert response.get_json()["error"].startswith("run_id: too long once encoded")


def test_an_id_whose_file_name_takes_exactly_255_bytes_is_stored_and_one_more_is_not(
    start_client, store_dir
):
    """The file name limit is inclusive: a name of 255 bytes is one the file system holds."""
    client = start_client(WATCH_STORE=False)
    longest = "é" * 41 + "abcd"  # 41 * 6 + 4 = 250 bytes encoded, 255 with ".json"
    assert len(file_name_for(longest).encode()) == store_module.MAX_FILE_NAME_BYTES

    assert client.post(RUNS, json=make_run(longest)).status_code == 201
    assert client.post(RUNS, json=make_run(longest + "e")).status_code == 400

    assert os.listdir(store_dir) == [file_name_for(longest)]
    assert run_id_for(file_name_for(longest)) == longest
    assert client.get(f"{RUNS}/{quote(longest, safe='')}").get_json()["run_id"] == longest


# --- atomic writes ---------------------------------------------------------------------------


def test_writes_leave_no_temp_files(start_client, store_dir):
    client = start_client(WATCH_STORE=False)

    for number in range(5):
        client.post(RUNS, json=make_run(f"run-{number}"))
        client.post(RUNS, json=make_run(f"run-{number}", status="failure"))
    client.delete(f"{RUNS}/run-0")

    assert sorted(os.listdir(store_dir)) == [f"run-{number}.json" for number in range(1, 5)]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o644), (0o027, 0o640)])
def test_file_mode_is_0644_under_the_umask(start_client, store_dir, umask, mode):
    client = start_client(WATCH_STORE=False)
    previous = os.umask(umask)
    try:
        client.post(RUNS, json=make_run())
    finally:
        os.umask(previous)

    assert (store_dir / "run-1.json").stat().st_mode & 0o777 == mode


def test_16_clients_reposting_one_run_leave_one_whole_record(start_client, store_dir):
    client = start_client(WATCH_STORE=False)
    writers = 16
    barrier = threading.Barrier(writers + 1)
    statuses: list[int] = []
    partial_reads: list[str] = []

    def post_as(writer: int) -> None:
        own_client = client.application.test_client()
        barrier.wait()
        for _ in range(3):
            run = make_run("same", job_name=f"job-{writer}", metadata={"pad": "x" * 50_000})
            statuses.append(own_client.post(RUNS, json=run).status_code)

    def read_while_they_write() -> None:
        barrier.wait()
        while any(thread.is_alive() for thread in threads):
            try:
                json.loads((store_dir / "same.json").read_bytes())
            except FileNotFoundError:
                pass  # not written yet
            except ValueError as exc:
                partial_reads.append(str(exc))

    threads = [threading.Thread(target=post_as, args=(writer,)) for writer in range(writers)]
    reader = threading.Thread(target=read_while_they_write)
    for thread in [*threads, reader]:
        thread.start()
    for thread in [*threads, reader]:
        thread.join()

    assert statuses == [201] * writers * 3
    assert partial_reads == []
    assert os.listdir(store_dir) == ["same.json"]
    on_disk = json.loads((store_dir / "same.json").read_text())
    assert on_disk["job_name"] in {f"job-{writer}" for writer in range(writers)}
    assert on_disk["metadata"] == {"pad": "x" * 50_000}
    assert client.get(f"{RUNS}/same").get_json() == on_disk
    assert client.get(RUNS).get_json() == [on_disk]


# --- the folder is the truth -----------------------------------------------------------------


def test_what_is_on_disk_is_what_get_returns(start_client, store_dir):
    client = start_client(WATCH_STORE=False)

    posted = client.post(RUNS, json=make_run("run/1", metadata={"ünï": ["cødé", 1]})).get_json()

    on_disk = json.loads((store_dir / file_name_for("run/1")).read_bytes())
    assert on_disk == posted
    assert client.get(f"{RUNS}/{quote('run/1', safe='')}").get_json() == on_disk
    assert client.get(RUNS).get_json() == [on_disk]


def test_runs_already_in_the_folder_are_served_at_start(start_client, store_dir):
    store_dir.mkdir()
    drop_in(store_dir, "run-1.json", stored_run("run-1"))
    drop_in(store_dir, file_name_for("run/2"), stored_run("run/2"))

    client = start_client(WATCH_STORE=False)

    assert sorted(listed_ids(client)) == ["run-1", "run/2"]
    assert client.get(f"{RUNS}/run-1").get_json() == stored_run("run-1")


def test_file_dropped_in_from_outside_is_listed_and_served(start_client, store_dir):
    client = start_client()

    drop_in(store_dir, "dropped.json", stored_run("dropped", metadata={"from": "rsync"}))

    eventually(lambda: listed_ids(client) == ["dropped"])
    assert client.get(f"{RUNS}/dropped").get_json() == stored_run(
        "dropped", metadata={"from": "rsync"}
    )


def test_file_renamed_in_from_an_rsync_temp_file_is_listed(start_client, store_dir):
    client = start_client()

    drop_in(store_dir, ".synced.json.AbC123", stored_run("synced"))
    os.replace(store_dir / ".synced.json.AbC123", store_dir / "synced.json")

    eventually(lambda: listed_ids(client) == ["synced"])


def test_a_run_file_hard_linked_into_the_folder_is_listed(start_client, store_dir, tmp_path):
    """A hard link (cp -l, rsync --link-dest) makes a create event and no close: it is read."""
    client = start_client()
    outside = tmp_path / "linked.json"
    outside.write_text(json.dumps(stored_run("linked")))

    os.link(outside, store_dir / "linked.json")

    eventually(lambda: listed_ids(client) == ["linked"])


def test_file_edited_from_outside_is_served_as_edited(start_client, store_dir):
    client = start_client()
    client.post(RUNS, json=make_run(status="success"))

    drop_in(store_dir, "run-1.json", stored_run("run-1", status="failure", error="disk full"))

    assert client.get(f"{RUNS}/run-1").get_json()["status"] == "failure"
    eventually(lambda: client.get(f"{RUNS}?status=failure").get_json() != [])
    assert client.get(RUNS).get_json() == [stored_run("run-1", status="failure", error="disk full")]


def test_file_removed_from_outside_disappears(start_client, store_dir):
    client = start_client()
    client.post(RUNS, json=make_run())

    os.remove(store_dir / "run-1.json")

    assert client.get(f"{RUNS}/run-1").status_code == 404
    eventually(lambda: listed_ids(client) == [])


def test_dot_files_are_never_listed(start_client, store_dir):
    client = start_client()

    for name in [".hidden.json", ".rsynced.json.AbC123", ".tmp-0123abcd.tmp", ".json"]:
        drop_in(store_dir, name, stored_run(name))
    # A visible run dropped after them: once it is listed, the dot-files were seen too.
    drop_in(store_dir, "visible.json", stored_run("visible"))

    eventually(lambda: listed_ids(client) == ["visible"])
    assert client.get(f"{RUNS}/{quote('.hidden', safe='')}").status_code == 404


def test_dot_files_present_at_start_are_not_listed(start_client, store_dir):
    store_dir.mkdir()
    drop_in(store_dir, ".old.json", stored_run(".old"))
    drop_in(store_dir, ".run-1.json.x7Yz9Q", stored_run("run-1"))

    client = start_client(WATCH_STORE=False)

    assert listed_ids(client) == []


def test_broken_file_at_start_is_skipped_with_a_warning(start_client, store_dir, caplog):
    store_dir.mkdir()
    drop_in(store_dir, "good.json", stored_run("good"))
    drop_in(store_dir, "broken.json", '{"run_id": "broken", "job_na')
    drop_in(store_dir, "array.json", "[1, 2]")
    drop_in(store_dir, "no-status.json", {**stored_run("no-status"), "status": None})

    client = start_client(WATCH_STORE=False)

    assert listed_ids(client) == ["good"]
    for name in ["broken.json", "array.json", "no-status.json"]:
        assert warnings_about(caplog, name), name
    assert client.get(f"{RUNS}/broken").status_code == 404


def test_a_skipped_file_s_warning_names_the_field_at_fault(start_client, store_dir, caplog):
    """A run file written by hand from a POST body lacks received_at: the log must say so."""
    store_dir.mkdir()
    unstamped = stored_run("unstamped")
    del unstamped["received_at"]
    drop_in(store_dir, "unstamped.json", unstamped)
    drop_in(store_dir, "bad-start.json", {**stored_run("bad-start"), "start_time": "yesterday"})

    client = start_client(WATCH_STORE=False)

    assert listed_ids(client) == []
    assert "received_at is missing" in warnings_about(caplog, "unstamped.json")[0]
    (warning,) = warnings_about(caplog, "bad-start.json")
    assert "start_time: not an ISO 8601 date-time" in warning


def test_a_run_file_with_an_odd_separator_in_a_time_stays_listed(start_client, store_dir):
    """The API now refuses '2026-05-12X02:00:00', which it once stored: such a run, already on
    disk, must not vanish from the index at the next start."""
    store_dir.mkdir()
    drop_in(store_dir, "odd.json", {**stored_run("odd"), "start_time": "2026-05-12X02:00:00"})

    client = start_client(WATCH_STORE=False)

    assert listed_ids(client) == ["odd"]


def test_a_file_the_listing_skips_is_not_served_by_get_either(start_client, store_dir):
    """GET used to check only run_id: it served a file the index refused, and the dashboard's
    page for it answered 500."""
    store_dir.mkdir()
    drop_in(store_dir, "bare.json", {"run_id": "bare", "job_name": "j", "agent_id": "a"})

    client = start_client(WATCH_STORE=False)

    assert listed_ids(client) == []
    assert client.get(f"{RUNS}/bare").status_code == 404
    assert client.get("/run/bare").status_code == 404


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"job_name": "   "}, "job_name is missing or not a string"),
        ({"agent_id": "\t"}, "agent_id is missing or not a string"),
        ({"bytes_backed_up": True}, "bytes_backed_up is not an integer"),
        # A POST turns 5.0 into 5; a file is served as it is, so it must hold 5 (README).
        ({"bytes_backed_up": 5.0}, "bytes_backed_up is not an integer"),
    ],
)
def test_a_file_with_a_blank_name_or_a_boolean_size_is_skipped(
    start_client, store_dir, caplog, fields, reason
):
    """A blank job or agent name, or a size of true, is no run a POST could have stored."""
    store_dir.mkdir()
    drop_in(store_dir, "odd.json", stored_run("odd", **fields))
    drop_in(store_dir, "good.json", stored_run("good", bytes_backed_up=0))

    client = start_client(WATCH_STORE=False)

    assert listed_ids(client) == ["good"]
    assert client.get(f"{RUNS}/odd").status_code == 404
    assert reason in warnings_about(caplog, "odd.json")[0]


@pytest.mark.parametrize("size", ["1" + "0" * 400, "-5", str(2**63)])
def test_a_file_whose_size_a_post_could_not_hold_is_skipped(start_client, store_dir, caplog, size):
    """A size past what a float holds made /metrics and the dashboard answer 500."""
    store_dir.mkdir()
    drop_in(
        store_dir,
        "huge.json",
        json.dumps(stored_run("huge", bytes_backed_up=7)).replace(
            '"bytes_backed_up": 7', f'"bytes_backed_up": {size}'
        ),
    )
    drop_in(store_dir, "largest.json", stored_run("largest", bytes_backed_up=2**63 - 1))

    client = start_client(WATCH_STORE=False)

    assert listed_ids(client) == ["largest"]
    assert "bytes_backed_up is out of range" in warnings_about(caplog, "huge.json")[0]
    for page in ["/metrics", "/", "/v1/jobs"]:
        assert client.get(page).status_code == 200, page


@pytest.mark.parametrize("number", ["NaN", "-Infinity", "1e400"])
def test_a_file_holding_a_number_json_has_not_is_skipped(start_client, store_dir, caplog, number):
    """Served as it is, its bytes would not be JSON: a client's parser would fail on it."""
    store_dir.mkdir()
    drop_in(
        store_dir,
        "odd.json",
        json.dumps(stored_run("odd", metadata={"x": 1})).replace('"x": 1', f'"x": {number}'),
    )

    client = start_client(WATCH_STORE=False)

    assert listed_ids(client) == []
    assert client.get(f"{RUNS}/odd").status_code == 404
    assert warnings_about(caplog, "odd.json")


def test_broken_file_dropped_in_is_skipped_with_a_warning(start_client, store_dir, caplog):
    client = start_client()
    client.post(RUNS, json=make_run("good"))

    drop_in(store_dir, "broken.json", "{not json")

    eventually(lambda: warnings_about(caplog, "broken.json"))
    assert listed_ids(client) == ["good"]


def test_a_file_being_written_is_not_warned_about_before_it_is_closed(
    start_client, store_dir, caplog
):
    """`report > store/x.json` creates the file empty, then writes it: the creation alone
    must not be read as a broken run (its close is the event that counts)."""
    client = start_client()
    caplog.set_level(logging.INFO)

    with open(store_dir / "slow.json", "w", encoding="utf-8") as handle:
        time.sleep(0.5)  # the watcher has seen the creation by now
        handle.write(json.dumps(stored_run("slow")))

    eventually(lambda: listed_ids(client) == ["slow"])
    assert warnings_about(caplog, "slow.json") == []


def test_a_broken_file_that_is_mended_says_so(start_client, store_dir, caplog):
    client = start_client()
    caplog.set_level(logging.INFO)
    drop_in(store_dir, "mended.json", "{not json")
    eventually(lambda: warnings_about(caplog, "mended.json"))

    drop_in(store_dir, "mended.json", stored_run("mended"))

    eventually(lambda: listed_ids(client) == ["mended"])
    assert "mended.json: a valid run again, served" in caplog.text


def test_a_run_file_that_starts_with_a_byte_order_mark_is_served_without_it(
    start_client, store_dir
):
    """Windows Notepad saves UTF-8 with a byte order mark; a POST body may carry one too."""
    store_dir.mkdir()
    text = json.dumps(stored_run("at-start"))
    (store_dir / "at-start.json").write_bytes(codecs.BOM_UTF8 + text.encode())
    client = start_client()

    (store_dir / "dropped.json").write_bytes(
        codecs.BOM_UTF8 + text.replace("at-start", "dropped").encode()
    )

    eventually(lambda: sorted(listed_ids(client)) == ["at-start", "dropped"])
    served = client.get(f"{RUNS}/at-start").get_data()
    assert not served.startswith(codecs.BOM_UTF8)
    assert json.loads(served) == stored_run("at-start")


def test_run_file_turned_broken_leaves_the_listing(start_client, store_dir, caplog):
    client = start_client()
    client.post(RUNS, json=make_run("good"))
    client.post(RUNS, json=make_run("spoilt"))

    drop_in(store_dir, "spoilt.json", "\x00\x00 truncated by a crash")

    eventually(lambda: listed_ids(client) == ["good"])
    assert warnings_about(caplog, "spoilt.json")
    assert client.get(f"{RUNS}/spoilt").status_code == 404


def test_a_file_holding_a_lone_surrogate_escape_is_skipped(start_client, store_dir, caplog):
    """Valid JSON, but no text: it could be written to no page, log or index snapshot."""
    store_dir.mkdir()
    lone = json.dumps(stored_run("lone")).replace(
        '"status"', '"error": "bad \\ud800 byte", "status"'
    )
    drop_in(store_dir, "lone.json", lone)
    pair = json.dumps(stored_run("pair", error="disk full \U0001f4be"))  # ensure_ascii: a pair
    assert "\\ud83d\\udcbe" in pair
    drop_in(store_dir, "pair.json", pair)

    client = start_client(WATCH_STORE=False)

    assert listed_ids(client) == ["pair"]
    assert client.get(f"{RUNS}/lone").status_code == 404
    (warning,) = warnings_about(caplog, "lone.json")
    assert "surrogate" in warning
    assert client.application.extensions["store"].save_snapshot()  # it used to raise here


def test_a_lone_surrogate_escape_written_in_upper_case_is_skipped_too(
    start_client, store_dir, caplog
):
    """JSON escapes are case-blind: \\uDC00 is as lone a surrogate as \\udc00."""
    store_dir.mkdir()
    lone = json.dumps(stored_run("lone")).replace(
        '"status"', '"error": "bad \\uDC00 byte", "status"'
    )
    drop_in(store_dir, "lone.json", lone)

    client = start_client(WATCH_STORE=False)

    assert listed_ids(client) == []
    assert client.get(f"{RUNS}/lone").status_code == 404
    assert "surrogate" in warnings_about(caplog, "lone.json")[0]


def test_file_holding_another_run_id_is_skipped(start_client, store_dir, caplog):
    store_dir.mkdir()
    drop_in(store_dir, "a.json", stored_run("b"))

    client = start_client(WATCH_STORE=False)

    assert listed_ids(client) == []
    assert warnings_about(caplog, "a.json")
    assert client.get(f"{RUNS}/a").status_code == 404
    assert client.get(f"{RUNS}/b").status_code == 404


def test_a_wrong_run_id_in_a_file_is_cut_short_in_its_warning(start_client, store_dir, caplog):
    """The warning quoted the id whole: a file holding one of megabytes wrote it all to the log."""
    store_dir.mkdir()
    drop_in(store_dir, "a.json", {**stored_run("a"), "run_id": "b" * 100_000})

    start_client(WATCH_STORE=False)

    (warning,) = warnings_about(caplog, "a.json")
    assert f"holds run_id '{'b' * 99}…, not the one its name says" in warning
    assert len(warning) < 300


def test_file_names_the_store_would_not_write_are_ignored(start_client, store_dir):
    store_dir.mkdir()
    drop_in(store_dir, "a%2fb.json", stored_run("a/b"))  # lower-case escape: an alias of a%2Fb
    drop_in(store_dir, "notes.txt", "not a run")
    (store_dir / "sub.json").mkdir()

    client = start_client(WATCH_STORE=False)

    assert listed_ids(client) == []
    assert client.get(f"{RUNS}/{quote('a/b', safe='')}").status_code == 404


# Names that are not UTF-8, or that decode to bytes that are not: as os.listdir gives them.
UNDECODABLE_NAMES = [b"caf\xe9.json", b"%FF.json", b"caf%C3\xa9.json"]


def drop_in_raw(folder: Path, name: bytes, content: dict) -> None:
    """Write a file under a name given as bytes, as a tool on another system might."""
    Path(os.fsdecode(bytes(folder) + b"/" + name)).write_text(json.dumps(content))


@pytest.mark.parametrize("name", UNDECODABLE_NAMES)
def test_undecodable_file_name_at_start_is_ignored_with_a_warning(
    start_client, store_dir, caplog, name
):
    store_dir.mkdir()
    drop_in(store_dir, "good.json", stored_run("good"))
    drop_in_raw(store_dir, name, stored_run("café"))

    client = start_client(WATCH_STORE=False)

    assert listed_ids(client) == ["good"]
    (warning,) = warnings_about(caplog, "not one this store writes")
    # The bytes as they are, so the operator can find the file: "caf\\xe9.json".
    assert warning.startswith(name.decode("utf-8", "backslashreplace") + ":")


def test_undecodable_file_names_dropped_in_do_not_hide_the_runs_beside_them(
    start_client, store_dir, caplog
):
    client = start_client()

    for name in UNDECODABLE_NAMES:
        drop_in_raw(store_dir, name, stored_run("café"))
    drop_in(store_dir, "beside.json", stored_run("beside"))

    eventually(lambda: listed_ids(client) == ["beside"])
    assert len(warnings_about(caplog, "not one this store writes")) == len(UNDECODABLE_NAMES)
    assert "store watcher error" not in caplog.text


def fail_to_refresh(client, monkeypatch, name: str, code: int) -> threading.Event:
    """Make the app's store fail to check the file name with OSError(code) until the returned
    event is cleared."""
    store = client.application.extensions["store"]
    real_refresh = store.refresh
    faulty = threading.Event()
    faulty.set()

    def refresh(file_name, *args, **kwargs):
        if file_name == name and faulty.is_set():
            raise OSError(code, os.strerror(code))
        return real_refresh(file_name, *args, **kwargs)

    monkeypatch.setattr(store, "refresh", refresh)
    return faulty


def test_a_file_the_watcher_cannot_check_costs_its_batch_nothing_and_is_tried_again(
    start_client, store_dir, caplog, monkeypatch
):
    """An I/O error on one file of a burst: the others are indexed, and that one once it heals.
    A file the index never held is simply not served meanwhile: nothing shown is stale."""
    client = start_client()
    # Injected: no file system here can make a real I/O error on one file.
    faulty = fail_to_refresh(client, monkeypatch, "first.json", errno.EIO)

    for run_id in ["first", "second", "third"]:  # one burst: the watcher takes it in one read
        drop_in(store_dir, f"{run_id}.json", stored_run(run_id))

    eventually(lambda: listed_ids(client) == ["second", "third"])
    time.sleep(2.5)  # a few retries, all failing
    assert listed_ids(client) == ["second", "third"]
    faulty.clear()
    eventually(lambda: listed_ids(client) == ["first", "second", "third"])
    assert len(warnings_about(caplog, "first.json")) == 1


@pytest.mark.parametrize("watching", ["inotify", "polling"])
def test_a_served_run_whose_change_cannot_be_followed_makes_listings_refuse(
    start_client, store_dir, monkeypatch, watching
):
    """A run the index serves, changed where the watcher cannot look: listings answer 503
    rather than show it as it was, and answer again once the file can be looked at, or is
    gone. In polling mode nothing retried it, so they stayed 503 until a restart."""
    if watching == "polling":
        without_inotify(monkeypatch)
    client = start_client()
    client.post(RUNS, json=make_run("kept"))
    client.post(RUNS, json=make_run("changed"))
    # Injected: an unreadable folder, as root cannot be kept out of one.
    faulty = fail_to_refresh(client, monkeypatch, "changed.json", errno.EACCES)
    drop_in(store_dir, "changed.json", stored_run("changed", status="failure"))

    eventually(lambda: client.get(RUNS).status_code == 503, timeout=3)
    assert client.get("/v1/jobs").status_code == 503
    (store_dir / "changed.json").unlink()  # the change is then a removal
    faulty.clear()

    eventually(lambda: client.get(RUNS).status_code == 200, timeout=3)
    assert listed_ids(client) == ["kept"]


def test_warnings_about_files_since_removed_are_not_kept(start_client, store_dir, caplog):
    """Broken files that come and go leave nothing behind: a long-lived server must not grow."""
    client = start_client()
    store = client.application.extensions["store"]
    names = [f"broken-{number}.json" for number in range(20)] + ["bad name.json"]
    for name in names:
        drop_in(store_dir, name, "{not json")
    eventually(lambda: all(warnings_about(caplog, name) for name in names))
    assert len(store._warned) == len(names)
    for name in names:
        (store_dir / name).unlink()
    eventually(lambda: not store._warned)


def test_a_file_that_cannot_be_read_at_start_is_tried_again(
    start_client, store_dir, caplog, monkeypatch
):
    """An I/O error on one file during the start: the rest are served, and it once it heals."""
    store_dir.mkdir()
    for run_id in ["first", "second"]:
        drop_in(store_dir, f"{run_id}.json", stored_run(run_id))
    real_read_row = store_module._read_row
    faulty = threading.Event()
    faulty.set()

    def read_row(folder, name, *args):
        # Injected: no file system here can make a real I/O error on one file.
        if name == "first.json" and faulty.is_set():
            raise OSError(errno.EIO, "Input/output error")
        return real_read_row(folder, name, *args)

    # Both the start and the watcher's retries read a run file through _read_row.
    monkeypatch.setattr(store_module, "_read_row", read_row)
    client = start_client()

    assert listed_ids(client) == ["second"]
    faulty.clear()
    eventually(lambda: listed_ids(client) == ["first", "second"])
    assert len(warnings_about(caplog, "first.json")) == 1


# --- run files must be regular files ---------------------------------------------------------


@pytest.fixture
def make_fifo():
    """Make FIFOs; afterwards, free any reader left waiting to open one (a failing test's)."""
    made: list[Path] = []

    def make(path: Path) -> Path:
        os.mkfifo(path)
        made.append(path)
        return path

    yield make
    for path in made:
        with contextlib.suppress(OSError):  # ENXIO: no reader is waiting, as it should be
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def not_regular_files(folder: Path, outside: Path, make_fifo) -> list[str]:
    """Put a FIFO and symlinks named as runs into folder; return their run ids."""
    drop_in(outside, "linked.json", stored_run("linked"))
    (folder / "linked.json").symlink_to(outside / "linked.json")  # a valid run, elsewhere
    make_fifo(folder / "pipe.json")
    (folder / "piped.json").symlink_to(make_fifo(outside / "fifo"))
    (folder / "dangling.json").symlink_to(outside / "nothing-here.json")
    return ["linked", "pipe", "piped", "dangling"]


def assert_not_served(client, run_ids: list[str]) -> None:
    """Each id answers 404 at once: a GET must never wait on a FIFO."""
    for run_id in run_ids:
        url = f"{RUNS}/{run_id}"
        assert run_in_thread(lambda url=url: client.get(url).status_code) == 404, run_id


def test_a_folder_named_as_a_run_is_no_run_to_delete_and_blocks_posting_it(start_client, store_dir):
    """GET says 404, DELETE 204 (there is no run), POST a 409 naming the field and the fix."""
    client = start_client()
    (store_dir / "dirrun.json").mkdir()

    assert client.get(f"{RUNS}/dirrun").status_code == 404
    assert client.delete(f"{RUNS}/dirrun").status_code == 204
    response = client.post(RUNS, json=make_run("dirrun"))
    assert response.status_code == 409
    assert response.get_json()["error"].startswith("run_id: its file dirrun.json")
    assert (store_dir / "dirrun.json").is_dir()
    assert sorted(path.name for path in store_dir.iterdir()) == ["dirrun.json"]  # no temp left


def test_files_that_are_not_regular_are_skipped_at_start(
    start_client, store_dir, tmp_path, caplog, make_fifo
):
    store_dir.mkdir()
    (tmp_path / "outside").mkdir()
    skipped = not_regular_files(store_dir, tmp_path / "outside", make_fifo)
    drop_in(store_dir, "good.json", stored_run("good"))

    client = run_in_thread(lambda: start_client(WATCH_STORE=False))

    assert listed_ids(client) == ["good"]
    for run_id in skipped:
        (warning,) = warnings_about(caplog, f"{run_id}.json")
        assert "run files must be regular files" in warning
    assert_not_served(client, skipped)


def test_files_that_are_not_regular_dropped_in_are_skipped(
    start_client, store_dir, tmp_path, caplog, make_fifo
):
    client = start_client()
    (tmp_path / "outside").mkdir()

    skipped = not_regular_files(store_dir, tmp_path / "outside", make_fifo)
    drop_in(store_dir, "good.json", stored_run("good"))  # the watcher must not hang before it

    eventually(lambda: listed_ids(client) == ["good"])
    for run_id in skipped:
        assert warnings_about(caplog, f"{run_id}.json"), run_id
    assert_not_served(client, skipped)


def test_run_file_replaced_by_a_symlink_leaves_the_listing(start_client, store_dir, tmp_path):
    """The registry cannot follow edits to a symlink's target: it must not serve one at all."""
    client = start_client()
    client.post(RUNS, json=make_run("good"))
    client.post(RUNS, json=make_run("moved", status="failure"))
    target = tmp_path / "moved.json"
    target.write_bytes((store_dir / "moved.json").read_bytes())

    (store_dir / ".moved.link").symlink_to(target)
    os.replace(store_dir / ".moved.link", store_dir / "moved.json")

    eventually(lambda: listed_ids(client) == ["good"])
    assert client.get(f"{RUNS}?status=failure").get_json() == []
    assert client.get(f"{RUNS}/moved").status_code == 404


# --- a file too large to be a run ------------------------------------------------------------


def test_a_file_larger_than_any_run_is_skipped_unread(store_dir, caplog):
    """A 216 MB dump named *.json took the server to 2 GB at start and on each GET of its id
    (a reviewer's test): a run file is never near MAX_RUN_FILE_BYTES, so one that is, is
    skipped on its size alone."""
    store_dir.mkdir()
    drop_in(store_dir, "good.json", stored_run("good"))
    drop_in(store_dir, "huge.json", stored_run("huge"))
    os.truncate(store_dir / "huge.json", 4 * store_module.MAX_RUN_FILE_BYTES)  # sparse: free
    caplog.set_level(logging.WARNING)

    tracemalloc.start()
    try:
        store = store_module.RunStore(store_dir, watch=False)
        with pytest.raises(store_module.RunNotFound):
            store.get("huge")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert [summary.run_id for summary in store.summaries()] == ["good"]
    assert peak < store_module.MAX_RUN_FILE_BYTES // 2
    assert "huge.json: skipped, not a valid run: larger than any run" in caplog.text


def test_a_run_too_large_to_read_back_is_refused_not_written(start_client, store_dir, monkeypatch):
    """MAX_BODY_BYTES may be raised, and a report grows up to 4x once stored (1E15 is
    written 1000000000000000.0): a 201 must never go to a run the store would skip."""
    client = start_client(WATCH_STORE=False)
    monkeypatch.setattr(store_module, "MAX_RUN_FILE_BYTES", 2048)

    small = client.post(RUNS, json=make_run("small"))
    large = client.post(RUNS, json=make_run("large", error="x" * 4096))

    assert small.status_code == 201
    assert large.status_code == 413
    assert large.get_json()["error"].startswith("body: the run would take")
    assert sorted(os.listdir(store_dir)) == ["small.json"]


def test_a_run_is_stored_as_compact_json_on_one_line(start_client, store_dir):
    """As the original's JSON.stringify wrote it: GET serves the file's bytes, and a script
    for the original may grep them for '"status":"failure"' (they were '"status": "failure"')."""
    client = start_client(WATCH_STORE=False)
    client.post(RUNS, json=make_run("compact", status="failure"))

    stored = (store_dir / "compact.json").read_bytes()
    served = client.get(f"{RUNS}/compact").get_data()
    listed = client.get(RUNS).get_data()

    assert stored.count(b"\n") == 1 and stored.endswith(b"\n")
    assert b'"status":"failure"' in stored and b'": ' not in stored and b", " not in stored
    assert b'"status":"failure"' in served and b'"status":"failure"' in listed


def test_a_run_of_exactly_the_largest_size_is_written_and_read_back(store_dir, monkeypatch):
    """MAX_RUN_FILE_BYTES is the largest run file, not one byte past it, both ways."""
    edge = stored_run("edge", error="x" * 100)
    size = len((json.dumps(edge, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
    monkeypatch.setattr(store_module, "MAX_RUN_FILE_BYTES", size)
    store_module.RunStore(store_dir, watch=False).save(edge)
    assert (store_dir / "edge.json").stat().st_size == size

    restarted = store_module.RunStore(store_dir, watch=False)

    assert [summary.run_id for summary in restarted.summaries()] == ["edge"]
    assert restarted.get("edge") == edge


# --- a file that cannot be read --------------------------------------------------------------


def test_run_file_turned_unreadable_leaves_the_listing_and_its_count(
    start_client, store_dir, caplog
):
    """Even when the index has not caught up (here no watcher), a listing drops such a file."""
    store_dir.mkdir()
    for run_id in ["r1", "r2", "r3"]:
        drop_in(store_dir, f"{run_id}.json", stored_run(run_id))
    client = start_client(WATCH_STORE=False)

    (store_dir / "r2.json").unlink()
    (store_dir / "r2.json").mkdir()  # unreadable even for root: EISDIR

    for _ in range(2):
        response = client.get(RUNS)
        assert response.status_code == 200
        assert [run["run_id"] for run in response.get_json()] == ["r1", "r3"]
        assert response.headers["X-Total-Count"] == "2"
    assert client.get(f"{RUNS}?limit=1").headers["X-Total-Count"] == "2"
    assert client.get(f"{RUNS}/r2").status_code == 404
    assert len(warnings_about(caplog, "r2.json")) == 1


def test_run_file_the_server_may_not_read_is_skipped_until_it_may(store_dir):
    store_dir.mkdir()
    for run_id in ["r1", "r2", "r3"]:
        drop_in(store_dir, f"{run_id}.json", stored_run(run_id))
    server = LiveServer(store_dir, prefix=AS_AN_ORDINARY_USER).wait_ready()

    def listing() -> tuple[list[str], str]:
        response = requests.get(server.url + RUNS, timeout=10)
        assert response.status_code == 200, response.text
        return [run["run_id"] for run in response.json()], response.headers["X-Total-Count"]

    try:
        (store_dir / "r2.json").chmod(0)

        eventually(lambda: listing() == (["r1", "r3"], "2"))
        assert requests.get(f"{server.url}{RUNS}/r2", timeout=10).status_code == 404
        assert server.log().count("r2.json: skipped, not a valid run: cannot read it") == 1

        (store_dir / "r2.json").chmod(0o644)

        eventually(lambda: listing() == (["r1", "r2", "r3"], "3"))

        # A folder it may not read is the store's failure, not one file's: refuse, don't guess.
        store_dir.chmod(0)
        try:
            response = requests.get(f"{server.url}{RUNS}/r1", timeout=10)
        finally:
            store_dir.chmod(0o755)
        assert response.status_code == 503
        assert response.json() == {
            "error": "cannot read run: permission denied on the store folder"
        }
    finally:
        server.stop()


def three_runs_served_as_an_ordinary_user(store_dir: Path, tmp_path: Path, watching: str):
    """Start a server without root's powers on a new store of r1, r2 and r3, watching it
    with inotify or, where inotify cannot be had, by polling."""
    store_dir.mkdir(parents=True)
    for run_id in ["r1", "r2", "r3"]:
        drop_in(store_dir, f"{run_id}.json", stored_run(run_id))
    env = {}
    if watching == "polling":
        shim = tmp_path / "no-inotify"
        shim.mkdir()
        (shim / "inotify_simple.py").write_text("raise ImportError('not here')\n")
        env["PYTHONPATH"] = str(shim)
    return LiveServer(store_dir, env, prefix=AS_AN_ORDINARY_USER).wait_ready()


@pytest.mark.parametrize("watching", ["inotify", "polling"])
def test_changes_the_server_cannot_follow_make_listings_refuse_until_it_can(
    store_dir, tmp_path, watching
):
    """With the folder unreadable, a run removed or edited from outside was still listed as
    it was (200), by listings, /v1/jobs, the dashboard and /metrics: the index answered from
    what it last knew. Refuse, don't guess, until the change can be followed. Polling, the
    server cannot even list the folder, so sees no change at all."""
    server = three_runs_served_as_an_ordinary_user(store_dir, tmp_path, watching)

    def statuses() -> list[int]:
        paths = [RUNS, "/v1/jobs", "/", "/metrics"]
        return [requests.get(server.url + path, timeout=10).status_code for path in paths]

    try:
        assert statuses() == [200, 200, 200, 200]
        store_dir.chmod(0)
        try:
            (store_dir / "r2.json").unlink()  # root may; the server may not look

            eventually(lambda: statuses() == [503, 503, 503, 503], timeout=10)
            refused = requests.get(server.url + RUNS, timeout=10).json()["error"]
            assert refused.startswith("cannot ") and "store folder" in refused
            time.sleep(2.5)  # a few more turns of the watcher
        finally:
            store_dir.chmod(0o755)

        eventually(lambda: statuses() == [200, 200, 200, 200], timeout=10)
        listed = requests.get(server.url + RUNS, timeout=10).json()
        assert sorted(run["run_id"] for run in listed) == ["r1", "r3"]
        assert "Traceback" not in server.log()  # said once, in a line, not every second
    finally:
        server.stop()


@pytest.mark.parametrize("watching", ["inotify", "polling"])
def test_a_store_folder_out_of_reach_is_not_taken_for_gone(tmp_path, watching):
    """A parent folder the server may no longer search: the store's path cannot be looked at.
    That was taken for a folder removed, and every listing answered 200 with no runs (and
    /v1/jobs with no jobs, so no alert fired) until a full re-read once it was back."""
    parent = tmp_path / "parent"
    server = three_runs_served_as_an_ordinary_user(parent / "store", tmp_path, watching)

    def statuses() -> list[int]:
        paths = [RUNS, "/v1/jobs", "/metrics", "/health"]
        return [requests.get(server.url + path, timeout=10).status_code for path in paths]

    try:
        parent.chmod(0)
        try:
            eventually(lambda: statuses() == [503, 503, 503, 503], timeout=10)
            time.sleep(2.5)  # a few more turns of the watcher: still refusing, not emptied
            assert statuses() == [503, 503, 503, 503]
        finally:
            parent.chmod(0o755)

        eventually(lambda: statuses() == [200, 200, 200, 200], timeout=10)
        listed = requests.get(server.url + RUNS, timeout=10).json()
        assert sorted(run["run_id"] for run in listed) == ["r1", "r2", "r3"]
        assert "removed or moved away" not in server.log() and "is gone" not in server.log()
        assert "Traceback" not in server.log()
    finally:
        server.stop()


# --- the store folder replaced from outside --------------------------------------------------


def replace_folder(store_dir: Path, backup: Path, how: str) -> None:
    """Put backup in the store folder's place, as a restore would."""
    if how == "rm-and-copy":
        shutil.rmtree(store_dir)
        shutil.copytree(backup, store_dir)
    else:  # move the old folder aside, then the new one in
        store_dir.rename(store_dir.with_name("store.old"))
        backup.rename(store_dir)


@pytest.mark.parametrize("how", ["rm-and-copy", "move-aside"])
@pytest.mark.parametrize("named", ["absolute", "current folder"])
def test_store_folder_replaced_from_outside_is_followed(
    start_client, store_dir, tmp_path, monkeypatch, how, named
):
    if named == "current folder":  # STORE_DIR=. : the new folder is not the process's cwd
        store_dir.mkdir()
        monkeypatch.chdir(store_dir)
    client = start_client(STORE_DIR="." if named == "current folder" else str(store_dir))
    for run_id in ["old-1", "old-2"]:
        client.post(RUNS, json=make_run(run_id))
    backup = tmp_path / "backup"
    backup.mkdir()
    for run_id in ["restored-1", "restored-2"]:
        drop_in(backup, f"{run_id}.json", stored_run(run_id))

    replace_folder(store_dir, backup, how)

    eventually(lambda: sorted(listed_ids(client)) == ["restored-1", "restored-2"], timeout=5)
    # The new folder is followed from now on, as the old one was.
    drop_in(store_dir, "dropped.json", stored_run("dropped"))
    (store_dir / "restored-1.json").unlink()
    eventually(lambda: sorted(listed_ids(client)) == ["dropped", "restored-2"])
    assert client.post(RUNS, json=make_run("posted")).status_code == 201
    assert client.application.extensions["store"].watching == "inotify"


def test_store_folder_gone_for_a_while_is_followed_once_it_is_back(
    start_client, store_dir, tmp_path, caplog
):
    client = start_client()
    store = client.application.extensions["store"]
    client.post(RUNS, json=make_run("old"))
    backup = tmp_path / "backup"
    backup.mkdir()
    drop_in(backup, "restored.json", stored_run("restored"))

    shutil.rmtree(store_dir)

    eventually(lambda: store.watching == "polling")
    assert listed_ids(client) == []
    # Not 404: with no folder there is no telling whether the run exists.
    assert client.get(f"{RUNS}/old").status_code == 503
    response = client.delete(f"{RUNS}/old")  # nor 204: the run may be back with the folder
    assert response.status_code == 503
    assert response.get_json() == {"error": "cannot delete run: the store folder is missing"}
    response = client.post(RUNS, json=make_run("meanwhile"))
    assert response.status_code == 503
    assert response.get_json() == {"error": "cannot write run: the store folder is missing"}

    shutil.copytree(backup, store_dir)

    eventually(lambda: listed_ids(client) == ["restored"], timeout=5)
    assert store.watching == "inotify"
    drop_in(store_dir, "dropped.json", stored_run("dropped"))
    eventually(lambda: sorted(listed_ids(client)) == ["dropped", "restored"])
    assert "store watcher error" not in caplog.text


def without_inotify(monkeypatch) -> None:
    """Make every store built from now on fall back to polling, as on a system without inotify."""
    import inotify_simple

    def no_inotify():
        raise OSError(errno.EMFILE, "no inotify instance left")  # what a full quota gives

    monkeypatch.setattr(inotify_simple, "INotify", no_inotify)


def test_without_inotify_the_folder_is_polled_and_may_go_and_come_back(
    start_client, store_dir, caplog, monkeypatch
):
    """Where inotify is missing (or out of instances) the store is re-read every second."""
    without_inotify(monkeypatch)
    client = start_client()
    assert client.application.extensions["store"].watching == "polling"

    drop_in(store_dir, "dropped.json", stored_run("dropped"))
    eventually(lambda: listed_ids(client) == ["dropped"], timeout=5)

    shutil.rmtree(store_dir)  # a restore under way
    eventually(lambda: client.get(RUNS).get_json() == [], timeout=5)
    time.sleep(2.5)  # two more rounds while it is gone
    store_dir.mkdir()
    drop_in(store_dir, "restored.json", stored_run("restored"))

    eventually(lambda: listed_ids(client) == ["restored"], timeout=5)
    assert caplog.text.count("is gone; checking every") == 1
    assert "store watcher error" not in caplog.text  # no traceback a second meanwhile


def test_a_file_name_holding_a_newline_stays_on_one_log_line(start_client, store_dir, caplog):
    """Only someone who can write the folder could do it, but the log must not say otherwise."""
    store_dir.mkdir()
    drop_in(store_dir, "x\n2026-11-26 WARNING backup_registry.auth: forged.json", "{}")

    start_client(WATCH_STORE=False)

    (warning,) = warnings_about(caplog, "forged.json")
    assert "\n" not in warning
    assert warning.startswith("x\\x0a2026-11-26 WARNING backup_registry.auth: forged.json: ")


# --- one registry per folder -----------------------------------------------------------------


def held_elsewhere(folder: Path) -> bool:
    """Tell whether another process holds the folder's lock, as a second registry would ask."""
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
            "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "except BlockingIOError:\n    sys.exit(1)\n",
            str(folder),
        ],
        check=False,
    )
    return probe.returncode == 1


def test_a_lock_left_by_a_dying_registrys_loaders_is_waited_for(store_dir):
    """After a crash, the killed server's loaders hold its lock for a few ms more (they were
    forked with it): a restart right then must wait for them, not refuse to start."""
    store_dir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(0.5)\n",
            str(store_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        store = store_module.RunStore(store_dir, watch=False, exclusive=True)
        store.close()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


@pytest.mark.parametrize("watching", ["inotify", "polling", "inotify, out of watches"])
def test_the_lock_moves_to_a_restored_folder(store_dir, tmp_path, monkeypatch, watching):
    """A restore replaces the folder (mv store store.old; cp -a backup store): the registry
    follows the new one, and so must its lock, or a second registry could start on it."""
    if watching == "polling":
        without_inotify(monkeypatch)
    store_dir.mkdir()
    store = store_module.RunStore(store_dir, exclusive=True)
    if watching == "inotify, out of watches":  # the new folder is served, polled, unwatched

        def no_watch_left(*args):
            raise OSError(errno.ENOSPC, "no inotify watch left")

        monkeypatch.setattr(store._watcher._inotify, "add_watch", no_watch_left)
    try:
        assert store.watching == watching.split(",")[0]
        assert held_elsewhere(store_dir)
        old = tmp_path / "store.old"
        store_dir.rename(old)
        store_dir.mkdir()
        eventually(lambda: held_elsewhere(store_dir), timeout=5)
        assert not held_elsewhere(old)
    finally:
        store.close()
    assert not held_elsewhere(store_dir)


def test_a_store_that_does_not_serve_takes_no_lock_on_a_restored_folder(store_dir, tmp_path):
    """Only the serving registry locks: a store built without exclusive= never locks a folder."""
    store_dir.mkdir()
    store = store_module.RunStore(store_dir)
    try:
        store_dir.rename(tmp_path / "store.old")
        store_dir.mkdir()
        drop_in(store_dir, "restored.json", stored_run("restored"))
        eventually(lambda: "restored" in store, timeout=5)  # the restored folder is followed
        assert not held_elsewhere(store_dir)
    finally:
        store.close()


# --- starts that fail, or nearly -------------------------------------------------------------


def immutable(path: Path, monkeypatch) -> None:
    """Make path impossible to remove: chattr +i where the file system has it (root on ext4),
    else the kernel's answer injected, for that path only."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        return
    real_unlink = os.unlink

    def unlink(target, *args, **kwargs):
        if Path(os.fspath(target)) == path:
            raise PermissionError(errno.EPERM, "Operation not permitted", str(target))
        return real_unlink(target, *args, **kwargs)

    monkeypatch.setattr(store_module.os, "unlink", unlink)


def test_stale_temp_names_that_cannot_be_removed_do_not_stop_the_start(
    store_dir, monkeypatch, caplog
):
    """A folder named like our temp files, and a temp file that cannot be removed: each
    stopped the start with a traceback."""
    store_dir.mkdir()
    drop_in(store_dir, "r1.json", stored_run("r1"))
    stale = time.time() - store_module.STALE_TEMP_SECONDS - 60
    folder = store_dir / f"{store_module.TEMP_PREFIX}a-folder{store_module.TEMP_SUFFIX}"
    stuck = store_dir / f"{store_module.TEMP_PREFIX}stuck{store_module.TEMP_SUFFIX}"
    folder.mkdir()
    stuck.write_text("{")
    for path in (folder, stuck):
        os.utime(path, (stale, stale))
    immutable(stuck, monkeypatch)
    try:
        store = RunStore(store_dir, watch=False)
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], capture_output=True)

    assert [summary.run_id for summary in store.summaries()] == ["r1"]
    assert folder.is_dir() and stuck.exists()
    assert "cannot remove this stale temp file" in caplog.text


def test_a_symlink_or_folder_named_like_a_stale_temp_file_is_left_alone(
    store_dir, tmp_path, caplog
):
    """Only regular files are our temp files: a link or a folder so named is not ours to remove."""
    store_dir.mkdir()
    target = tmp_path / "elsewhere"
    target.write_text("someone's")
    link = store_dir / f"{store_module.TEMP_PREFIX}a-link{store_module.TEMP_SUFFIX}"
    folder = store_dir / f"{store_module.TEMP_PREFIX}a-folder{store_module.TEMP_SUFFIX}"
    link.symlink_to(target)
    folder.mkdir()
    stale = time.time() - store_module.STALE_TEMP_SECONDS - 60
    os.utime(link, (stale, stale), follow_symlinks=False)
    os.utime(folder, (stale, stale))

    store_module.RunStore(store_dir, watch=False)

    assert link.is_symlink() and folder.is_dir() and target.exists()
    assert "cannot remove" not in caplog.text


def test_a_start_that_fails_leaves_the_folder_unlocked_and_nothing_open(store_dir, monkeypatch):
    """A failed start kept the folder's lock and its inotify and pipe descriptors: a second
    try in the same process found the folder "in use by another process"."""

    def load_fails(self) -> None:
        raise store_module.StoreUnavailable("cannot list the store folder: I/O error")

    descriptors = len(os.listdir("/proc/self/fd"))
    with monkeypatch.context() as patched:
        patched.setattr(RunStore, "_load_all", load_fails)
        with pytest.raises(store_module.StoreUnavailable):
            RunStore(store_dir, exclusive=True)

    assert len(os.listdir("/proc/self/fd")) == descriptors
    RunStore(store_dir, exclusive=True).close()  # the folder is free again


def test_a_file_in_the_store_folders_place_holds_no_runs(start_client, store_dir, tmp_path, caplog):
    """Taken for a folder out of reach, it moved the folder lock onto the file (a warning
    that the lock failed) and made listings answer 503 for a folder that is simply gone."""
    client = start_client(SERVING=True)  # as app.py runs it: holding the folder's lock
    client.post(RUNS, json=make_run("old"))
    shutil.rmtree(store_dir)
    store_dir.write_text("not a folder")

    eventually(lambda: listed_ids(client) == [], timeout=5)
    time.sleep(1.5)  # a few more turns of the watcher
    assert client.get(RUNS).status_code == 200
    assert "cannot lock store folder" not in caplog.text

    store_dir.unlink()
    store_dir.mkdir()
    drop_in(store_dir, "restored.json", stored_run("restored"))
    eventually(lambda: listed_ids(client) == ["restored"], timeout=5)


def test_a_stale_file_with_our_temp_prefix_but_not_our_suffix_is_left_alone(store_dir):
    """Only `.tmp-*.tmp` is ours to sweep: a stale `.tmp-*` file of another name is not."""
    store_dir.mkdir()
    stale = time.time() - store_module.STALE_TEMP_SECONDS - 60
    theirs = store_dir / f"{store_module.TEMP_PREFIX}notes.json"
    ours = store_dir / f"{store_module.TEMP_PREFIX}crashed{store_module.TEMP_SUFFIX}"
    for path in (theirs, ours):
        path.write_text("{")
        os.utime(path, (stale, stale))

    RunStore(store_dir, watch=False)

    assert theirs.exists() and not ours.exists()
