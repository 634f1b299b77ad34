"""The shipped Prometheus files (docs/prometheus/) with Prometheus' own tools, and a real
Prometheus server scraping a real edge and a real ``ondevice serve`` through them.

- ``promtool check rules`` / ``check config`` accept the alert rules and the scrape config;
- ``promtool test rules`` with the shipped unit tests (``coinfer-alerts_test.yml``): each
  alert fires on the series that should fire it, and not on those that should not;
- a Prometheus started here on 127.0.0.1 with the shipped scrape config (targets, token files
  and interval replaced) scrapes the edge and the serve with their bearer tokens, and its
  HTTP query API returns the number of tokens the test generated.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from _edge import EdgeProc, edge_server
from _listening import free_port
from _prometheus import Samples, get, scrape, tool
from _serve import post_completion, serve
from _waiting import wait_until_sync

DOCS = Path(__file__).resolve().parents[1] / "docs" / "prometheus"
CONFIG = DOCS / "prometheus.yml"
ALERTS = DOCS / "coinfer-alerts.yml"
ALERT_TESTS = DOCS / "coinfer-alerts_test.yml"
EDGE_TOKEN = "edge-scrape-token"
DEVICE_KEY = "device-scrape-key"
STARTUP_S = 60.0  # Prometheus' start (a fresh TSDB: about a second)
SCRAPED_S = 60.0  # until the scrapes after the generation show up in queries


def _promtool(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run([tool("promtool"), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _local_config(tmp_path: Path, edge_port: int, device_port: int) -> Path:
    """The shipped scrape config and rules in ``tmp_path``, its targets, token files and
    intervals replaced by this test's (each replacement must match: a changed doc fails
    here rather than going untested)."""
    text = CONFIG.read_text()
    for old, new in (
        ("/etc/prometheus/", f"{tmp_path}/"),
        ('["edge1.lan:8470", "edge2.lan:8470"]', f'["127.0.0.1:{edge_port}"]'),
        ('["pi5.lan:8080"]', f'["127.0.0.1:{device_port}"]'),
        ("scrape_interval: 15s", "scrape_interval: 1s"),
        ("evaluation_interval: 15s", "evaluation_interval: 1s"),
    ):
        assert old in text, f"{CONFIG} no longer holds {old!r}"
        text = text.replace(old, new)
    (tmp_path / "coinfer-edge.token").write_text(EDGE_TOKEN + "\n")
    (tmp_path / "coinfer-device.token").write_text(DEVICE_KEY + "\n")
    (tmp_path / ALERTS.name).write_text(ALERTS.read_text())
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    return path


def test_rules_and_config_check() -> None:
    assert "SUCCESS: 5 rules found" in _promtool("check", "rules", str(ALERTS))


def test_shipped_config_checks(tmp_path: Path) -> None:
    _promtool("check", "config", str(_local_config(tmp_path, 8470, 8080)))




def test_alerts_fire_where_they_should() -> None:
    _promtool("test", "rules", str(ALERT_TESTS))


def _documented() -> dict[str, tuple[str, set[str]]]:
    """docs/operations.md's metric tables: {name: (type, labels)}."""
    out: dict[str, tuple[str, set[str]]] = {}
    for line in (DOCS.parent / "operations.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`coinfer_"):
            out[cells[0].strip("`")] = (cells[1], {x.strip() for x in cells[2].split(",")
                                                   if x.strip()})
    return out


def test_the_docs_name_every_metric_as_served() -> None:
    from prometheus_client.metrics import MetricWrapperBase

    from edge_server._metrics import EdgeMetrics
    from ondevice.serve._metrics import ServeMetrics

    served: dict[str, tuple[str, set[str]]] = {}
    for metrics in (EdgeMetrics(), ServeMetrics()):
        for m in vars(metrics).values():
            if isinstance(m, MetricWrapperBase):
                name = m._name + ("_total" if m._type == "counter" else "")
                served[name] = (m._type, set(m._labelnames))
    assert len(served) == 40  # 20 of the edge, 20 of the device
    assert _documented() == served


@contextlib.contextmanager
def _prometheus(config: Path, data: Path) -> Iterator[str]:
    """A Prometheus on 127.0.0.1 (a free port) with ``config``; yields its URL once ready."""
    port = free_port()
    log = (data.parent / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={data}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    def ready() -> bool:
        assert proc.poll() is None, (data.parent / "prometheus.log").read_text()
        with contextlib.suppress(OSError):
            return get(url + "/-/ready")[0] == 200
        return False

    try:
        wait_until_sync(ready, STARTUP_S, "Prometheus to get ready", poll_s=0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _query(url: str, expr: str) -> list[dict]:
    status, body = get(f"{url}/api/v1/query?query={urllib.parse.quote(expr)}")
    assert status == 200, body
    reply = json.loads(body)
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


def _wait_for(url: str, expr: str, want: float, log: Path) -> None:
    """Query ``expr`` until it is ``want`` (one series: a scrape took the new value), or fail
    after SCRAPED_S with the last answer and Prometheus' log."""
    last: list[dict] = []

    def scraped() -> bool:
        last[:] = _query(url, expr)
        return len(last) == 1 and float(last[0]["value"][1]) == want

    try:
        wait_until_sync(scraped, SCRAPED_S, f"{expr} == {want}", poll_s=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {expr} is {last}; Prometheus log: {log.read_text()}"
                             ) from None


@pytest.mark.slow
def test_a_real_prometheus_scrapes_the_tokens(fixture_models: tuple[Path, Path],
                                              tmp_path: Path) -> None:
    tool("prometheus")
    edge_token = tmp_path / "edge.token"
    edge_token.write_text(EDGE_TOKEN)
    device_key = tmp_path / "device.key"
    device_key.write_text(DEVICE_KEY)
    with edge_server(fixture_models[0], "--token-file", str(edge_token),
                     "--n-ctx", "512") as edge, \
            serve(fixture_models[1], "--n-ctx", "512", "--threads", "1", "--api-key-file",
                  str(device_key), "--token-file", str(edge_token), "--allow-plaintext-token",
                  edge=edge.url) as device:
        config = _local_config(tmp_path, _port(edge), _port(device))
        with _prometheus(config, tmp_path / "data") as prom:
            _wait_for(prom, 'sum(up{job=~"coinfer-edge|coinfer-device"})', 2,
                      tmp_path / "prometheus.log")
            n = 0
            for seed, max_tokens in ((1, 12), (2, 7)):
                status, body = _complete(device.url, max_tokens, seed)
                assert status == 200, body
                n += json.loads(body)["usage"]["completion_tokens"]
            assert n > 0
            _wait_for(prom, 'sum(coinfer_device_tokens_total{job="coinfer-device"})', n,
                      tmp_path / "prometheus.log")
            _wait_for(prom, 'sum(coinfer_device_requests_total{status="200"})', 2,
                      tmp_path / "prometheus.log")
            # the edge's own count of its decode steps, as Prometheus scraped it
            steps = Samples(scrape(edge.url, EDGE_TOKEN)).value("coinfer_edge_decode_steps_total")
            assert steps > 0
            _wait_for(prom, 'coinfer_edge_decode_steps_total{job="coinfer-edge"}', steps,
                      tmp_path / "prometheus.log")
            status, body = get(prom + "/api/v1/rules")
            names = {r["name"] for g in json.loads(body)["data"]["groups"] for r in g["rules"]}
            assert "CoinferEdgeDown" in names and "CoinferDeviceEnergyBudgetOver" in names


def _port(proc: EdgeProc | object) -> int:
    port = urllib.parse.urlsplit(proc.url).port  # type: ignore[attr-defined]
    assert port is not None
    return port


def _complete(url: str, max_tokens: int, seed: int) -> tuple[int, str]:
    status, raw = post_completion(url, {"model": "draft", "prompt": "Hello world",
                                        "max_tokens": max_tokens, "temperature": 0,
                                        "seed": seed}, key=DEVICE_KEY)
    return status, raw.decode()
