"""The alert rules are valid and do what monitoring/alerts_test.yml says (promtool), and
the dashboard is a Grafana dashboard whose every panel queries something. That every
metric they use is really exported is checked against a live Prometheus in
tests/e2e/test_prometheus.py."""

import json
import subprocess
from pathlib import Path

from tests.monitoring import MONITORING, promtool_binary


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(promtool_binary()), *args], capture_output=True, text=True, cwd=MONITORING)


def test_alert_rules_pass_promtool_check():
    out = _promtool("check", "rules", "alerts.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 20 rules found" in out.stdout


def test_each_alert_fires_when_it_should_and_only_then():
    out = _promtool("test", "rules", "alerts_test.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_is_exercised_by_the_rules_test():
    import yaml

    rules = {r["alert"] for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    tested = {t["alertname"] for case in yaml.safe_load((MONITORING / "alerts_test.yml").read_text())["tests"]
              for t in case["alert_rule_test"]}
    assert rules == tested, sorted(rules - tested)


def test_dashboard_panels_each_query_prometheus():
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["targets"], p["title"]
        assert all(t["expr"].strip() and "reshard_" in t["expr"] for t in p["targets"]), p["title"]


def test_example_scrape_config_is_valid():
    out = _promtool("check", "config", "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_write_pause_histogram_buckets_are_cumulative():
    from reshard.observe.exporter import pause_histogram

    buckets, total = pause_histogram([0.05, 0.3, 0.3, 4.0, 60.0])
    as_dict = dict(buckets)
    assert as_dict["0.1"] == 1 and as_dict["0.5"] == 3 and as_dict["5.0"] == 4 and as_dict["+Inf"] == 5
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert abs(total - 64.65) < 1e-9
    assert pause_histogram([]) == ([(str(b), 0.0) for b in (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)] + [("+Inf", 0.0)], 0.0)


def test_every_runbook_link_points_at_a_section_of_the_docs():
    import re

    import yaml

    repo = Path(__file__).resolve().parents[2]
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"][0]["rules"]
    links = [r["annotations"]["runbook"] for r in rules if "runbook" in r["annotations"]]
    assert len(links) >= 6
    for link in links:
        page, _, anchor = link.partition("#")
        assert page.startswith("docs/") and (repo / page).is_file(), link
        anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
                   for h in re.findall(r"^#+ (.+)$", (repo / page).read_text(), re.M)}
        assert anchor in anchors, link
