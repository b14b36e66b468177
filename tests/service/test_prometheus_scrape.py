"""A real Prometheus scrapes the real service; every dashboard and alert query must return data.

A panel or alert naming a metric the service does not export, or a query that yields nothing or
NaN for the precisions that had traffic, fails here. GPU queries are allowed to be empty on a host
without a GPU (their metrics exist only where NVML finds a device), and precision-audit queries
have no FP32 series (FP32 is the reference the others are audited against).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bench.process import listening_port
from tests.conftest import REPO, Server, require_tool

pytestmark = pytest.mark.slow
PROMETHEUS_HINT = "apt-get install prometheus (scripts/test.sh does)"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "detect-serving.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
MODEL = "yolov3-tiny-coco"
TRAFFIC = ("fp32", "int8")
GPU_ONLY = "detect_gpu_"
AUDIT = "detect_audit_"  # exported for the audited (reduced) precisions only
PROMETHEUS_PORT = re.compile(r'msg="Listening on" address=127\.0\.0\.1:(\d+)')


def wait_until(condition: Callable[[], bool], timeout_s: float, message: str) -> None:
    give_up = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up, message
        time.sleep(0.2)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def scrapes(prometheus: str) -> int:
    """How many scrapes of the service Prometheus has stored so far."""
    result = query(prometheus, 'count_over_time(up{job="detect"}[1h])')
    return int(float(result[0]["value"][1])) if result else 0


def stored_total(prometheus: str) -> float:
    result = query(prometheus, f'sum(detect_requests_total{{model="{MODEL}"}})')
    return float(result[0]["value"][1]) if result else -1.0


@pytest.fixture(scope="module")
def served(server_factory: Callable[..., Server], fp32_int8_engines: Path) -> Server:
    # Every int8 answer is re-run in FP32, and one sample is enough for a live agreement figure.
    audit = {
        "DETECT_AUDIT_SAMPLE_FRACTION": "1",
        "DETECT_AUDIT_BUDGET": "1",
        "DETECT_AUDIT_MIN_SAMPLES": "1",
    }
    server = server_factory({"DETECT_ENGINES_DIR": str(fp32_int8_engines), **audit})
    with server.client() as client:
        body = client.get("/models").json()
    model = next(m for m in body["models"] if m["name"] == MODEL)
    ready = {v["precision"] for v in model["variants"] if v["ready"]}
    assert set(TRAFFIC) <= ready, f"traffic needs {TRAFFIC} served; /models lists {ready}"
    return server


@pytest.fixture(scope="module")
def gpu_exported(served: Server) -> bool:
    """Whether this host's /metrics carries NVML metrics (only where a GPU is visible)."""
    return GPU_ONLY in httpx.get(f"{served.url}/metrics").text


@pytest.fixture(scope="module")
def prometheus(served: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = require_tool("prometheus", PROMETHEUS_HINT)
    work = tmp_path_factory.mktemp("prometheus")
    shutil.copy(ALERTS, work / "alerts.yml")
    target = served.url.removeprefix("http://")
    (work / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": ["alerts.yml"],
                "scrape_configs": [
                    {"job_name": "detect", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    with (work / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                "--web.listen-address=127.0.0.1:0",  # it binds a free port and logs which
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        port = listening_port(work / "prometheus.log", PROMETHEUS_PORT, process, 60)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(url), 60, "Prometheus never became ready")
        yield url
    finally:
        process.terminate()
        process.wait(30)


@dataclass(frozen=True)
class Moments:
    quiet: float  # before any traffic, after a few scrapes: a healthy, idle moment
    # Just after the traffic: the queries are evaluated here, since evaluated "now" rate() over
    # a 30 s window drops to 0/0 once the tests have run longer than that.
    after: float


@pytest.fixture(scope="module")
def traffic(served: Server, prometheus: str, photo: Callable[[str], bytes]) -> Moments:
    """Requests at two precisions, a few bad ones and a deadline rejection, then a few scrapes;
    returns a quiet moment before the traffic and the moment just after it."""
    # Counters must be stored at zero before traffic, or rate() sees no increase.
    wait_until(lambda: stored_total(prometheus) == 0, 30, "Prometheus never scraped the service")
    before = scrapes(prometheus)
    wait_until(lambda: scrapes(prometheus) >= before + 2, 30, "Prometheus stopped scraping")
    quiet = time.time()
    before = scrapes(prometheus)
    wait_until(lambda: scrapes(prometheus) >= before + 2, 30, "Prometheus stopped scraping")
    with served.client() as client:
        for _ in range(3):
            for precision in TRAFFIC:
                r = client.post(
                    "/detect", files={"image": ("b", photo("bus"))}, params={"precision": precision}
                )
                assert r.status_code == 200, r.text
            bad = client.post(
                "/detect", files={"image": ("x", b"not an image")}, params={"precision": "fp32"}
            )
            assert bad.status_code == 400
        for precision in TRAFFIC:
            late = client.post(
                "/detect",
                files={"image": ("b", photo("bus"))},
                params={"precision": precision, "deadline_ms": 1},
            )
            assert late.status_code == 504
    sent = 3 * (len(TRAFFIC) + 1) + len(TRAFFIC)
    wait_until(lambda: stored_total(prometheus) == sent, 30, "the traffic was never scraped")
    # A few scrapes after the traffic, so rate() and the alert windows have samples on both sides.
    after = scrapes(prometheus)
    wait_until(lambda: scrapes(prometheus) >= after + 5, 30, "Prometheus stopped scraping")
    after_traffic = float(query(prometheus, 'timestamp(up{job="detect"})')[0]["value"][1])
    return Moments(quiet, after_traffic)


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    queries = [
        (f"panel {p['title']!r}", t["expr"]) for p in board["panels"] for t in p.get("targets", [])
    ]
    for var in board["templating"]["list"]:
        if var["type"] == "datasource":
            continue
        inner = re.fullmatch(r"label_values\((.*), *(\w+)\)", var["definition"])
        assert inner, var["definition"]
        queries.append((f"variable {var['name']}", inner.group(1)))
    return queries


def _top_level_comparison(expr: str) -> str:
    """The query part of ``<query> <op> <threshold>``: where the dashboards' data comes from."""
    depth = 0
    for i in range(len(expr) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(expr[i], 0)
        if depth == 0 and expr[i : i + 4] in (" == ", " >= ", " <= ", " != "):
            return expr[:i]
        if depth == 0 and expr[i : i + 3] in (" > ", " < "):
            return expr[:i]
    return expr


def alert_queries() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [
        (f"alert {r['alert']}", _top_level_comparison(r["expr"]))
        for g in groups
        for r in g["rules"]
    ]


# What Grafana puts in for the variables: "All" is the variables' allValue (.*); a multi-value
# selection is a regex alternation; $__rate_interval is at least four scrape intervals.
SELECTIONS: dict[str, dict[str, str]] = {
    "all": {"model": ".*", "precision": ".*", "instance": ".*"},
    "both": {"model": MODEL, "precision": "(" + "|".join(TRAFFIC) + ")", "instance": ".*"},
    **{p: {"model": MODEL, "precision": p, "instance": ".*"} for p in TRAFFIC},
}
BUILTINS = {"__rate_interval": "30s", "__interval": "5s", "__range": "5m"}


def substitute(expr: str, selection: dict[str, str]) -> str:
    values = {**BUILTINS, **selection}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown template variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def expected_precisions(selection: str, expr: str) -> set[str]:
    wanted = set(TRAFFIC) if selection in ("all", "both") else {selection}
    return wanted - {"fp32"} if AUDIT in expr else wanted


def query(prometheus: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """``expr`` evaluated now, or at the instant ``at`` (Unix seconds)."""
    params: dict[str, Any] = {"query": expr} if at is None else {"query": expr, "time": at}
    r = httpx.get(f"{prometheus}/api/v1/query", params=params, timeout=10)
    body = r.json()
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def query_cases() -> list[tuple[str, str, str]]:
    """Each query under every variable selection; queries without variables (alerts) once."""
    return [
        (where, expr, selection)
        for where, expr in dashboard_queries() + alert_queries()
        for selection in (SELECTIONS if "$" in expr else ["all"])
    ]


@pytest.mark.parametrize(
    ("where", "expr", "selection"),
    query_cases(),
    ids=lambda v: v if isinstance(v, str) and len(v) < 60 else None,
)
def test_every_query_returns_finite_data(
    traffic: Moments, prometheus: str, gpu_exported: bool, where: str, expr: str, selection: str
) -> None:
    result = query(prometheus, substitute(expr, SELECTIONS[selection]), traffic.after)
    if GPU_ONLY in expr and not gpu_exported:
        # The one allowed exception: NVML metrics exist only on a host with a GPU.
        assert result == [], f"{where}: data for GPU metrics the service does not export?"
        pytest.skip(f"{where}: empty on purpose, detect_gpu_* exist only where NVML finds a GPU")
    wanted = expected_precisions(selection, expr)
    if not wanted:
        assert result == [], f"{where}: audit series for fp32, the audit's own reference?"
        pytest.skip(f"{where}: empty on purpose, fp32 is the reference, it is not audited")
    assert result, f"{where}: {expr} returned no data ({selection})"
    precisions = {s["metric"].get("precision") for s in result} - {None}
    if precisions:
        assert wanted <= precisions, f"{where}: only {precisions} in {expr} ({selection})"
    if precisions and selection in TRAFFIC and not where.startswith("variable"):
        # A panel that shows precisions must follow the precision picked at the top.
        assert precisions == wanted, f"{where}: $precision does not filter {expr}"
    # Variants without traffic may legitimately be NaN (a quantile of nothing); ours may not.
    values = [
        float(s["value"][1]) for s in result if s["metric"].get("precision") in (None, *wanted)
    ]
    assert values, f"{where}: no series for {wanted} in {expr}"
    assert all(math.isfinite(v) for v in values), f"{where}: {expr} -> {values}"


def _panel(title: str) -> dict[str, Any]:
    board = json.loads(DASHBOARD.read_text())
    return next(p for p in board["panels"] if p["title"] == title)


def test_error_ratios_read_zero_on_a_healthy_server(traffic: Moments, prometheus: str) -> None:
    """Before any bad request the error ratios are 0 (not "No data"); after, one ratio in [0, 1].

    (Not "> 0" after: each error status is a new series whose first sample rate() cannot see,
    so whether the few errors of the traffic show depends on where the scrapes fell.)"""
    targets = _panel("Error ratios (5xx, 4xx / all)")["targets"]
    assert [t["legendFormat"] for t in targets] == ["5xx ratio", "4xx ratio"]
    for target in targets:
        expr = substitute(target["expr"], SELECTIONS["all"])
        healthy = query(prometheus, expr, at=traffic.quiet)
        assert [float(s["value"][1]) for s in healthy] == [0.0], (expr, healthy)
    for target in targets:
        after = query(prometheus, substitute(target["expr"], SELECTIONS["all"]))
        assert len(after) == 1 and 0.0 <= float(after[0]["value"][1]) <= 1.0, after


def test_datasource_and_instance_variables(
    traffic: Moments, prometheus: str, served: Server
) -> None:
    """The board names no datasource uid of its own, and $instance picks one replica."""
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    uids = {p["datasource"]["uid"] for p in board["panels"] if "datasource" in p}
    uids |= {t["datasource"]["uid"] for p in board["panels"] for t in p.get("targets", [])}
    assert uids == {"${datasource}"}
    instance = served.url.removeprefix("http://")
    values = query(prometheus, "detect_engine_info")
    assert instance in {s["metric"]["instance"] for s in values}
    requests = _panel("Requests / s by precision")["targets"][0]["expr"]
    assert "$instance" in requests
    mine = query(prometheus, substitute(requests, {**SELECTIONS["all"], "instance": instance}))
    other = query(prometheus, substitute(requests, {**SELECTIONS["all"], "instance": "elsewhere"}))
    assert mine and not other


def test_alert_rules_evaluate_cleanly(traffic: Moments, prometheus: str) -> None:
    """Prometheus itself loaded alerts.yml and evaluates every rule without error."""
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == {name.removeprefix("alert ") for name, _ in alert_queries()}
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
        # The full expression, comparison too: an instant vector of finite values (a rule that
        # compared NaNs or returned a scalar would never fire).
        params = {"query": rule["query"], "time": traffic.after}
        data = httpx.get(f"{prometheus}/api/v1/query", params=params, timeout=10).json()["data"]
        assert data["resultType"] == "vector", (name, data)
        assert all(math.isfinite(float(s["value"][1])) for s in data["result"]), (name, data)


def test_every_metric_named_is_exported(traffic: Moments, served: Server) -> None:
    exported = httpx.get(f"{served.url}/metrics").text
    text = DASHBOARD.read_text() + ALERTS.read_text()
    named = set(re.findall(r"\b(detect_[a-z_]+?)(?:_bucket|_sum|_count)?\b", text))
    gpu_source = (REPO / "service" / "gpu_metrics.py").read_text()
    for name in sorted(named):
        if name.startswith(GPU_ONLY):
            assert name in gpu_source, f"{name} is defined nowhere"
            continue
        assert re.search(rf"^{name}(_bucket|_sum|_count|_total)?[{{ ]", exported, re.M), (
            f"{name} is used by a panel or alert but not exported"
        )


def test_promtool_check_metrics_is_clean(traffic: Moments, served: Server) -> None:
    promtool = require_tool("promtool", PROMETHEUS_HINT)
    exported = httpx.get(f"{served.url}/metrics").text
    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=exported,
        text=True,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), (
        done.stdout + done.stderr
    )
