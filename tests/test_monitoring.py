"""The dashboard and the alerting rules that ship: valid for Prometheus's own tools, tested alert by
alert, and built only from metrics a running adapter really exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import SocketmapClient, StartAdapter

from adapter.config import ListenAddress

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "userli-postfix-adapter.json"
PROMETHEUS_RULE = ROOT / "k8s" / "prometheusrule.yaml"
METRIC = re.compile(r"\b((?:userli_postfix_adapter|process|python)_[a-z0-9_]+)")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (Debian package prometheus; .ci/run installs it)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return found


def test_rules_pass_promtool_check(promtool: str) -> None:
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 7 rules found" in done.stdout


def test_every_alert_has_a_unit_test_that_passes(promtool: str) -> None:
    done = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == tested


def test_the_kubernetes_prometheus_rule_holds_the_same_rules() -> None:
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_the_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert len(titles) == len(set(titles))
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(target["expr"] for target in panel["targets"]), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "instance"}


def used_metrics() -> set[str]:
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    exprs += [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    exprs += [v["definition"] for v in variables if "definition" in v]
    return {name for expr in exprs for name in METRIC.findall(expr)}


def test_every_metric_in_the_dashboard_and_the_rules_is_exported(start_adapter: StartAdapter) -> None:
    running = start_adapter(sasl_address=ListenAddress(host="127.0.0.1", port=0))
    with SocketmapClient(running.socketmap_port) as client:
        assert client.query("mailbox", "user@example.org") == "OK 1"  # a userli call: its series exist
    with urllib.request.urlopen(running.http_url + "/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    exported = {line.split("{")[0].split(" ")[0] for line in lines if not line.startswith("#")}
    used = used_metrics()
    assert len(used) >= 20
    assert used - exported == set()
