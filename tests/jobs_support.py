"""Shared by the jobs tests: a hand-set clock, the app on it, and runs placed in time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from conftest import make_run

from store import format_timestamp

T0 = datetime(2026, 5, 1, 2, 0, tzinfo=UTC)
DAY = 86_400
HOUR = 3_600
JOB = ("postgres-daily", "db-01")


class Clock:
    """A clock the test sets by hand; the app calls it for 'now'."""

    def __init__(self, moment: datetime):
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment


@pytest.fixture
def clock() -> Clock:
    """The app's clock, starting at T0."""
    return Clock(T0)


@pytest.fixture
def app_config(app_config: dict, clock: Clock) -> dict:
    """The test app, on the hand-set clock; its store sees outside edits only on a rescan."""
    return {**app_config, "CLOCK": clock, "WATCH_STORE": "0"}


def run_at(
    offset: float,
    *,
    duration: float = 300,
    job: tuple[str, str] = JOB,
    run_id: str | None = None,
    received: datetime | None = None,
    **fields,
) -> dict:
    """A stored run that starts offset seconds after T0."""
    start = T0 + timedelta(seconds=offset)
    return make_run(
        run_id or f"{job[0]}@{job[1]}@{offset}",
        job_name=job[0],
        agent_id=job[1],
        start_time=format_timestamp(start),
        end_time=format_timestamp(start + timedelta(seconds=duration)),
        received_at=format_timestamp(received or start + timedelta(seconds=duration)),
        **fields,
    )


def daily(count: int, **fields) -> list[dict]:
    """count runs, one a day at T0's time of day."""
    return [run_at(day * DAY, **fields) for day in range(count)]


def save(app, *runs: dict) -> None:
    """Store runs as a backup script's POST would."""
    for run in runs:
        app.extensions["store"].save(run)
