"""The admin's view on the real cluster: the epilog's textfile metrics through Debian's own
node_exporter and Prometheus, and every dashboard panel's and alert rule's query against them.

The test starts its own ``prometheus-node-exporter`` (textfile collector only, on the folder of
the dev cluster's ``metrics_textfile``) and ``prometheus`` (1 s scrapes, the shipped rules
loaded), each on a free loopback port, then runs jobs through the cluster: one archived, one
spooled while the store is down, then drained. What it reads back is what an admin's
Prometheus would read: the counters and gauges through the HTTP API.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from slurm_yolo.site import read_site_config
from tests.cluster.helpers import (archived_record, demo_config, slurm_yolo as cli, submit_standin, verify_archive,
                                   wait_for, wait_job_over)
from tests.fixtures.servers import free_port

pytestmark = [pytest.mark.cluster]

GRAFANA = Path(__file__).resolve().parents[2] / "scripts" / "grafana"
DASHBOARD, RULES = GRAFANA / "slurm-yolo-dashboard.json", GRAFANA / "slurm-yolo-alerts.yml"
NODE_EXPORTER, PROMETHEUS, PROMTOOL = "/usr/bin/prometheus-node-exporter", "/usr/bin/prometheus", "/usr/bin/promtool"


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _wait_http(url: str, proc: subprocess.Popen, what: str) -> None:
    def up():
        assert proc.poll() is None, f"{what} exited: {proc.stdout.read() if proc.stdout else ''}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            return False

    wait_for(up, 60, f"{what} at {url}", poll=0.3)


@pytest.fixture
def prometheus(cluster, tmp_path):
    """node_exporter on the dev cluster's textfile folder and a Prometheus scraping it, both on
    loopback; yields a function that runs an instant query and returns its result list."""
    textfile = read_site_config(cluster["SLURM_YOLO_SITE_CONFIG"]).metrics_textfile
    assert textfile, "the dev cluster's site config turned the metrics off"
    node_port, prom_port = free_port(), free_port()
    procs = []
    try:
        procs.append(subprocess.Popen(
            [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{node_port}", "--collector.disable-defaults",
             "--collector.textfile", f"--collector.textfile.directory={Path(textfile).parent}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        _wait_http(f"http://127.0.0.1:{node_port}/metrics", procs[0], "node_exporter")
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "node", "static_configs": [{"targets": [f"127.0.0.1:{node_port}"]}]}]}))
        procs.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True))
        base = f"http://127.0.0.1:{prom_port}"
        _wait_http(f"{base}/-/ready", procs[1], "prometheus")

        def query(expr: str) -> list[dict]:
            got = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
            assert got["status"] == "success", (expr, got)
            return got["data"]["result"]

        query.base = base  # type: ignore[attr-defined]
        query.textfile = Path(textfile)  # type: ignore[attr-defined]
        yield query
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
            if proc.stdout:
                proc.stdout.close()


def _value(query, expr: str) -> float:
    """The single value of ``expr`` (0 when it has no series yet)."""
    result = query(expr)
    assert len(result) <= 1, (expr, result)
    return float(result[0]["value"][1]) if result else 0.0


def _reaches(query, expr: str, want, timeout: float = 60) -> float:
    """Wait until ``want(value of expr)`` holds (the epilog wrote, node_exporter served it,
    Prometheus scraped it); returns the value."""
    def check():
        value = _value(query, expr)
        return (value,) if want(value) else None

    return wait_for(check, timeout, f"{expr} to move")[0]


ARCHIVED = 'sum(slurm_yolo_archives_total{result="archived", end_state="COMPLETED"})'
SPOOLED = 'sum(slurm_yolo_archives_total{result="spooled", end_state="COMPLETED"})'
DRAINED = 'sum(slurm_yolo_drained_total{result="shipped", end_state="COMPLETED"})'
UPLOADED = "sum(slurm_yolo_bytes_uploaded_total)"
EPILOGS = "sum(slurm_yolo_epilog_duration_seconds_count)"
LAST = "max(slurm_yolo_last_archive_timestamp_seconds)"
SPOOL = "sum(slurm_yolo_spool_entries)"


@pytest.mark.cluster_wide
def test_counters_and_gauges_move_through_prometheus(cluster, s3, dataset, runs_root, tmp_path, prometheus):
    query = prometheus
    # The file may already hold counts from earlier tests: everything is measured from here.
    before = {expr: _value(query, expr) for expr in (ARCHIVED, SPOOLED, DRAINED, UPLOADED, EPILOGS, LAST)}

    started = time.time()
    out = submit_standin(cluster, demo_config(tmp_path, dataset), runs_root=runs_root, epochs=1)
    assert wait_job_over(cluster, out["job_id"]) == "COMPLETED"
    archived_record(s3, out["archive_url"])
    verify_archive(s3, out["archive_url"])
    _reaches(query, ARCHIVED, lambda v: v >= before[ARCHIVED] + 1)
    assert _reaches(query, EPILOGS, lambda v: v >= before[EPILOGS] + 1)
    uploaded = _reaches(query, UPLOADED, lambda v: v > before[UPLOADED])
    assert _reaches(query, LAST, lambda v: v >= started - 1) <= time.time() + 1

    # The store goes down (the site config points at a closed port, as in test_epilog.py): the
    # next job's run waits in the spool, and the gauges say so.
    path = Path(cluster["SLURM_YOLO_SITE_CONFIG"])
    original = path.read_text()
    path.write_text(original.replace(cluster["AWS_ENDPOINT_URL"], "http://127.0.0.1:9"))
    try:
        spooled = submit_standin(cluster, demo_config(tmp_path, dataset), runs_root=runs_root, epochs=1)
        assert wait_job_over(cluster, spooled["job_id"]) == "COMPLETED"
        _reaches(query, SPOOLED, lambda v: v >= before[SPOOLED] + 1)
        assert _reaches(query, SPOOL, lambda v: v >= 1)
        assert _value(query, "sum(slurm_yolo_spool_bytes)") > 0
        assert _value(query, "max(slurm_yolo_spool_oldest_seconds)") >= 0
        assert _value(query, UPLOADED) == uploaded  # nothing reached the store
    finally:
        path.write_text(original)

    drained = cli(cluster, "spool", "drain", "--json")
    assert drained.returncode == 0, drained.stdout + drained.stderr
    result = json.loads(drained.stdout)
    assert any(spooled["run_id"] in name for name in result["shipped"]) and result["pending"] == []
    verify_archive(s3, spooled["archive_url"])
    _reaches(query, DRAINED, lambda v: v >= before[DRAINED] + 1)
    _reaches(query, SPOOL, lambda v: v == 0)
    assert _value(query, "max(slurm_yolo_spool_oldest_seconds)") == 0
    assert _value(query, "sum(slurm_yolo_spool_needs_attention)") == 0
    assert _value(query, UPLOADED) > uploaded

    # The file as node_exporter reads it: world-readable, lint-clean, and no secret or name in it.
    text = query.textfile.read_text()
    assert query.textfile.stat().st_mode & 0o777 == 0o644
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    secrets = [v for k, v in s3_keys(cluster).items() if v]
    for needle in [out["run_id"], spooled["run_id"], str(runs_root), *secrets]:
        assert needle not in text

    _check_dashboard_and_rules(query)


def s3_keys(env) -> dict[str, str]:
    return {k: env.get(k, "") for k in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")}


def grafana_expr(expr: str) -> str:
    """A panel's query as Grafana sends it: its variables filled in (every node, a 1 m rate window)."""
    return expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$node", ".*")


def _check_dashboard_and_rules(query) -> None:
    """Every panel's query, the node variable's and every rule's parse and return series on the
    Prometheus that scraped the cluster's textfile."""
    dashboard = json.loads(DASHBOARD.read_text())
    names = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert names["datasource"]["type"] == "datasource" and names["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert query(grafana_expr(target["expr"])), f"{panel['title']}: {target['expr']} returns no series"
    label, metric = re.fullmatch(r"label_values\((\w+), (\w+)\)", names["node"]["definition"]).group(2, 1)
    values = _get(f"{query.base}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": metric}))
    assert values["status"] == "success" and values["data"], values

    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    rules = yaml.safe_load(RULES.read_text())["groups"]
    recorded = [r for g in rules for r in g["rules"] if "record" in r]
    alerts = [r for g in rules for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} >= {"SlurmYoloSpoolOld", "SlurmYoloSpoolNeedsAttention",
                                            "SlurmYoloNoArchiveForADay"}

    def evaluated():
        loaded = [r for g in _get(f"{query.base}/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        return len(loaded) == len(recorded) + len(alerts) and all(
            r["health"] == "ok" and not r.get("lastError") for r in loaded) and loaded

    wait_for(evaluated, 30, "every rule evaluated by Prometheus without error")
    for rule in recorded:
        assert query(rule["expr"]), f"{rule['record']}: {rule['expr']} returns no series"
        assert query(rule["record"]), f"{rule['record']} was not recorded"
    for rule in alerts:
        query(rule["expr"])  # parses and evaluates; it fires only when the cluster is unwell
        # what each alert compares with its threshold exists (a threshold on nothing never fires)
        watched = re.split(r"\s*(?:>|>=|==|<)\s*", rule["expr"])[0]
        assert query(watched), f"{rule['alert']}: {watched} returns no series"
