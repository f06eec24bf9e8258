"""Benchmark the real server under waitress against the index targets of the store.

Lays down a store of N runs from outside (plain files, as rsync would), starts `python app.py`
on it, and measures: cold start to the first listing, warm single GET against warm listings,
resident memory, and durable POST throughput against a bare loop of the same atomic write,
with bench/reference_server.py (Flask under waitress doing only that write) alongside to show
what the stack itself allows. Concurrent load comes from wrk when it is installed, else from
Python threads.

    .venv/bin/python bench/bench.py --sizes 10000,100000 --csv bench/results/latest.csv
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import py_compile
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOBS = 50
STATUSES = ["success"] * 8 + ["failure", "partial"]


# --- the store -------------------------------------------------------------------------------


def generate_store(directory: Path, runs: int, seed: int = 1) -> None:
    """Write `runs` run files straight into directory, one per run, as an rsync would."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for number in range(runs):
        job = number % JOBS
        started = start + timedelta(minutes=10 * (number // JOBS), seconds=job)
        run = {
            "run_id": f"run-{number:07d}",
            "job_name": f"job-{job:02d}",
            "agent_id": f"host-{job % 7}",
            "start_time": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end_time": (started + timedelta(seconds=rng.randint(30, 900))).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "status": rng.choice(STATUSES),
            "bytes_backed_up": rng.randint(10**8, 10**10),
            "encrypted": rng.random() > 0.05,
            "error": None,
            "metadata": {"tool": "restic", "snapshot": uuid.UUID(int=rng.getrandbits(128)).hex},
            "received_at": (started + timedelta(seconds=901)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        (directory / f"run-{number:07d}.json").write_text(json.dumps(run) + "\n")


# --- the server ------------------------------------------------------------------------------


def free_port() -> int:
    """Return a free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python app.py` on a store, with the time from process start to its first listing."""

    READY_PATH = "/v1/backup-runs?limit=100"

    def __init__(self, store: Path, threads: int):
        env = dict(os.environ, STORE_DIR=str(store), THREADS=str(threads))
        env.pop("API_TOKENS", None)
        self._start([sys.executable, str(ROOT / "app.py")], env)

    def _start(self, command: list[str], env: dict | None = None) -> None:
        """Run command with PORT set, and wait until READY_PATH answers 200."""
        self.port = free_port()
        env = dict(env or os.environ, PORT=str(self.port))
        started = time.perf_counter()
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while True:
            try:
                if request(self.port, "GET", self.READY_PATH)[0] == 200:
                    break
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{command[1]} exited during start") from None
                time.sleep(0.01)
        self.cold_start = time.perf_counter() - started

    def memory_mb(self) -> tuple[float, float]:
        """Return (resident, peak resident) memory in MB, from /proc."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
        peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
        return rss, peak

    def stop(self) -> None:
        """Stop the server."""
        self.process.terminate()
        self.process.wait(timeout=30)


class ReferenceServer(Server):
    """bench/reference_server.py: a Flask app under waitress that only does the atomic write."""

    READY_PATH = "/"

    def __init__(self, folder: Path, threads: int):
        script = str(ROOT / "bench" / "reference_server.py")
        self._start([sys.executable, script, str(folder), str(threads)])


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """Make one request on a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# --- load ------------------------------------------------------------------------------------


def latencies_python(port: int, paths: list[str], clients: int, seconds: float) -> list[float]:
    """Drive GETs over `clients` keep-alive connections; return each request's seconds."""
    results: list[float] = []
    deadline = time.perf_counter() + seconds
    lock = threading.Lock()

    def client(offset: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine, index = [], offset
        while time.perf_counter() < deadline:
            path = paths[index % len(paths)]
            index += clients
            began = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            mine.append(time.perf_counter() - began)
            if response.status != 200:
                raise RuntimeError(f"{path} answered {response.status}")
        connection.close()
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


WRK_GET = """
local paths = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%d\\n", latency:percentile(50),
    latency:percentile(95), summary.requests, summary.errors.status))
end
"""

# Each wrk thread gets its own id prefix from setup(): an unseeded math.random gave every
# thread, and every run of wrk, the same ids, so most "new" runs were overwrites.
WRK_POST = """
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("prefix", "bench-" .. os.time() .. "-" .. threads .. "-")
end
local counter = 0
request = function()
  counter = counter + 1
  local body = '{"run_id":"' .. prefix .. counter .. '","job_name":"bench-post",' ..
    '"agent_id":"bench","start_time":"2026-05-12T02:00:00Z",' ..
    '"end_time":"2026-05-12T02:04:33Z","status":"success","bytes_backed_up":1073741824}'
  return wrk.format("POST", "/v1/backup-runs", {["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d\\n", latency:percentile(50),
    latency:percentile(95), summary.requests, summary.errors.status))
end
"""


def run_wrk(port: int, script: str, clients: int, seconds: float) -> dict:
    """Run wrk with a Lua script; return p50 and p95 in ms, and requests per second."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        output = subprocess.run(
            [
                "wrk",
                f"-t{min(2, clients)}",
                f"-c{clients}",
                f"-d{round(seconds)}s",
                "-s",
                handle.name,
                f"http://127.0.0.1:{port}/",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(handle.name)
    p50, p95, count, errors = map(
        int, re.search(r"RESULT (\d+) (\d+) (\d+) (\d+)", output).groups()
    )
    if errors:
        raise RuntimeError(f"wrk saw {errors} non-2xx answers")
    return {"p50_ms": p50 / 1000, "p95_ms": p95 / 1000, "rps": count / seconds}


def measure_gets(port: int, paths: list[str], use_wrk: bool, seconds: float) -> dict:
    """Latency of GETs over `paths` with 2 concurrent clients: p50, p95 (ms) and rps."""
    if use_wrk:
        listed = ", ".join(json.dumps(path) for path in paths)
        return run_wrk(port, WRK_GET % listed, 2, seconds)
    samples = sorted(latencies_python(port, paths, 2, seconds))
    return {
        "p50_ms": statistics.median(samples) * 1000,
        "p95_ms": samples[int(len(samples) * 0.95)] * 1000,
        "rps": len(samples) / seconds,
    }


def post_throughput(port: int, use_wrk: bool, clients: int, seconds: float) -> float:
    """Durable POSTs per second from `clients` concurrent clients."""
    if use_wrk:
        return run_wrk(port, WRK_POST, clients, seconds)["rps"]
    done = [0] * clients
    deadline = time.perf_counter() + seconds

    def client(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.perf_counter() < deadline:
            body = json.dumps(
                {
                    "run_id": f"bench-{number}-{uuid.uuid4().hex}",
                    "job_name": "bench-post",
                    "agent_id": "bench",
                    "start_time": "2026-05-12T02:00:00Z",
                    "end_time": "2026-05-12T02:04:33Z",
                    "status": "success",
                }
            )
            connection.request("POST", "/v1/backup-runs", body=body)
            response = connection.getresponse()
            response.read()
            if response.status != 201:
                raise RuntimeError(f"POST answered {response.status}")
            done[number] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / seconds


def bare_write_loop(directory: Path, seconds: float) -> float:
    """Atomic writes per second in a plain loop: temp file, write, fsync, rename, folder fsync."""
    payload = json.dumps({"run_id": "x", "job_name": "bench", "status": "success"}).encode() * 2
    count = 0
    deadline = time.perf_counter() + seconds
    folder = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while time.perf_counter() < deadline:
            temp = directory / f".tmp-bare-{count}.tmp"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, payload)
            os.fsync(fd)
            os.close(fd)
            os.replace(temp, directory / f"bare-loop-{count % 1000}.json.bare")
            os.fsync(folder)
            count += 1
    finally:
        os.close(folder)
        for leftover in directory.glob("bare-loop-*.json.bare"):
            leftover.unlink()
    return count / seconds


def settle_page_cache(store: Path, drop: bool) -> None:
    """Put the store's files in the page cache, as a fresh copy leaves them, or drop them all."""
    if drop:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")  # needs root
        return
    with os.scandir(store) as entries:
        for entry in entries:
            with open(entry.path, "rb") as handle:
                handle.read()


# --- the report ------------------------------------------------------------------------------


def bench_size(size: int, workdir: Path, args: argparse.Namespace, use_wrk: bool) -> list[dict]:
    """Measure every target for a store of `size` runs; return one row per measure."""
    store = workdir / f"store-{size}"
    if not store.exists() or sum(1 for _ in store.glob("run-*.json")) != size:
        shutil.rmtree(store, ignore_errors=True)
        began = time.perf_counter()
        generate_store(store, size)
        print(f"  laid down {size} runs in {time.perf_counter() - began:.1f} s", flush=True)
    # A first start sees the store as rsync left it, with no index snapshot beside it: its
    # files in the page cache, as just after the copy, or with --drop-caches read from disk,
    # as after a reboot. The restarts after it use the snapshot the previous stop saved.
    snapshot = store.parent / f".{store.name}.index-snapshot"
    first_starts = []
    for _ in range(1 if args.keep_snapshot else args.cold_repeats):
        if not args.keep_snapshot:
            snapshot.unlink(missing_ok=True)
        settle_page_cache(store, args.drop_caches)
        server = Server(store, args.threads)
        first_starts.append(server.cold_start)
        server.stop()
    restarts = []
    for _ in range(args.cold_repeats):
        server = Server(store, args.threads)
        restarts.append(server.cold_start)
        server.stop()
    server = Server(store, args.threads)
    rows = [
        {
            "size": size,
            "measure": "first start, no snapshot, to first list (s)"
            + (", page cache dropped" if args.drop_caches else ""),
            "value": statistics.median(first_starts),
        },
        {
            "size": size,
            "measure": "restart with snapshot, to first list (s)",
            "value": statistics.median(restarts),
        },
    ]
    try:
        rng = random.Random(2)
        ids = [f"/v1/backup-runs/run-{rng.randrange(size):07d}" for _ in range(200)]
        probes = {
            "single GET": ids,
            "list limit=100": ["/v1/backup-runs?limit=100"],
            "list status=failure": ["/v1/backup-runs?status=failure&limit=100"],
            "list job_name+status": ["/v1/backup-runs?job_name=job-07&status=success&limit=100"],
        }
        for paths in probes.values():  # warm every path once before measuring
            for path in paths[:20]:
                request(server.port, "GET", path)
        # Rounds, each measuring every probe once, so that each ratio compares latencies taken
        # within seconds of each other; the CPU this VM gets drifts over minutes.
        rounds = [
            {
                name: measure_gets(server.port, paths, use_wrk, args.seconds)
                for name, paths in probes.items()
            }
            for _ in range(args.get_rounds)
        ]
        for name in probes:
            for figure in ("p50_ms", "p95_ms"):
                rows.append(
                    {
                        "size": size,
                        "measure": f"{name} {figure[:3]} (ms)",
                        "value": statistics.median(r[name][figure] for r in rounds),
                    }
                )
            if name != "single GET":
                ratios = [r[name]["p50_ms"] / r["single GET"]["p50_ms"] for r in rounds]
                rows.append(
                    {
                        "size": size,
                        "measure": f"{name} / single GET (median p50 ratio of rounds)",
                        "value": statistics.median(ratios),
                    }
                )
        rss, peak = server.memory_mb()
        rows.append({"size": size, "measure": "resident memory (MB)", "value": rss})
        rows.append({"size": size, "measure": "peak resident memory (MB)", "value": peak})
        if args.post_seconds > 0:
            # The disk's fsync latency drifts by 2x over minutes on a shared VM, so the three
            # are measured in alternating rounds and each POST figure is set against the bare
            # loop measured just before it. The reference app shows what Flask and waitress
            # cost on their own for the same write; see bench/reference_server.py.
            bares, posts, references = [], [], []
            reference = ReferenceServer(store, args.threads)
            try:
                for _ in range(args.post_rounds):
                    bares.append(bare_write_loop(store, args.post_seconds))
                    posts.append(post_throughput(server.port, use_wrk, 16, args.post_seconds))
                    references.append(
                        post_throughput(reference.port, use_wrk, 16, args.post_seconds)
                    )
            finally:
                reference.stop()
            ratios = [post / bare for post, bare in zip(posts, bares, strict=True)]
            reference_ratios = [ref / bare for ref, bare in zip(references, bares, strict=True)]
            rows += [
                {
                    "size": size,
                    "measure": "bare atomic-write loop (writes/s)",
                    "value": statistics.median(bares),
                },
                {
                    "size": size,
                    "measure": "durable POST, 16 clients (runs/s)",
                    "value": statistics.median(posts),
                },
                {
                    "size": size,
                    "measure": "POST / bare loop (median ratio of rounds)",
                    "value": statistics.median(ratios),
                },
                {
                    "size": size,
                    "measure": "reference app, same write, 16 clients (runs/s)",
                    "value": statistics.median(references),
                },
                {
                    "size": size,
                    "measure": "reference app / bare loop (median ratio of rounds)",
                    "value": statistics.median(reference_ratios),
                },
            ]
    finally:
        server.stop()
        for pattern in ("bench-*.json", "reference-*.json.reference", ".tmp-reference-*"):
            for posted in store.glob(pattern):
                posted.unlink()
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Draw p50 latency of each GET kind against store size into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    kinds = sorted({row["measure"] for row in rows if row["measure"].endswith("p50 (ms)")})
    for kind in kinds:
        points = sorted((row["size"], row["value"]) for row in rows if row["measure"] == kind)
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=kind[:-9])
    axes.set_xscale("log")
    axes.set_xlabel("runs in the store")
    axes.set_ylabel("p50 latency (ms)")
    axes.set_title("Backup Registry: latency against store size")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> int:
    """Run the benchmark and print a table of results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100000", help="comma-separated store sizes")
    parser.add_argument(
        "--workdir", default=None, help="where stores are laid down (kept for reuse)"
    )
    parser.add_argument("--seconds", type=float, default=3, help="duration of each GET measure")
    parser.add_argument("--get-rounds", type=int, default=3, help="rounds of the GET measures")
    parser.add_argument(
        "--post-seconds", type=float, default=5, help="length of each POST round; 0 skips them"
    )
    parser.add_argument("--post-rounds", type=int, default=3, help="bare-loop/POST round pairs")
    parser.add_argument(
        "--cold-repeats", type=int, default=3, help="first starts and restarts per size (median)"
    )
    parser.add_argument(
        "--drop-caches",
        action="store_true",
        help="drop the page cache before each first start (root only), as after a reboot",
    )
    parser.add_argument("--threads", type=int, default=8, help="waitress threads")
    parser.add_argument(
        "--keep-snapshot",
        action="store_true",
        help="let the first start use an index snapshot left by an earlier run",
    )
    parser.add_argument("--python-client", action="store_true", help="do not use wrk")
    parser.add_argument("--csv", type=Path, help="write the rows to this CSV file")
    parser.add_argument("--plot", type=Path, help="write a PNG of latency against store size")
    args = parser.parse_args()
    use_wrk = not args.python_client and shutil.which("wrk") is not None
    workdir = Path(args.workdir or tempfile.gettempdir()) / "backup-registry-bench"
    print(
        f"client: {'wrk' if use_wrk else 'python threads'}; cpus: {os.cpu_count()}; {cpu_model()}"
    )
    # Start-up is measured as an installed server runs after its first start: with its
    # modules' bytecode cached. With PYTHONDONTWRITEBYTECODE set (as on some CI images) or
    # after an edit, every start would compile store.py and the rest again, about 0.1 s.
    for module in ROOT.glob("*.py"):
        py_compile.compile(str(module), doraise=True)
    rows = []
    for size in (int(part) for part in args.sizes.split(",")):
        print(f"store of {size} runs", flush=True)
        size_rows = bench_size(size, workdir, args, use_wrk)
        for row in size_rows:
            print(f"  {row['measure']:<62} {row['value']:>10.3f}")
        rows.extend(size_rows)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["size", "measure", "value"])
            writer.writeheader()
            writer.writerows(rows)
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(rows, args.plot)
    return 0


def cpu_model() -> str:
    """Return the CPU model name, for the README's note on where figures came from."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
