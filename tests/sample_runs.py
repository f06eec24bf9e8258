"""Realistic sample runs for the dashboard's browser tests and README screenshots."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

GIB = 1024**3
MIB = 1024**2


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def sample_runs(now: datetime, days: int = 14) -> list[dict]:
    """Return two weeks of runs of a small home lab: one job failed, one partial, one
    unencrypted, one shrunk; the rest healthy. Deterministic for a given now."""
    rng = random.Random(7)
    runs: list[dict] = []
    if now.hour < 6:
        # Day 0's failed and partial runs start between 01:30 and 05:00: before 06:00 some
        # have not happened yet (the browser test ran at 00:15 and found no failed run), so
        # the two weeks end the evening before.
        now = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(minutes=1)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)

    def add(job, agent, start, seconds, status="success", size=None, **extra):
        run = {
            "run_id": f"{job}-{start:%Y%m%dT%H%M}",
            "job_name": job,
            "agent_id": agent,
            "start_time": _stamp(start),
            "end_time": _stamp(start + timedelta(seconds=seconds)),
            "status": status,
            "bytes_backed_up": size,
            "encrypted": extra.pop("encrypted", True),
        }
        run.update(extra)
        runs.append({key: value for key, value in run.items() if value is not None})

    for day in range(days, -1, -1):
        base = midnight - timedelta(days=day)
        growth = 1 + (days - day) * 0.004
        if base + timedelta(hours=2) < now:
            add(
                "postgres-daily",
                "db-01",
                base + timedelta(hours=2, seconds=rng.randint(0, 40)),
                rng.randint(250, 300),
                size=int(1.18 * GIB * growth),
                encryption_status="encrypted",
                backup_url="https://minio.lan/backups/postgres/",
                metadata={"tool": "pg_dump", "compression": "zstd", "databases": 6},
            )
        start = base + timedelta(hours=1, minutes=30)
        if start < now:
            if day == 0:
                add(
                    "nextcloud-data",
                    "files-01",
                    start,
                    62,
                    status="failure",
                    size=0,
                    error=(
                        "restic: Fatal: unable to open repository at "
                        "sftp:backup@nas.lan:/srv/restic/nextcloud: ssh: connect to host "
                        "nas.lan port 22: Connection timed out\nexit status 1"
                    ),
                    metadata={"tool": "restic", "snapshot": None},
                )
            else:
                add(
                    "nextcloud-data",
                    "files-01",
                    start,
                    rng.randint(1500, 1900),
                    size=int(86 * GIB * growth + rng.randint(0, 400) * MIB),
                    metadata={"tool": "restic"},
                )
        start = base + timedelta(hours=3)
        if start < now:
            partial = day in (0, 6)
            add(
                "photos-offsite",
                "nas-01",
                start,
                rng.randint(2700, 3300),
                status="partial" if partial else "success",
                size=int(412 * GIB * growth),
                error=(
                    "3 files could not be read: /srv/photos/2025/IMG_2211.CR3: permission "
                    "denied (and 2 more)"
                    if partial
                    else None
                ),
                metadata={"tool": "rclone", "remote": "b2:photos-offsite"},
            )
        start = base + timedelta(hours=4, minutes=15)
        if start < now:
            shrunk = day == 0
            add(
                "gitea-dump",
                "git-01",
                start,
                rng.randint(95, 130) if not shrunk else 21,
                size=int(212 * MIB if shrunk else 1.94 * GIB * growth),
                metadata={"tool": "gitea dump", "repositories": 41 if not shrunk else 3},
            )
        start = base + timedelta(hours=5)
        if start < now:
            add(
                "home-dirs",
                "ws-07",
                start,
                rng.randint(600, 800),
                size=int(23.5 * GIB * growth),
                encrypted=day > 2,
                encryption_status="unencrypted" if day <= 2 else "encrypted",
                metadata={"tool": "borg", "note": "repokey removed during migration"},
            )
        for hour in (0, 6, 12, 18):
            start = base + timedelta(hours=hour, minutes=5)
            if start < now and day <= 4:
                add(
                    "etc-configs",
                    "router-01",
                    start,
                    rng.randint(3, 9),
                    size=int(3.2 * MIB) + rng.randint(0, 20000),
                )
    # A weekly job whose latest run is old.
    for week in (3, 2, 1):
        start = midnight - timedelta(days=7 * week + 5, hours=-1)
        add("vm-images", "hv-01", start, 4800 + week * 60, size=int(48.6 * GIB))
    return runs
