"""The index snapshot speeds up a restart and is never trusted over the folder."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import store as store_module
from store import RunStore
from tests.conftest import ROOT, free_port
from tests.test_index import index_view, run_record


def aged_store(folder: Path, count: int = 5) -> RunStore:
    """A store of `count` runs whose files are an hour old, so their signatures are trusted."""
    store = RunStore(folder, watch=False)
    for number in range(count):
        store.save(run_record(f"r{number}", "db", "success", number, 100 + number))
    an_hour_ago = time.time() - 3600
    for path in folder.glob("*.json"):
        os.utime(path, (an_hour_ago, an_hour_ago))
    store.rescan()  # take the aged signatures
    return store


def snapshot_path(folder: Path) -> Path:
    """Where the snapshot of a store folder lives: beside it, so the folder stays runs-only."""
    return folder.parent / f".{folder.name}.index-snapshot"


def test_restart_reads_no_unchanged_file(store_dir):
    aged_store(store_dir).close()
    assert snapshot_path(store_dir).exists()
    assert sorted(p.name for p in store_dir.iterdir()) == [f"r{n}.json" for n in range(5)]
    restarted = RunStore(store_dir, watch=False)
    assert restarted.files_read_at_start == 0
    assert index_view(restarted) == index_view(RunStore(store_dir, watch=False))
    assert len(restarted) == 5


def test_a_restart_from_the_snapshot_restores_every_field_of_each_summary(store_dir):
    """Rows round-trip whole: start and end times, agent, error and encryption come back as read."""
    store = RunStore(store_dir, watch=False)
    store.save({**run_record("a", "db", "failure", 1, 7), "error": "disk full", "encrypted": True})
    store.save(
        {
            **run_record("b", "files", "partial", 2, 0),
            "agent_id": "nas-02",
            "start_time": "2026-05-11T23:00:00Z",
            "end_time": "2026-05-12T01:30:00.5Z",
            "encryption_status": "partial",
        }
    )
    an_hour_ago = time.time() - 3600
    for path in store_dir.glob("*.json"):
        os.utime(path, (an_hour_ago, an_hour_ago))
    store.rescan()
    written = {summary.run_id: summary for summary in store.summaries()}
    store.close()

    restarted = RunStore(store_dir, watch=False)

    assert restarted.files_read_at_start == 0
    restored = {summary.run_id: summary for summary in restarted.summaries()}
    assert restored.keys() == written.keys()
    for run_id, summary in restored.items():
        assert summary.holds_the_same(written[run_id]), run_id


def test_a_snapshot_is_written_only_when_the_index_changed(store_dir):
    """Every SNAPSHOT_SECONDS a write of 180 MB at a million runs: not when nothing changed."""
    aged_store(store_dir).close()
    restarted = RunStore(store_dir, watch=False)
    written = snapshot_path(store_dir).stat().st_ino

    assert not restarted.save_snapshot()
    assert snapshot_path(store_dir).stat().st_ino == written
    restarted.delete("r0")
    assert restarted.save_snapshot()
    assert not restarted.save_snapshot()


def test_restart_rereads_what_changed_since_the_snapshot(store_dir):
    aged_store(store_dir).close()
    (store_dir / "r1.json").unlink()
    (store_dir / "r2.json").write_text(json.dumps(run_record("r2", "db", "failure", 2, 999)))
    (store_dir / "r9.json").write_text(json.dumps(run_record("r9", "new", "partial", 9, 1)))
    restarted = RunStore(store_dir, watch=False)
    assert restarted.files_read_at_start == 2  # r2 changed, r9 is new
    statuses = {s.run_id: s.status for s in restarted.summaries()}
    assert statuses == {
        "r0": "success",
        "r2": "failure",
        "r3": "success",
        "r4": "success",
        "r9": "partial",
    }


def test_rows_written_while_their_file_was_young_are_not_trusted(store_dir):
    store = RunStore(store_dir, watch=False)
    store.save(run_record("fresh", "db", "success", 1, 5))
    store.close()  # the file is seconds old: its signature could still hide a same-tick rewrite
    assert RunStore(store_dir, watch=False).files_read_at_start == 1


def signed(text: bytes) -> bytes:
    """A snapshot line as the store writes it: the text's blake2b-128 digest, a space, the text."""
    return hashlib.blake2b(text, digest_size=16).hexdigest().encode() + b" " + text + b"\n"


HEADER = b'{"format": 2, "written_ns": 99999999999999999999}'


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json at all\n",
        signed(b"not json at all"),
        signed(b'{"format": 99, "written_ns": 0}') + signed(b"[]"),
        b'{"format": 1, "written_ns": 1}\n[]\n',  # the format before digests
        signed(b'{"format": 2}') + signed(b"[]"),  # no written_ns
        signed(HEADER) + signed(b"[[1, 2, 3]]"),  # short row
        signed(HEADER) + signed(b'[[1,2,3,4,"r0",5,"db","h","exploded",0,0,null,null,null,null]]'),
        signed(HEADER)
        + signed(b'[[1,2,3,4,"r0",5,"db","h","success",0,0,null,null,null,null]]')[
            :-20
        ],  # cut short
        signed(b"[1]") + signed(b"[]"),  # a header that is no object
        signed(HEADER) + signed(b"[" * 100_000),  # nested past the recursion limit
    ],
)
def test_a_broken_snapshot_is_ignored_and_rewritten(store_dir, content, caplog):
    original = aged_store(store_dir)
    expected = index_view(original)
    original.close()
    snapshot_path(store_dir).write_bytes(content)
    with caplog.at_level(logging.WARNING):
        restarted = RunStore(store_dir, watch=False)
    assert restarted.files_read_at_start == 5
    assert index_view(restarted) == expected
    if content:
        assert "index snapshot" in caplog.text
    restarted.close()
    assert RunStore(store_dir, watch=False).files_read_at_start == 0


@pytest.mark.parametrize("encryption_status", [True, 5, {"state": "encrypted"}])
def test_a_run_with_an_odd_field_still_leaves_a_usable_snapshot(store_dir, encryption_status):
    """A file copied in with encryption_status: true is listed, and its row written to the
    snapshot failed the snapshot's own check: no restart used a snapshot again."""
    store = aged_store(store_dir)
    odd = run_record("odd", "db", "success", 9, 1)
    (store_dir / "odd.json").write_text(json.dumps({**odd, "encryption_status": encryption_status}))
    an_hour_ago = time.time() - 3600
    os.utime(store_dir / "odd.json", (an_hour_ago, an_hour_ago))
    store.rescan()
    assert "odd" in store
    store.close()

    restarted = RunStore(store_dir, watch=False)

    assert restarted.files_read_at_start == 0
    assert len(restarted) == 6


@pytest.mark.parametrize("encrypted", ["yes", 1])
def test_a_run_whose_encrypted_is_no_boolean_counts_by_its_encryption_status(store_dir, encrypted):
    """A copied-in `encrypted` that is no boolean is ignored for encryption_status, not indexed."""
    store = aged_store(store_dir)
    odd = {**run_record("odd", "db", "success", 9, 1), "encryption_status": "unencrypted"}
    (store_dir / "odd.json").write_text(json.dumps({**odd, "encrypted": encrypted}))
    an_hour_ago = time.time() - 3600
    os.utime(store_dir / "odd.json", (an_hour_ago, an_hour_ago))
    store.rescan()

    page = store.list_runs(store_module.RunQuery(encrypted=False))
    assert [run["run_id"] for run in page.runs] == ["odd"]
    assert store.list_runs(store_module.RunQuery(encrypted=True)).runs == []
    store.close()
    assert RunStore(store_dir, watch=False).files_read_at_start == 0


def test_a_row_changed_on_disk_fails_its_digest_and_is_not_trusted(store_dir, caplog):
    """A changed byte that leaves well-formed JSON of the right types is still caught."""
    original = aged_store(store_dir)
    expected = index_view(original)
    original.close()
    content = snapshot_path(store_dir).read_bytes()
    assert content.count(b'"success"') == 5
    snapshot_path(store_dir).write_bytes(content.replace(b'"success"', b'"failure"', 1))

    with caplog.at_level(logging.WARNING):
        restarted = RunStore(store_dir, watch=False)

    assert "does not match its digest" in caplog.text
    assert restarted.files_read_at_start == 5
    assert index_view(restarted) == expected
    restarted.close()
    assert RunStore(store_dir, watch=False).files_read_at_start == 0


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_something_other_than_a_file_at_the_snapshot_path_is_no_snapshot(store_dir, kind, caplog):
    """A FIFO there hung the start for good, waiting for a writer."""
    aged_store(store_dir).close()
    snapshot_path(store_dir).unlink()
    if kind == "fifo":
        os.mkfifo(snapshot_path(store_dir))
    else:
        snapshot_path(store_dir).mkdir()

    with caplog.at_level(logging.WARNING):
        restarted = RunStore(store_dir, watch=False)

    assert restarted.files_read_at_start == 5
    assert "index snapshot" in caplog.text


def test_a_refused_snapshot_of_an_empty_store_is_written_again(store_dir, caplog):
    """With no run file to read, a start counted a refused snapshot as current: an old-format
    one was never replaced, and every start warned about it."""
    store_dir.mkdir()
    snapshot_path(store_dir).write_bytes(b'{"format": 1, "written_ns": 1}\n[]\n')

    RunStore(store_dir, watch=False).close()

    header, rows = snapshot_rows(store_dir)
    assert header["format"] == store_module._IndexSnapshot.FORMAT and rows == []
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        RunStore(store_dir, watch=False).close()
    assert "index snapshot" not in caplog.text


def test_a_snapshot_holding_rows_of_removed_runs_is_written_again(store_dir):
    """A start that read no file but found runs gone since must not keep the snapshot as current."""
    aged_store(store_dir).close()
    (store_dir / "r1.json").unlink()
    (store_dir / "r3.json").unlink()

    restarted = RunStore(store_dir, watch=False)
    assert restarted.files_read_at_start == 0
    assert restarted.save_snapshot()

    _, rows = snapshot_rows(store_dir)
    assert sorted(row[4] for row in rows) == ["r0", "r2", "r4"]


def snapshot_rows(folder: Path) -> tuple[dict, list[list]]:
    """The snapshot's header and its rows, each line's digest checked."""
    header, *lines = snapshot_path(folder).read_bytes().splitlines()
    rows = [row for line in lines for row in json.loads(checked(line))]
    return json.loads(checked(header)), rows


def checked(line: bytes) -> bytes:
    """The JSON text of a snapshot line, once its digest is seen to match."""
    text = line.split(b" ", 1)[1]
    assert signed(text) == line + b"\n"
    return text


def write_snapshot(folder: Path, header: dict, rows: list[list]) -> None:
    """Write a snapshot with rows as the store would, each line signed."""
    lines = [json.dumps(header).encode(), json.dumps(rows).encode()]
    snapshot_path(folder).write_bytes(b"".join(signed(line) for line in lines))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (0, 1.0),  # the inode, as a float
        (1, "93"),  # the size
        (2, None),  # mtime_ns
        (3, True),  # ctime_ns: JSON's true is no number of nanoseconds
        (4, 7),  # run_id
        (5, 1.5),  # received_us
        (5, 10**30),  # received_us, past any date-time
        (6, None),  # job_name
        (7, ["host"]),  # agent_id
        (9, "2026-05-12T02:00:00Z"),  # start_ts, as a string
        (9, float("nan")),  # start_ts: json writes NaN and reads it back
        (10, float("inf")),  # end_ts
        (10, False),  # end_ts
        (11, 1.5),  # bytes_backed_up
        (11, True),  # bytes_backed_up
        (11, -1),  # bytes_backed_up, below what a POST may send
        (11, 2**63),  # bytes_backed_up, above it
        (12, "yes"),  # encrypted
        (12, 1),  # encrypted
        (13, 0),  # encryption_status
        (14, {"error": "x"}),  # error
    ],
)
def test_a_row_with_a_field_of_the_wrong_type_makes_the_snapshot_unusable(
    store_dir, field, value, caplog
):
    """Each field must have the type snapshot_row writes, or the start would trust garbage."""
    original = aged_store(store_dir)
    expected = index_view(original)
    original.close()
    header, rows = snapshot_rows(store_dir)
    rows[0][field] = value  # a row whose signature still matches its file
    write_snapshot(store_dir, header, rows)

    with caplog.at_level(logging.WARNING):
        restarted = RunStore(store_dir, watch=False)

    assert "index snapshot" in caplog.text and "unusable" in caplog.text
    assert restarted.files_read_at_start == 5
    assert index_view(restarted) == expected
    assert all(isinstance(s.start_ts, float) for s in restarted.summaries())


def test_a_snapshot_that_lies_about_an_unchanged_signature_is_caught_by_stat(store_dir):
    """A snapshot from another copy of the store (other inodes) is a stale one: all re-read."""
    aged_store(store_dir).close()
    header, rows = snapshot_rows(store_dir)
    for row in rows:
        row[0] += 1  # another inode, as after an rsync to another machine
        row[8] = "failure"
    write_snapshot(store_dir, header, rows)
    restarted = RunStore(store_dir, watch=False)
    assert restarted.files_read_at_start == 5
    assert {s.status for s in restarted.summaries()} == {"success"}


@pytest.mark.parametrize("relative", [".", "../store", "./"])
def test_a_store_named_relative_to_the_current_folder_keeps_its_snapshot_beside_it(
    store_dir, monkeypatch, relative
):
    """STORE_DIR=. has no name of its own: the snapshot must still go beside it, not in it."""
    aged_store(store_dir).close()
    snapshot_path(store_dir).unlink()
    monkeypatch.chdir(store_dir)

    RunStore(relative, watch=False).close()

    assert sorted(os.listdir(store_dir)) == [f"r{number}.json" for number in range(5)]
    assert snapshot_path(store_dir).exists()
    assert RunStore(relative, watch=False).files_read_at_start == 0


def test_server_saves_the_snapshot_when_stopped_with_sigterm(live_server_factory, store_dir):
    """A service manager's stop leaves a snapshot, so the next start reads nothing."""
    import requests

    from tests.conftest import make_run

    server = live_server_factory()
    for number in range(3):
        requests.post(server.url + "/v1/backup-runs", json=make_run(f"s{number}"), timeout=10)
    snapshot_path(store_dir).unlink(missing_ok=True)
    server.process.terminate()
    assert server.process.wait(timeout=20) == 0
    header, rows = snapshot_rows(store_dir)
    assert header["runs"] == len(rows) == 3


def mixed_folder(store_dir: Path) -> None:
    """An aged store with a snapshot, then changes: a stale row, a new run, two bad files."""
    aged_store(store_dir, count=40).close()
    (store_dir / "r3.json").write_text(json.dumps(run_record("r3", "db", "failure", 3, 7)))
    (store_dir / "r7.json").unlink()
    (store_dir / "new.json").write_text(json.dumps(run_record("new", "web", "partial", 99, 1)))
    (store_dir / "broken.json").write_text("{not json")
    (store_dir / "other.json").write_text(json.dumps(run_record("r1", "db", "success", 1, 1)))


def test_loader_processes_build_the_same_index_as_one_process(store_dir, monkeypatch, caplog):
    mixed_folder(store_dir)
    alone = RunStore(store_dir, watch=False)
    monkeypatch.setattr(store_module, "PARALLEL_LOAD_MIN_FILES", 1)
    monkeypatch.setattr(store_module, "load_worker_count", lambda: 3)
    loader_pids = []
    real_check = store_module._check_files

    def recording_check(*args):
        loader_pids.append(os.getpid())
        return real_check(*args)

    monkeypatch.setattr(store_module, "_check_files", recording_check)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        shared = RunStore(store_dir, watch=False)
    assert loader_pids == [], "the checks ran in this process, not in loader processes"
    assert "loader processes failed" not in caplog.text
    assert index_view(shared) == index_view(alone)
    assert len(shared) == 40  # r3 re-read, r7 gone, new added; the two bad files skipped
    assert shared.files_read_at_start == alone.files_read_at_start == 4
    assert caplog.text.count("not a valid run") == 2


def test_a_loader_process_that_dies_costs_time_not_runs(store_dir, monkeypatch, caplog):
    mixed_folder(store_dir)
    expected = index_view(RunStore(store_dir, watch=False))
    monkeypatch.setattr(store_module, "PARALLEL_LOAD_MIN_FILES", 1)
    monkeypatch.setattr(store_module, "load_worker_count", lambda: 2)
    parent = os.getpid()
    real_check = store_module._check_files

    def dying_check(*args):
        if os.getpid() != parent:
            os._exit(1)  # a loader process killed mid-way, say by the OOM killer
        return real_check(*args)

    monkeypatch.setattr(store_module, "_check_files", dying_check)
    with caplog.at_level(logging.WARNING):
        restarted = RunStore(store_dir, watch=False)
    assert "loader processes failed" in caplog.text
    assert index_view(restarted) == expected


def process_is_gone(pid: int) -> bool:
    """Tell whether pid has exited: no longer in /proc, or a zombie nobody reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def children_of(parent: int) -> list[int]:
    """The pids of parent's child processes, from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    children.append(int(entry.name))
    return children


def with_ctrl_c_as_in_a_terminal() -> None:
    """preexec_fn: give the child SIGINT's default disposition, as a terminal's foreground job
    has. pytest run as a background job (`&` in a CI script) would pass on "ignored", which
    the server rightly keeps, and the Ctrl-C tests would then fail for no fault of its own."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_stalled(store_dir: Path, tmp_path: Path, start: str, **popen_args):
    """Run start (Python, with STORE the store folder) in a process whose loaders stall, as on
    a huge folder; return it and its two loaders' pids once one loader is at work."""
    mixed_folder(store_dir)
    pid_folder = tmp_path / "loaders"
    pid_folder.mkdir()
    # Each loader writes a mark, then waits.
    script = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        import store
        store.PARALLEL_LOAD_MIN_FILES = 1
        store.load_worker_count = lambda: 2
        def stalled_check(*args):
            open(os.path.join({str(pid_folder)!r}, str(os.getpid())), "w").close()
            time.sleep(60)
        store._check_files = stalled_check
        STORE = {str(store_dir)!r}
        """
    )
    env = {**os.environ, "STORE_DIR": str(store_dir)}
    popen_args.setdefault("preexec_fn", with_ctrl_c_as_in_a_terminal)
    server = subprocess.Popen([sys.executable, "-c", script + start], env=env, **popen_args)
    deadline = time.monotonic() + 20
    while not any(pid_folder.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    loaders = children_of(server.pid)
    if len(loaders) != 2:
        server.kill()
        pytest.fail("the loader processes never started")
    return server, loaders


def test_loader_processes_do_not_outlive_a_server_killed_during_its_start(store_dir, tmp_path):
    """A stop or a crash during a long start must not leave loaders running, blocked, for good."""
    server, loaders = start_stalled(store_dir, tmp_path, "store.RunStore(STORE, watch=False)")
    try:
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not all(process_is_gone(pid) for pid in loaders) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(process_is_gone(pid) for pid in loaders), "loaders outlived their server"
    finally:
        server.kill()
        for pid in loaders:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_ctrl_c_during_a_long_start_ends_it_at_once_in_one_line(store_dir, tmp_path):
    """Ctrl-C in a terminal signals the server and its loaders; none of them may print a
    traceback, and the server must not wait for the loaders to finish the whole folder."""
    # A session of its own, so that the whole group can be signalled as a terminal does.
    server, loaders = start_stalled(
        store_dir,
        tmp_path,
        "import app; sys.exit(app.main())",
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        began = time.monotonic()
        os.killpg(server.pid, signal.SIGINT)
        _, errors = server.communicate(timeout=20)
        assert time.monotonic() - began < 5
        assert server.returncode == 130
        assert "Traceback" not in errors
        assert errors.strip().splitlines()[-1] == "backup-registry: interrupted during the start"
        deadline = time.monotonic() + 10
        while not all(process_is_gone(pid) for pid in loaders) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(process_is_gone(pid) for pid in loaders), "loaders outlived their server"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_ctrl_c_during_the_start_ends_it_even_when_its_log_pipe_is_gone(store_dir, tmp_path):
    """`app.py 2>&1 | tee log`: Ctrl-C stops tee too, often first. The one line can then not
    be written; the start must end all the same, not carry on loading and serve."""
    server, _ = start_stalled(
        store_dir,
        tmp_path,
        "import app; sys.exit(app.main())",
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        server.stderr.close()  # the reader is gone: writing to stderr now fails
        os.killpg(server.pid, signal.SIGINT)
        assert server.wait(timeout=10) == 130
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_ctrl_c_after_the_load_saves_the_snapshot_without_a_traceback(store_dir):
    """Between the built index and waitress taking over SIGINT, Ctrl-C must still leave
    through store.close(): the next start then reads no file again."""
    mixed_folder(store_dir)
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        import app
        listen = app._listen
        def interrupted_listen(*args):
            os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C came just now
            time.sleep(1)
            return listen(*args)
        app._listen = interrupted_listen
        sys.exit(app.main())
        """
    )
    env = {**os.environ, "STORE_DIR": str(store_dir), "PORT": str(free_port())}
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=with_ctrl_c_as_in_a_terminal,
    )
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    # mixed_folder's snapshot holds r7, whose file is gone since: only a new save drops it.
    saved = {row[4] for row in snapshot_rows(store_dir)[1]}
    assert "r0" in saved and "r7" not in saved


def test_a_start_with_sigint_ignored_keeps_ignoring_it(store_dir, tmp_path):
    """nohup, or `&` in a script, starts the server with SIGINT ignored: Ctrl-C meant for the
    shell's foreground job must not stop it, during the start as after."""
    server, _ = start_stalled(
        store_dir,
        tmp_path,
        "import app; sys.exit(app.main())",
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        os.killpg(server.pid, signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            server.wait(timeout=1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_the_snapshot_lists_runs_newest_first(store_dir):
    """So that a restart takes them in index order and need not sort a million keys."""
    store = aged_store(store_dir, count=30)
    store.save(run_record("late", "db", "success", 999_999, 1))
    store.close()
    received = [row[5] for row in snapshot_rows(store_dir)[1]]
    assert len(received) == 31
    assert received == sorted(received, reverse=True)


def test_packed_signatures_match_only_the_exact_stat_and_skip_numbers_too_big(tmp_path):
    """What loader processes compare files against: never a near miss, never a wrapped number."""
    path = tmp_path / "r1.json"
    path.write_text("{}")
    st = os.stat(path)
    exact = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, "r1"]
    packed = store_module._Signatures.of(
        {"r1": exact, "r2": [2**64 - 1, 1, 1, 1, "r2"], "r3": [1, 1, 1, 1, "r3"]}
    )
    assert packed.match("r1", st)
    assert "r2" not in packed.position  # an inode past 2**63 cannot be packed: its file is read
    assert not packed.match("r3", st)
    assert not packed.match("r4", st)
    later = [*exact]
    later[3] += 1  # ctime moved: written again, even if size and mtime were put back
    assert not store_module._Signatures.of({"r1": later}).match("r1", st)


@pytest.mark.parametrize("field", ["inode", "size", "mtime", "ctime"])
def test_packed_signatures_differing_in_any_one_number_do_not_match(tmp_path, field):
    """Each of the four numbers counts: a file replaced or rewritten may keep the other three."""
    path = tmp_path / "r1.json"
    path.write_text("{}")
    st = os.stat(path)
    row = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, "r1"]
    row[["inode", "size", "mtime", "ctime"].index(field)] += 1

    assert not store_module._Signatures.of({"r1": row}).match("r1", st)


def test_a_start_sweeps_old_snapshot_temp_files_left_by_a_killed_write(store_dir):
    """A write killed half-way leaves its temp file beside the store; the next start removes it."""
    aged_store(store_dir).close()
    snapshot = snapshot_path(store_dir)
    stale = time.time() - store_module.STALE_TEMP_SECONDS - 60
    old = snapshot.with_name(f"{snapshot.name}.{'a' * 32}.tmp")
    young = snapshot.with_name(f"{snapshot.name}.{'b' * 32}.tmp")  # a write may still be running
    not_ours = snapshot.with_name(f"{snapshot.name}.backup.tmp")
    other_store = store_dir.parent / f".other{snapshot.name}.{'c' * 32}.tmp"
    for path in (old, young, not_ours, other_store):
        path.write_text('{"format": 1, "written_ns": 1}\n[[1, 2')
    for path in (old, not_ours, other_store):
        os.utime(path, (stale, stale))
    restarted = RunStore(store_dir, watch=False)
    assert not old.exists()
    assert young.exists() and not_ours.exists() and other_store.exists()
    assert snapshot.exists() and restarted.files_read_at_start == 0


def test_text_no_file_can_hold_costs_the_snapshot_not_the_stop(store_dir, caplog):
    """Should a lone surrogate reach the index, the snapshot is skipped with a warning."""
    store = aged_store(store_dir)
    odd = store_module.RunSummary(run_record("odd", "db", "success", 9, 1), "odd", (1, 2, 3, 4))
    odd.error = "bad \ud800 byte"  # the store's own reads refuse this (see _parse_run)
    with store._lock:
        store._put(odd)
    with caplog.at_level(logging.WARNING, logger="backup_registry.store"):
        store.close()  # saves the snapshot: it must not raise
    assert "cannot write index snapshot" in caplog.text
    assert [path.name for path in store_dir.parent.glob("*.tmp")] == []


def test_the_watcher_follows_changes_while_a_snapshot_is_written(store_dir, monkeypatch):
    """A snapshot of a million runs takes about 7 s to write. Written in the watcher's own
    thread, no outside change was followed meanwhile, against the promise of 2 s."""
    monkeypatch.setattr(store_module._Watcher, "FIRST_SNAPSHOT_SECONDS", 0.0)
    writing, release = threading.Event(), threading.Event()

    def slow_save_snapshot() -> bool:  # stands in for the 7 s write at a million runs
        writing.set()
        release.wait(timeout=10)
        return True

    monkeypatch.setattr(store_module.RunStore, "save_snapshot", lambda self: slow_save_snapshot())
    store_dir.mkdir()
    store = store_module.RunStore(store_dir)
    try:
        assert writing.wait(timeout=5)
        (store_dir / "during.json").write_text(
            json.dumps(run_record("during", "db", "success", 1, 1))
        )

        deadline = time.monotonic() + 2.0
        while "during" not in store and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "during" in store
    finally:
        release.set()
        store.close()
