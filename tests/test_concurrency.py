"""Concurrency: 32 clients post, overwrite and delete the same few run ids on the real server.

"Last acknowledged" with concurrent clients: each operation is timed from just before it is
sent to just after its answer arrives, and the server applies it somewhere in between. An
operation B that was sent after A was answered must take effect after A. So the final state of
an id must be the effect of an operation that no other operation on that id followed in this
strict sense; when the last operation overlapped nothing, that is exactly the last one.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from dataclasses import dataclass

import requests
from conftest import make_run

import store as store_module

RUNS = "/v1/backup-runs"
THREADS = 32
OPS_PER_THREAD = 25
IDS = ("shared-1", "shared/2", "shared 3")


@dataclass
class Op:
    """One acknowledged write: what it did and when, as the client saw it."""

    run_id: str
    body: dict | None  # None for a delete
    sent: float
    answered: float


def test_32_clients_on_the_same_ids_end_in_a_last_acknowledged_state(live_server_factory):
    server = live_server_factory({"THREADS": "8"})
    barrier = threading.Barrier(THREADS)
    ops: list[Op] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        rng = random.Random(number)
        with requests.Session() as session:
            barrier.wait(timeout=30)
            for step in range(OPS_PER_THREAD):
                run_id = rng.choice(IDS)
                url = f"{server.url}{RUNS}/{requests.utils.quote(run_id, safe='')}"
                kind = rng.choices(["post", "delete", "get"], weights=[6, 3, 2])[0]
                body = make_run(run_id, metadata={"client": number, "step": step})
                sent = time.monotonic()
                if kind == "post":
                    response = session.post(server.url + RUNS, json=body, timeout=30)
                elif kind == "delete":
                    response = session.delete(url, timeout=30)
                else:
                    response = session.get(url, timeout=30)
                answered = time.monotonic()
                expected = {"post": {201}, "delete": {204}, "get": {200, 404}}[kind]
                if response.status_code not in expected:
                    with lock:
                        failures.append(f"{kind} {run_id}: {response.status_code}")
                    continue
                # A read sees a whole record, never a torn one.
                if response.status_code == 200 and response.json()["run_id"] != run_id:
                    with lock:
                        failures.append(f"get {run_id}: {response.text}")
                if kind != "get":
                    with lock:
                        ops.append(Op(run_id, body if kind == "post" else None, sent, answered))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == [], failures[:10]

    for run_id in IDS:
        mine = [op for op in ops if op.run_id == run_id]
        # Candidates: operations that no other operation on this id strictly followed.
        last_sent = max(op.sent for op in mine)
        candidates = [op for op in mine if op.answered >= last_sent]
        path = server.store_dir / store_module.file_name_for(run_id)
        on_disk = json.loads(path.read_bytes()) if path.exists() else None
        served = requests.get(
            f"{server.url}{RUNS}/{requests.utils.quote(run_id, safe='')}", timeout=10
        )
        if on_disk is None:
            assert served.status_code == 404
            assert any(op.body is None for op in candidates), f"{run_id} deleted out of order"
        else:
            assert served.json() == on_disk
            on_disk.pop("received_at")
            assert on_disk in [op.body for op in candidates], f"{run_id}: not a last write"

    listed = requests.get(server.url + RUNS, timeout=10).json()
    files = {name for name in os.listdir(server.store_dir) if not name.startswith(".")}
    assert {store_module.file_name_for(run["run_id"]) for run in listed} == files
    assert not [name for name in os.listdir(server.store_dir) if name.startswith(".tmp-")]
    assert "Traceback" not in server.log()
