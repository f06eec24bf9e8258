"""GET /metrics: Prometheus gauges per job, read back with prometheus_client's own parser."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from jobs_support import DAY, JOB, T0, app_config, clock, daily, run_at, save
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "scrape-token-4b1d"
# The app_config and clock fixtures come from jobs_support; naming them here registers them.
__all__ = ["app_config", "clock"]
OLD_GAUGES = (
    "backup_last_run_timestamp_seconds",
    "backup_last_run_success",
    "backup_last_run_duration_seconds",
    "backup_last_run_bytes",
)
OUR_GAUGES = (
    "backup_last_success_timestamp_seconds",
    "backup_job_late",
    "backup_job_expected_interval_seconds",
    "backup_job_flag",
    "backup_job_muted",
)


def scrape(text: str) -> dict[str, dict[tuple, float]]:
    """Parse exposition text into {metric: {sorted label items: value}}, checking types."""
    metrics: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", family.name
        for sample in family.samples:
            metrics.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return metrics


def labels(job: tuple[str, str] = JOB, **extra: str) -> tuple:
    """The label items of one job's sample."""
    return tuple(sorted({"job_name": job[0], "agent_id": job[1], **extra}.items()))


def get_metrics(client) -> dict[str, dict[tuple, float]]:
    """Scrape the app's /metrics."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type == "text/plain; version=0.0.4; charset=utf-8"
    return scrape(response.get_data(as_text=True))


def test_every_gauge_for_a_job(app, client, clock):
    save(app, *daily(4, bytes_backed_up=1000, duration=200, encrypted=True))
    latest = run_at(4 * DAY, status="partial", bytes_backed_up=100, duration=300)
    save(app, latest)
    clock.moment = T0 + timedelta(days=6)  # next expected day 5, grace until day 5.5
    metrics = get_metrics(client)
    assert set(metrics) == {*OLD_GAUGES, *OUR_GAUGES}
    one = labels()
    end = (T0 + timedelta(days=4, seconds=300)).timestamp()
    assert metrics["backup_last_run_timestamp_seconds"] == {one: end}
    assert metrics["backup_last_run_success"] == {one: 0.5}
    assert metrics["backup_last_run_duration_seconds"] == {one: 300}
    assert metrics["backup_last_run_bytes"] == {one: 100}
    assert metrics["backup_last_success_timestamp_seconds"] == {
        one: (T0 + timedelta(days=3, seconds=200)).timestamp()
    }
    assert metrics["backup_job_late"] == {one: 1}
    assert metrics["backup_job_expected_interval_seconds"] == {one: DAY}
    assert metrics["backup_job_flag"] == {
        labels(flag="size_drop"): 1,
        labels(flag="duration_anomaly"): 0,
        labels(flag="unencrypted"): 0,
    }
    assert metrics["backup_job_muted"] == {one: 0}


@pytest.mark.parametrize(("status", "value"), [("success", 1), ("partial", 0.5), ("failure", 0)])
def test_last_run_success_values(app, client, status, value):
    save(app, run_at(0, status=status))
    assert get_metrics(client)["backup_last_run_success"] == {labels(): value}


def test_unknown_values_are_left_out_not_faked(app, client):
    save(app, run_at(0, status="failure"))  # no size, never succeeded, too few runs
    metrics = get_metrics(client)
    for name in (
        "backup_last_run_bytes",
        "backup_last_success_timestamp_seconds",
        "backup_job_expected_interval_seconds",
    ):
        assert name not in metrics
    assert metrics["backup_job_late"] == {labels(): 0}


def test_duration_is_the_reported_one_when_the_end_is_ahead_of_the_report(app, client):
    """Pins the duration gauge to end_time - start_time, not cut at the report's arrival."""
    save(app, run_at(0, duration=300, received=T0 + timedelta(seconds=100)))
    metrics = get_metrics(client)
    assert metrics["backup_last_run_duration_seconds"] == {labels(): 300}
    assert metrics["backup_last_run_timestamp_seconds"] == {labels(): T0.timestamp() + 100}


def test_each_scrape_gets_the_format_it_asked_for_from_the_cache(app, client):
    """Pins the content type in the cache key: plain text again after an OpenMetrics scrape."""
    save(app, run_at(0))
    openmetrics = {"Accept": "application/openmetrics-text"}
    first = client.get("/metrics").get_data(as_text=True)
    second = client.get("/metrics", headers=openmetrics).get_data(as_text=True)
    third = client.get("/metrics").get_data(as_text=True)
    assert not first.endswith("# EOF\n")
    assert second.endswith("# EOF\n")
    assert third == first


def test_late_follows_the_clock(app, client, clock):
    save(app, *daily(3))
    clock.moment = T0 + timedelta(days=3, hours=12)
    assert get_metrics(client)["backup_job_late"] == {labels(): 0}
    clock.moment += timedelta(seconds=1)
    assert get_metrics(client)["backup_job_late"] == {labels(): 1}


@pytest.mark.parametrize(
    "name",
    [
        'say "hi"',
        "C:\\backups\\daily",
        "two\nlines",
        '\\"\n\\n',
        "ünïcödé ☃",
        'braces {job_name="x"} 1',
    ],
)
def test_label_values_come_back_exactly(app, client, name):
    # The API refuses control characters, but a run file copied in may hold any name.
    save(app, run_at(0, job=(name, f"agent {name}"), bytes_backed_up=7))
    metrics = get_metrics(client)
    assert metrics["backup_last_run_bytes"] == {labels((name, f"agent {name}")): 7}


def test_one_sample_per_job_and_flag(app, client):
    save(app, *[run_at(0, job=(f"job-{i}", "a")) for i in range(5)])
    metrics = get_metrics(client)
    assert len(metrics["backup_last_run_success"]) == 5
    assert len(metrics["backup_job_flag"]) == 15


def test_openmetrics_when_asked(app, client):
    save(app, run_at(0))
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert response.get_data(as_text=True).endswith("# EOF\n")


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text; version=abc",
        "application/openmetrics-text; version=1.x",
        'text/plain; version="1.0.0"',  # HTTP allows a quoted value
    ],
)
def test_a_malformed_accept_gets_the_plain_text_format(app, client, accept):
    save(app, run_at(0))
    response = client.get("/metrics", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.content_type == "text/plain; version=0.0.4; charset=utf-8"
    metrics = scrape(response.get_data(as_text=True))
    assert metrics["backup_last_run_success"] == {labels(): 1.0}


def test_an_empty_registry_has_no_samples(client):
    assert get_metrics(client) == {}


# --- auth ------------------------------------------------------------------------------------


@pytest.fixture
def guarded(app_config: dict) -> dict:
    """The app with one API token."""
    app_config["API_TOKENS"] = TOKEN
    return app_config


@pytest.mark.usefixtures("guarded")
@pytest.mark.parametrize("path", ["/metrics", "/v1/jobs"])
def test_no_token_from_another_host_is_401(client, path):
    response = client.get(path, environ_base={"REMOTE_ADDR": "10.0.0.5"})
    assert response.status_code == 401
    assert list(response.get_json()) == ["error"]


@pytest.mark.usefixtures("guarded")
@pytest.mark.parametrize("path", ["/metrics", "/v1/jobs"])
def test_a_bearer_token_from_another_host_is_let_in(client, path):
    response = client.get(
        path,
        environ_base={"REMOTE_ADDR": "10.0.0.5"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 200


def test_prometheus_scrapes_the_real_server_with_a_bearer_token(live_server_factory):
    server = live_server_factory({"API_TOKENS": TOKEN, "LOCALHOST_BYPASS": "0"})
    run = run_at(0, bytes_backed_up=42)
    del run["received_at"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    posted = requests.post(server.url + "/v1/backup-runs", json=run, headers=auth, timeout=10)
    assert posted.status_code == 201
    assert requests.get(server.url + "/metrics", timeout=10).status_code == 401
    # What Prometheus sends with `authorization: {credentials: ...}` in its scrape config.
    scraped = requests.get(
        server.url + "/metrics",
        headers={**auth, "Accept": "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"},
        timeout=10,
    )
    assert scraped.status_code == 200
    assert scrape(scraped.text)["backup_last_run_bytes"] == {labels(): 42}


def test_a_new_run_shows_in_the_next_scrape(app, client):
    save(app, run_at(0, bytes_backed_up=1))
    assert get_metrics(client)["backup_last_run_bytes"] == {labels(): 1}
    save(app, run_at(DAY, bytes_backed_up=2), run_at(0, job=("other", "b"), bytes_backed_up=3))
    assert get_metrics(client)["backup_last_run_bytes"] == {labels(): 2, labels(("other", "b")): 3}
