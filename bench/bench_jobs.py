"""Benchmark GET /v1/jobs and GET /metrics against issue 5's target: warm, 50 ms or less.

Lays down a store of 100,000 runs across 500 jobs as plain files (as rsync would), builds the
app on it, and times through the Flask test client: the first call (every job computed), warm
calls (nothing changed), and calls right after one new run (one job recomputed).

    .venv/bin/python bench/bench_jobs.py [--runs 100000] [--jobs 500] [--repeat 50]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402 - after the path is set

TARGET_MS = 50.0
STAMP = "%Y-%m-%dT%H:%M:%SZ"


def write_store(directory: Path, runs: int, jobs: int, seed: int = 5) -> datetime:
    """Write runs files round-robin over jobs, each job on its own schedule; return 'now'."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    first = datetime(2025, 1, 1, tzinfo=UTC)
    per_job = runs // jobs
    latest = first
    for number in range(runs):
        job = number % jobs
        interval = timedelta(hours=1 + job % 24)  # hourly to daily
        started = first + interval * (number // jobs) + timedelta(seconds=rng.randint(0, 120))
        latest = max(latest, started)
        run = {
            "run_id": f"jobs-bench-{number:07d}",
            "job_name": f"job-{job:03d}",
            "agent_id": f"host-{job % 40:02d}",
            "start_time": started.strftime(STAMP),
            "end_time": (started + timedelta(seconds=rng.randint(30, 900))).strftime(STAMP),
            "status": rng.choice(["success"] * 8 + ["failure", "partial"]),
            "bytes_backed_up": rng.randint(10**8, 10**10),
            "encrypted": rng.random() > 0.05,
            "error": None,
            "metadata": {"tool": "restic", "runs_per_job": per_job},
            "received_at": (started + timedelta(seconds=901)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        (directory / f"{run['run_id']}.json").write_text(json.dumps(run) + "\n")
    return latest + timedelta(hours=2)


def timed(client, path: str) -> tuple[float, int]:
    """Return (milliseconds, body bytes) of one GET, checking it answered 200."""
    began = time.perf_counter()
    response = client.get(path)
    elapsed = (time.perf_counter() - began) * 1000
    assert response.status_code == 200, response.get_data(as_text=True)[:200]
    return elapsed, len(response.get_data())


def summarise(label: str, samples: list[float]) -> str:
    """One line: median and p95 of samples, against the target."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    verdict = "ok" if p95 <= TARGET_MS else "OVER TARGET"
    return (
        f"{label:<34} median {statistics.median(ordered):7.2f} ms   p95 {p95:7.2f} ms   {verdict}"
    )


def main() -> int:
    """Build the store, time the endpoints, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as temp:
        store_dir = Path(temp) / "store"
        began = time.perf_counter()
        now = write_store(store_dir, args.runs, args.jobs)
        print(
            f"wrote {args.runs} runs across {args.jobs} jobs in {time.perf_counter() - began:.1f} s"
        )
        began = time.perf_counter()
        app = create_app({"STORE_DIR": str(store_dir), "WATCH_STORE": "0", "CLOCK": lambda: now})
        print(f"app over the store built in {time.perf_counter() - began:.1f} s")
        try:
            client = app.test_client()
            print(f"cpu: {os.cpu_count()} x {cpu_model()}")
            for path in ("/v1/jobs", "/metrics"):
                first, size = timed(client, path)
                print(f"{path:<10} first call (all jobs computed): {first:8.1f} ms, {size} bytes")
            for path in ("/v1/jobs", "/v1/jobs?state=late,failing", "/metrics"):
                samples = [timed(client, path)[0] for _ in range(args.repeat)]
                print(summarise(f"{path} warm", samples))
            store = app.extensions["store"]
            for path in ("/v1/jobs", "/metrics"):
                samples = []
                for number in range(args.repeat):
                    run = json.loads((store_dir / "jobs-bench-0000000.json").read_text())
                    run["run_id"] = f"jobs-bench-new-{path}-{number}"
                    run["start_time"] = (now - timedelta(minutes=5)).strftime(STAMP)
                    run["end_time"] = now.strftime(STAMP)
                    store.save(run)
                    samples.append(timed(client, path)[0])
                print(summarise(f"{path} after one new run", samples))
        finally:
            app.extensions["store"].close()
    return 0


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
