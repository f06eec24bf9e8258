"""Start `app.main()` in a fresh forked child per line read, so restarts skip Python's imports.

The crash test restarts the server dozens of times; importing Flask and friends costs about a
second each time, forking a process that has them loaded costs milliseconds. Each child runs
the real entry point under waitress with the environment this process got. Protocol: read a
line, fork, print the child's pid. Children are reaped automatically (SIGCHLD ignored), so a
child killed with SIGKILL vanishes and `kill(pid, 0)` tells when it is gone.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import app

signal.signal(signal.SIGCHLD, signal.SIG_IGN)
for _line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os._exit(app.main([]))
    print(pid, flush=True)
