"""Disk faults: a full disk, a read-only store, I/O errors on fsync and rename.

Each must answer a JSON 507 or 503 (never a 500 with a traceback), leave the old record and no
temp file behind, and heal by itself once the fault is gone. As root the full and read-only
disks are real: a tiny tmpfs, remounted read-only. Elsewhere the same tests inject the errno
the kernel would give; I/O errors are always injected, as no file system here can make them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import AS_AN_ORDINARY_USER, LiveServer, make_run

import store as store_module
from app import create_app

RUNS = "/v1/backup-runs"


def can_mount() -> bool:
    """Tell whether this process may mount a tmpfs (root, and mount(8) present)."""
    return (
        os.geteuid() == 0
        and subprocess.run(["which", "mount"], capture_output=True).returncode == 0
    )


class Disk:
    """The store's disk, whose faults are real where a tmpfs can be mounted, injected elsewhere."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch, real: bool):
        self.mount_point = root / "disk"
        self.mount_point.mkdir()
        self.store = self.mount_point / "store"
        self.monkeypatch = monkeypatch
        self.real = real
        self.mounted = False
        self.filler = self.mount_point / "filler"
        self._injected: dict[str, int] = {}
        if real:
            # 1 MiB: room for the store, small enough to fill in a blink.
            self._mount("-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(self.mount_point))
            self.mounted = True
        self._install_injection()

    def _mount(self, *args: str) -> None:
        subprocess.run(["mount", *args], check=True, capture_output=True)

    # --- faults ---

    def fill(self) -> None:
        """Make the disk full."""
        if not self.real:
            self._injected["write"] = errno.ENOSPC
            return
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for size in (1 << 16, 1 << 12, 1):  # big chunks, then top up what is left
                with contextlib.suppress(OSError):
                    while os.write(fd, b"\0" * size):
                        pass
        finally:
            os.close(fd)

    def free(self) -> None:
        """Give the space back."""
        self._injected.pop("write", None)
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def make_read_only(self) -> None:
        """Make the store's file system read-only (chmod would not stop root)."""
        if self.real:
            self._mount("-o", "remount,ro", str(self.mount_point))
        else:
            self._injected["modify"] = errno.EROFS

    def make_writable(self) -> None:
        """Undo make_read_only."""
        if self.real:
            self._mount("-o", "remount,rw", str(self.mount_point))
        self._injected.pop("modify", None)

    def fail_fsync(self, on: str, error: int = errno.EIO) -> None:
        """Make fsync of a file ('file') or of the folder ('folder') fail with an I/O error."""
        self._injected[f"fsync-{on}"] = error

    def fail_rename(self, error: int = errno.EIO) -> None:
        """Make the rename of a temp file over a run fail with an I/O error."""
        self._injected["rename"] = error

    def heal(self) -> None:
        """Remove every injected fault."""
        self._injected.clear()

    def cleanup(self) -> None:
        """Unmount the tmpfs, whatever state the test left it in."""
        if self.mounted:
            result = subprocess.run(["umount", str(self.mount_point)], capture_output=True)
            if result.returncode != 0:  # still busy: detach now, the kernel frees it later
                subprocess.run(["umount", "-l", str(self.mount_point)], check=True)
            self.mounted = False

    # --- injection: wraps the os functions the store calls, only for paths in the store ---

    def _inside(self, path) -> bool:
        try:
            return Path(os.fspath(path)).resolve().is_relative_to(self.store.resolve())
        except (TypeError, ValueError):
            return False

    def _fd_inside(self, fd: int) -> bool:
        try:
            return self._inside(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            return False

    def _raise(self, kind: str, path: object = None) -> None:
        code = self._injected.get(kind)
        if code is not None:
            raise OSError(code, os.strerror(code), None if path is None else os.fspath(path))

    def _install_injection(self) -> None:
        real_open, real_write, real_fsync = os.open, os.write, os.fsync
        real_replace, real_unlink, real_access = os.replace, os.unlink, os.access

        def open_(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and self._inside(path):
                self._raise("modify", path)
            return real_open(path, flags, *args, **kwargs)

        def write(fd, data):
            if self._fd_inside(fd):
                self._raise("write")
            return real_write(fd, data)

        def fsync(fd):
            if self._fd_inside(fd):
                is_folder = stat.S_ISDIR(os.fstat(fd).st_mode)
                self._raise("fsync-folder" if is_folder else "fsync-file")
            return real_fsync(fd)

        def replace(source, target, *args, **kwargs):
            if self._inside(target):
                self._raise("modify", target)
                self._raise("rename", target)
            return real_replace(source, target, *args, **kwargs)

        def unlink(path, *args, **kwargs):
            # Removing our own temp file after a failure must still work, as it would for real.
            if self._inside(path) and not Path(path).name.startswith(store_module.TEMP_PREFIX):
                self._raise("modify", path)
            return real_unlink(path, *args, **kwargs)

        def access(path, mode, *args, **kwargs):
            # access(2) on a read-only file system answers EROFS for W_OK, to root too.
            if mode & os.W_OK and self._inside(path) and "modify" in self._injected:
                return False
            return real_access(path, mode, *args, **kwargs)

        for name, function in (
            ("access", access),
            ("open", open_),
            ("write", write),
            ("fsync", fsync),
            ("replace", replace),
            ("unlink", unlink),
        ):
            self.monkeypatch.setattr(store_module.os, name, function)


@pytest.fixture(params=["real", "injected"] if can_mount() else ["injected"])
def disk(request, tmp_path, monkeypatch):
    """The store's disk; as root, full and read-only disks are tested both real and injected."""
    device = Disk(tmp_path, monkeypatch, real=request.param == "real")
    try:
        yield device
    finally:
        monkeypatch.undo()
        device.cleanup()


@pytest.fixture
def io_disk(tmp_path, monkeypatch):
    """The store's disk with injected I/O errors only: no file system here can make real ones."""
    yield Disk(tmp_path, monkeypatch, real=False)


@contextlib.contextmanager
def client_over(disk: Disk):
    """A Flask test client over a store on disk; its requests come from loopback."""
    app = create_app({"STORE_DIR": str(disk.store), "API_TOKENS": "", "WATCH_STORE": "0"})
    try:
        yield app.test_client()
    finally:
        app.extensions["store"].close()


@pytest.fixture
def faulty(disk):
    """A client over the full or read-only disk."""
    with client_over(disk) as client:
        yield client


@pytest.fixture
def io_faulty(io_disk):
    """A client over the disk with injected I/O errors."""
    with client_over(io_disk) as client:
        yield client


def temp_files(disk: Disk) -> list[str]:
    return sorted(name for name in os.listdir(disk.store) if name.startswith("."))


def assert_clean_error(response, status: int, caplog) -> None:
    """A JSON error with the given status, and no traceback in the log."""
    assert response.status_code == status, response.data
    assert response.is_json and set(response.json) == {"error"}
    assert "Traceback" not in response.text and "OSError" not in response.text
    assert all(record.exc_info is None for record in caplog.records), "a traceback was logged"


def stored(client, run_id: str = "run-1"):
    return client.get(f"{RUNS}/{run_id}").json


# --- a full disk -----------------------------------------------------------------------------


def test_full_disk_answers_507_and_keeps_the_old_record(disk, faulty, caplog):
    caplog.set_level(logging.INFO)
    assert faulty.post(RUNS, json=make_run(status="success")).status_code == 201
    disk.fill()

    response = faulty.post(RUNS, json=make_run(status="failure"))

    assert_clean_error(response, 507, caplog)
    assert "disk is full" in response.json["error"]
    assert stored(faulty)["status"] == "success"
    assert temp_files(disk) == []
    assert faulty.post(RUNS, json=make_run("run-2")).status_code == 507
    assert faulty.get(f"{RUNS}/run-2").status_code == 404

    disk.free()

    assert faulty.post(RUNS, json=make_run(status="failure")).status_code == 201
    assert stored(faulty)["status"] == "failure"


def test_a_refused_write_is_logged_as_an_error_and_a_missing_run_is_not(disk, faulty, caplog):
    """Pins the store-error log line: the operator learns of a 507 from the log, not of a 404."""
    caplog.set_level(logging.INFO)
    assert faulty.get(f"{RUNS}/never-there").status_code == 404
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    disk.fill()

    assert faulty.post(RUNS, json=make_run()).status_code == 507

    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("store error: ")


def test_reads_still_work_on_a_full_disk(disk, faulty):
    faulty.post(RUNS, json=make_run())
    disk.fill()

    assert faulty.get(RUNS).json[0]["run_id"] == "run-1"
    assert faulty.get(f"{RUNS}/run-1").status_code == 200
    assert faulty.get("/health").status_code == 200


# --- a read-only store -----------------------------------------------------------------------


def test_read_only_store_answers_503_and_keeps_every_record(disk, faulty, caplog):
    caplog.set_level(logging.INFO)
    assert faulty.post(RUNS, json=make_run()).status_code == 201
    disk.make_read_only()
    try:
        overwrite = faulty.post(RUNS, json=make_run(status="partial"))
        delete = faulty.delete(f"{RUNS}/run-1")
        listing = faulty.get(RUNS)
        health = faulty.get("/health")
    finally:
        disk.make_writable()

    # A monitor polling /health learns that reports are refused (a disk with errors that the
    # kernel remounted read-only); the cause is in the log, not in the public answer.
    assert health.status_code == 503
    assert health.json["status"] == "unhealthy" and str(disk.store) not in health.text
    assert "not writable" in caplog.text
    assert faulty.get("/health").json["status"] == "healthy"
    assert_clean_error(overwrite, 503, caplog)
    assert "read-only" in overwrite.json["error"]
    assert_clean_error(delete, 503, caplog)
    assert listing.status_code == 200 and len(listing.json) == 1
    assert stored(faulty)["status"] == "success"
    assert temp_files(disk) == []
    # Writable again: no restart needed.
    assert faulty.post(RUNS, json=make_run(status="partial")).status_code == 201
    assert faulty.delete(f"{RUNS}/run-1").status_code == 204


# --- I/O errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(lambda disk: disk.fail_fsync("file"), id="fsync-file"),
        pytest.param(lambda disk: disk.fail_rename(), id="rename"),
    ],
)
def test_io_error_before_the_rename_answers_503_and_keeps_the_old_record(
    io_disk, io_faulty, caplog, fault
):
    caplog.set_level(logging.INFO)
    io_faulty.post(RUNS, json=make_run(status="success"))
    fault(io_disk)

    response = io_faulty.post(RUNS, json=make_run(status="failure"))

    assert_clean_error(response, 503, caplog)
    assert "I/O error" in response.json["error"]
    assert stored(io_faulty)["status"] == "success"
    assert io_faulty.get(RUNS).json[0]["status"] == "success"  # the index did not move either
    assert temp_files(io_disk) == []

    io_disk.heal()

    assert io_faulty.post(RUNS, json=make_run(status="failure")).status_code == 201
    assert stored(io_faulty)["status"] == "failure"


def remove_temp_files_after_their_fsync(disk: Disk, times: int) -> None:
    """Remove the next `times` temp files just after their fsync, for real, as `rsync -a
    --delete` from a copy without our dot-files did to in-flight POSTs."""
    real_fsync = store_module.os.fsync
    removed = []

    def fsync(fd):
        real_fsync(fd)
        if len(removed) < times and not stat.S_ISDIR(os.fstat(fd).st_mode):
            (name,) = temp_files(disk)
            os.unlink(disk.store / name)
            removed.append(name)

    disk.monkeypatch.setattr(store_module.os, "fsync", fsync)


def test_a_temp_file_removed_from_outside_is_written_again(io_disk, io_faulty, caplog):
    """A POST failed with 503 'the store folder is missing' while the folder was there."""
    caplog.set_level(logging.INFO)
    remove_temp_files_after_their_fsync(io_disk, times=1)

    response = io_faulty.post(RUNS, json=make_run(status="failure"))

    assert response.status_code == 201
    assert json.loads((io_disk.store / "run-1.json").read_bytes()) == response.json
    assert io_faulty.get(RUNS).json == [response.json]
    assert "temp file for run-1.json removed from outside; writing it again" in caplog.text


def test_a_temp_file_removed_twice_is_a_503_that_says_so(io_disk, io_faulty, caplog):
    caplog.set_level(logging.INFO)
    io_faulty.post(RUNS, json=make_run(status="success"))
    remove_temp_files_after_their_fsync(io_disk, times=2)

    response = io_faulty.post(RUNS, json=make_run(status="failure"))

    assert_clean_error(response, 503, caplog)
    assert response.json["error"] == (
        "cannot write run: its temp file in the store folder was removed before its rename, "
        "twice (by rsync --delete or a clean-up job?)"
    )
    assert stored(io_faulty)["status"] == "success"
    assert temp_files(io_disk) == []
    assert io_faulty.post(RUNS, json=make_run(status="failure")).status_code == 201


def test_folder_fsync_error_answers_503_and_does_not_stick(io_disk, io_faulty, caplog):
    """A failed folder fsync fails its write; the next writes succeed without a restart.

    The rename has happened by then, so the new record is in place: the client is told 503 and
    retries, rewriting the same content.
    """
    caplog.set_level(logging.INFO)
    io_disk.fail_fsync("folder")

    failed = io_faulty.post(RUNS, json=make_run())

    assert_clean_error(failed, 503, caplog)
    io_disk.heal()
    for attempt in range(3):
        assert io_faulty.post(RUNS, json=make_run(f"run-{attempt}")).status_code == 201
    assert io_faulty.delete(f"{RUNS}/run-0").status_code == 204
    assert temp_files(io_disk) == []


def hold_first_folder_fsync(io_disk, io_faulty, later: int, *, fail: bool) -> tuple[dict, int]:
    """POST one run and hold its folder fsync until `later` more writers have queued behind it,
    then let it finish (or fail with EIO); return each run's status and the folder fsyncs run."""
    app = io_faulty.application
    started, release = threading.Event(), threading.Event()
    real_fsync = store_module.os.fsync
    folder_fsyncs = []

    def fsync(fd):
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            return real_fsync(fd)
        folder_fsyncs.append(fd)
        if len(folder_fsyncs) == 1:
            started.set()
            release.wait(10)  # hold the first folder fsync while others rename and queue
            if fail:
                raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    io_disk.monkeypatch.setattr(store_module.os, "fsync", fsync)
    statuses: dict[str, int] = {}

    def post(run_id: str) -> None:
        with app.test_client() as client:
            statuses[run_id] = client.post(RUNS, json=make_run(run_id)).status_code

    first = threading.Thread(target=post, args=("first",))
    first.start()
    assert started.wait(10)
    others = [threading.Thread(target=post, args=(f"later-{i}",)) for i in range(later)]
    for thread in others:
        thread.start()
    deadline = time.monotonic() + 10
    while app.extensions["store"]._dir_syncer._requested < later + 1:  # every writer queued
        assert time.monotonic() < deadline, "the later writers never reached the folder fsync"
        threading.Event().wait(0.01)
    release.set()
    for thread in [first, *others]:
        thread.join(timeout=30)
    return statuses, len(folder_fsyncs)


def test_folder_fsync_failure_fails_only_the_writes_it_covered(io_disk, io_faulty):
    """Writers that arrive while a failing group fsync runs share the next one, and succeed."""
    statuses, _ = hold_first_folder_fsync(io_disk, io_faulty, 6, fail=True)

    assert statuses.pop("first") == 503
    assert set(statuses.values()) == {201} and len(statuses) == 6


def test_writers_arriving_during_a_folder_fsync_wait_for_the_next_one(io_disk, io_faulty):
    """A folder fsync that began before a writer's rename does not cover it: a second one must."""
    statuses, folder_fsyncs = hold_first_folder_fsync(io_disk, io_faulty, 3, fail=False)

    assert set(statuses.values()) == {201} and len(statuses) == 4
    assert folder_fsyncs == 2  # the held one, then one shared by the three later writers


# --- a store whose disk goes away ----------------------------------------------------------


class StoreAtMountPoint:
    """STORE_DIR at the mount point of its own disk: a real tmpfs as root, else the kernel's
    answer to os.path.ismount injected for that one folder."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch, real: bool):
        self.path = folder
        self.path.mkdir()
        self.real = real
        self.mounted = True
        if real:
            self._mount_tmpfs()
        else:
            real_ismount = os.path.ismount

            def ismount(path) -> bool:
                if os.path.islink(path):
                    return False  # as the kernel has it: a symlink is no mount point
                if Path(os.path.realpath(path)) == self.path.resolve():
                    return self.mounted
                return real_ismount(path)

            monkeypatch.setattr(store_module.os.path, "ismount", ismount)

    def _mount_tmpfs(self) -> None:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(self.path)], check=True
        )

    def unmount(self) -> None:
        """Take the disk away; the path is then the bare folder beneath."""
        if self.real:
            subprocess.run(["umount", "-l", str(self.path)], check=True)
        self.mounted = False

    def mount(self) -> None:
        """Bring a disk back: as root a new, empty tmpfs."""
        if self.real:
            self._mount_tmpfs()
        self.mounted = True

    def cleanup(self) -> None:
        """Unmount whatever the test left mounted."""
        if self.real and os.path.ismount(self.path):
            subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture(params=["real", "injected"] if can_mount() else ["injected"])
def mounted_store(request, tmp_path, monkeypatch):
    """A StoreAtMountPoint at tmp_path/store, unmounted again after the test."""
    store_at_mount_point = StoreAtMountPoint(
        tmp_path / "store", monkeypatch, request.param == "real"
    )
    yield store_at_mount_point
    store_at_mount_point.cleanup()


def test_a_store_at_a_mount_point_refuses_while_its_disk_is_unmounted(mounted_store):
    """STORE_DIR the mount point of its own disk: unmounted, the path is the bare folder
    beneath. Runs posted then went there, 201, and hid once the disk came back; listings and
    the dashboard showed an empty registry meanwhile."""
    app = create_app({"STORE_DIR": str(mounted_store.path), "API_TOKENS": ""})
    client = app.test_client()
    try:
        assert client.post(RUNS, json=make_run("before")).status_code == 201

        mounted_store.unmount()
        posted = client.post(RUNS, json=make_run("while-unmounted"))
        listed = client.get(RUNS)
        deleted = client.delete(f"{RUNS}/before")

        health = client.get("/health")

        assert (posted.status_code, listed.status_code, deleted.status_code) == (503, 503, 503)
        assert "mount point" in posted.get_json()["error"]
        assert (health.status_code, health.json["status"]) == (503, "unhealthy")
        # Nor in the folder beneath.
        assert "while-unmounted.json" not in os.listdir(mounted_store.path)

        mounted_store.mount()
        assert client.post(RUNS, json=make_run("mounted-again")).status_code == 201
        assert client.get("/health").status_code == 200
    finally:
        app.extensions["store"].close()


def test_a_store_served_at_a_mount_point_will_not_start_without_its_disk(mounted_store):
    """Started before its disk was mounted (a failed boot mount), the server would serve the
    bare folder beneath as an empty registry. The index snapshot, beside the store on the
    parent's disk, remembers that the store was a mount point: the start is refused."""
    config = {"STORE_DIR": str(mounted_store.path), "API_TOKENS": ""}
    app = create_app(config)
    assert app.test_client().post(RUNS, json=make_run("on-the-disk")).status_code == 201
    app.extensions["store"].close()  # writes the index snapshot beside the store
    stored = (mounted_store.path / "on-the-disk.json").read_bytes()

    mounted_store.unmount()
    beneath = os.listdir(mounted_store.path)
    with pytest.raises(store_module.StoreUnavailable) as refused:
        create_app(config)

    assert "was the mount point of its own disk when last served" in str(refused.value)
    assert os.listdir(mounted_store.path) == beneath  # nothing written to the folder beneath

    mounted_store.mount()
    # As root the disk is new: the run is copied back, old enough to be trusted at once.
    copied = mounted_store.path / "on-the-disk.json"
    copied.write_bytes(stored)
    os.utime(copied, (time.time() - 60, time.time() - 60))
    app = create_app(config)
    assert [run["run_id"] for run in app.test_client().get(RUNS).get_json()] == ["on-the-disk"]
    app.extensions["store"].close()


def test_a_store_reached_through_a_symlink_to_its_mount_point_is_guarded_too(
    mounted_store, tmp_path
):
    """os.path.ismount says False for a symlink, so neither guard used to see this store."""
    link = tmp_path / "link"
    link.symlink_to(mounted_store.path)
    config = {"STORE_DIR": str(link), "API_TOKENS": ""}
    app = create_app(config)
    client = app.test_client()
    try:
        assert client.post(RUNS, json=make_run("before")).status_code == 201

        mounted_store.unmount()
        posted = client.post(RUNS, json=make_run("while-unmounted"))
    finally:
        app.extensions["store"].close()

    assert posted.status_code == 503
    with pytest.raises(store_module.StoreUnavailable):
        create_app(config)


def test_a_store_that_became_a_mount_point_is_remembered_as_one(tmp_path, monkeypatch):
    """A snapshot is rewritten when only the store's mount state changed, not a run."""
    # Files trusted at once, however young: else the run, just written, is read again at the
    # next start, and that alone has the snapshot rewritten.
    monkeypatch.setattr(store_module, "RACY_NS", 0)
    disk = StoreAtMountPoint(tmp_path / "store", monkeypatch, real=False)
    config = {"STORE_DIR": str(disk.path), "API_TOKENS": ""}
    disk.unmount()  # served first as a plain folder
    app = create_app(config)
    assert app.test_client().post(RUNS, json=make_run("plain")).status_code == 201
    app.extensions["store"].close()

    disk.mount()  # then moved onto its own disk: the same files, nothing else changed
    create_app(config).extensions["store"].close()
    disk.unmount()

    with pytest.raises(store_module.StoreUnavailable):
        create_app(config)


def test_a_refused_start_creates_and_writes_nothing_in_the_folder_beneath(tmp_path, monkeypatch):
    """The refusal comes before STORE_DIR is created or probed for writing."""
    disk = StoreAtMountPoint(tmp_path / "store", monkeypatch, real=False)
    config = {"STORE_DIR": str(disk.path), "API_TOKENS": ""}
    create_app(config).extensions["store"].close()
    disk.unmount()
    disk.path.rmdir()  # not even the bare folder of the mount point is left

    with pytest.raises(store_module.StoreUnavailable):
        create_app(config)

    assert not disk.path.exists()


def test_a_store_served_as_a_plain_folder_starts_whatever_its_snapshot_says_of_mounts(tmp_path):
    """The refusal above needs the snapshot's word that the store was a mount point."""
    store_dir = tmp_path / "store"
    config = {"STORE_DIR": str(store_dir), "API_TOKENS": ""}
    app = create_app(config)
    assert app.test_client().post(RUNS, json=make_run("plain")).status_code == 201
    app.extensions["store"].close()
    snapshot = store_module._IndexSnapshot(store_dir)

    header = json.loads(snapshot.path.read_bytes().split(b"\n", 1)[0].split(b" ", 1)[1])

    assert header["mount_point"] is False
    again = create_app(config).extensions["store"]
    assert len(again) == 1
    again.close()


# --- /health ---------------------------------------------------------------------------------


@pytest.mark.parametrize("watch", ["1", "0"])
def test_health_is_unhealthy_while_the_store_folder_is_gone(tmp_path, caplog, watch):
    """A monitor polling /health must learn that every report is refused (503), and when that
    ends; the log says why once, not at every poll."""
    caplog.set_level(logging.INFO)
    store_dir = tmp_path / "store"
    app = create_app({"STORE_DIR": str(store_dir), "API_TOKENS": "", "WATCH_STORE": watch})
    client = app.test_client()
    try:
        assert client.post(RUNS, json=make_run()).status_code == 201
        store_dir.rename(tmp_path / "moved-away")

        answers = [client.get("/health") for _ in range(3)]
        posted = client.post(RUNS, json=make_run("run-2"))

        assert posted.status_code == 503
        assert [answer.status_code for answer in answers] == [503, 503, 503]
        assert answers[0].json["status"] == "unhealthy" and answers[0].json["error"]
        assert str(tmp_path) not in answers[0].text
        assert caplog.text.count("health: unhealthy") == 1
        assert f"store folder {store_dir} is missing" in caplog.text  # not "not writable"

        (tmp_path / "moved-away").rename(store_dir)
        deadline = time.monotonic() + 10
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)

        assert client.get("/health").json["status"] == "healthy"
        assert "health: healthy again" in caplog.text
    finally:
        app.extensions["store"].close()


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        (0o600, "is not searchable"),  # writable, but no file in it can be opened
        (0o500, "is not writable"),
        (0o000, "is neither writable nor searchable"),
    ],
)
def test_health_is_unhealthy_and_says_which_permission_the_store_folder_lacks(
    tmp_path, mode, reason
):
    """Each is no store to write to; the log names the missing permission, not another."""
    store_dir = tmp_path / "store"
    server = LiveServer(store_dir, prefix=AS_AN_ORDINARY_USER).wait_ready()
    try:
        store_dir.chmod(mode)
        try:
            health = requests.get(server.url + "/health", timeout=10)
        finally:
            store_dir.chmod(0o755)
        assert (health.status_code, health.json()["status"]) == (503, "unhealthy")
        assert f"store folder {store_dir} {reason}" in server.log()
    finally:
        server.stop()


def slow_access(monkeypatch, started: threading.Event, release: threading.Event) -> None:
    """Make os.access in the store wait for release, as on a slow or hung network file system
    (no file system here can be made to hang); started says a call is waiting."""
    real_access = store_module.os.access

    def access(path, mode, *args, **kwargs):
        started.set()
        release.wait(30)
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(store_module.os, "access", access)


def test_health_answers_while_a_look_at_the_store_hangs(tmp_path, monkeypatch):
    """On a hung network file system each /health waited in the kernel for good, and a
    monitor's polls would take the worker threads one by one. One waits; the rest answer."""
    app = create_app({"STORE_DIR": str(tmp_path / "store"), "API_TOKENS": "", "WATCH_STORE": "0"})
    monkeypatch.setattr(store_module, "HEALTH_HUNG_SECONDS", 0.5)
    hung, release = threading.Event(), threading.Event()
    slow_access(monkeypatch, hung, release)
    stuck = threading.Thread(target=lambda: app.test_client().get("/health"))
    stuck.start()
    try:
        assert hung.wait(10)
        answer = app.test_client().get("/health")
    finally:
        release.set()
        stuck.join(10)
        app.extensions["store"].close()

    assert (answer.status_code, answer.json["status"]) == (503, "unhealthy")


@pytest.mark.parametrize(("moved_away", "status"), [(False, 200), (True, 503)])
def test_health_calls_at_once_share_one_slow_look(tmp_path, monkeypatch, moved_away, status):
    """Each waited its turn for 1 s, then said "hung": two monitors polling a slow but
    working disk at once got one 200 and one 503, and the log flapped between them. The one
    that waits shares the look's answer, a problem too."""
    store_dir = tmp_path / "store"
    app = create_app({"STORE_DIR": str(store_dir), "API_TOKENS": "", "WATCH_STORE": "0"})
    looking, release = threading.Event(), threading.Event()
    slow_access(monkeypatch, looking, release)
    answers: list[int] = []

    def poll() -> None:
        answers.append(app.test_client().get("/health").status_code)

    first = threading.Thread(target=poll)
    first.start()
    try:
        assert looking.wait(10)
        second = threading.Thread(target=poll)
        second.start()
        time.sleep(1.5)  # longer than the old wait, well short of HEALTH_HUNG_SECONDS
        if moved_away:  # after the look found the folder, before its access(2) returns
            store_dir.rename(tmp_path / "moved-away")
        release.set()
        first.join(10)
        second.join(10)
    finally:
        release.set()
        app.extensions["store"].close()

    assert answers == [status, status]
