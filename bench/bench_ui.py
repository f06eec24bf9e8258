"""Benchmark the dashboard: time warm page renders over a large store (target: overview ≤ 100 ms).

Writes N run files across J jobs straight into a temporary folder, in the shape RunStore.save
writes, builds the app over it, and times GET / and the other pages with the Flask test
client, so the figures are the app's own work without the network.

    .venv/bin/python bench/bench_ui.py                 # 100,000 runs across 50 jobs
    .venv/bin/python bench/bench_ui.py --runs 20000 --jobs 500
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402
from store import file_name_for  # noqa: E402

STATUSES = ["success"] * 17 + ["failure", "partial", "partial"]
TARGET_MS = 100.0


def write_store(directory: Path, runs: int, jobs: int, seed: int = 4) -> None:
    """Write runs as <run_id>.json files, spread evenly over jobs, one run per job per hour."""
    rng = random.Random(seed)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    for number in range(runs):
        job = number % jobs
        started = start + timedelta(hours=number // jobs, seconds=job * 7)
        status = rng.choice(STATUSES)
        run = {
            "run_id": f"bench/{job:03d}:{number:07d}",  # needs encoding, like real ids may
            "job_name": f"job-{job:03d}",
            "agent_id": f"host-{job % 9}",
            "start_time": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end_time": (started + timedelta(seconds=rng.randint(20, 3600))).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "status": status,
            "bytes_backed_up": rng.randint(10**7, 10**11),
            "encrypted": rng.random() > 0.03,
            "error": None if status == "success" else "restic: exit status 3: some files unread",
            "metadata": {"tool": "restic", "host": f"host-{job % 9}"},
            "received_at": (started + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        data = json.dumps(run, ensure_ascii=False, indent=2) + "\n"
        (directory / file_name_for(run["run_id"])).write_text(data, encoding="utf-8")


def timed(call: Callable[[], object], repeat: int) -> list[float]:
    """Return the wall time of each of repeat calls, in milliseconds."""
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    return times


def summary(times: list[float]) -> str:
    """Median and 95th percentile of times, in milliseconds."""
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {statistics.median(ordered):7.2f} ms   p95 {p95:7.2f} ms   n={len(ordered)}"


def get(client, url: str) -> Callable[[], None]:
    """Return a call that GETs url and checks it answered 200."""

    def call() -> None:
        response = client.get(url)
        if response.status_code != 200:
            raise SystemExit(f"GET {url} answered {response.status_code}")
        response.close()

    return call


def main(argv: list[str] | None = None) -> int:
    """Build the store, time the pages, and exit 1 if the warm overview's p95 misses 100 ms."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-ui-") as folder:
        store_dir = Path(folder) / "store"
        store_dir.mkdir()
        began = time.perf_counter()
        write_store(store_dir, args.runs, args.jobs)
        print(
            f"wrote {args.runs:,} runs across {args.jobs} jobs"
            f" in {time.perf_counter() - began:.1f} s"
        )

        began = time.perf_counter()
        app = create_app({"STORE_DIR": str(store_dir), "API_TOKENS": "", "AUTH_USER": ""})
        print(f"app and index ready in {time.perf_counter() - began:.1f} s")
        store = app.extensions["store"]
        try:
            client = app.test_client()
            (cold,) = timed(get(client, "/"), 1)
            print(f"GET /  cold (builds the per-job cache):   {cold:7.2f} ms")
            overview = timed(get(client, "/"), args.repeat)
            print(f"GET /  warm:                               {summary(overview)}")

            # One job changes before each request, as when a run arrives between two loads.
            job_runs = store.job_runs(("job-007", "host-7"))
            template = store.get(job_runs[0].run_id)
            changed = []
            for number in range(args.repeat // 4):
                store.save({**template, "run_id": f"bench-new-{number}"})
                changed += timed(get(client, "/"), 1)
            print(f"GET /  after one job changed:              {summary(changed)}")

            filtered = timed(get(client, "/?job=job-0&status=failure,partial&sort=size"), 100)
            print(f"GET /  filtered and sorted:                {summary(filtered)}")
            history_url = "/job?job_name=job-007&agent_id=host-7"
            history = timed(get(client, history_url), 50)
            print(f"GET /job (history of {len(job_runs):,} runs):         {summary(history)}")
            run_url = f"/run/{job_runs[0].run_id}"
            run_page = timed(get(client, run_url), 100)
            print(f"GET /run/<id>:                             {summary(run_page)}")
        finally:
            store.close()

    p95 = sorted(overview)[round(0.95 * (len(overview) - 1))]
    verdict = p95 <= TARGET_MS
    print(f"warm overview p95 {'meets' if verdict else 'MISSES'} the {TARGET_MS:.0f} ms target")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
