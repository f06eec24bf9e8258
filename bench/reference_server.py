"""The least a Flask app under waitress can do per durable POST: the atomic write, nothing else.

bench.py sets the registry's POST throughput against this app in the same rounds, to tell what
the registry's own work costs from what the stack (one CPython process, its GIL, waitress's
threads) and the disk cost. It writes each body the way the store does (temp file, write,
fsync, rename, grouped folder fsync), under names the registry ignores, and checks nothing.

    PORT=8099 python bench/reference_server.py FOLDER THREADS
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from pathlib import Path

from flask import Flask, Response, request
from waitress import serve

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from store import _DirectorySyncer  # the store's own group commit, not a copy


def create_reference_app(folder: Path) -> Flask:
    """Return an app whose POST route only writes the body durably and echoes it."""
    app = Flask(__name__)
    syncer = _DirectorySyncer(folder)
    numbers = itertools.count()

    @app.get("/")
    def ready() -> Response:
        return Response("ready\n")

    @app.post("/v1/backup-runs")
    def write_body() -> Response:
        body = request.get_data()
        number = next(numbers)
        # The pid keeps apart the temp files a stopped server left mid-write from this one's.
        temp = os.path.join(folder, f".tmp-reference-{os.getpid()}-{number}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, os.path.join(folder, f"reference-{number}.json.reference"))
        syncer.sync()
        return Response(body, status=201, mimetype="application/json")

    return app


def main() -> int:
    """Serve the reference app on loopback, on the port PORT names (as app.py), until stopped."""
    folder, threads, port = Path(sys.argv[1]), int(sys.argv[2]), int(os.environ["PORT"])
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    serve(create_reference_app(folder), host="127.0.0.1", port=port, threads=threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
