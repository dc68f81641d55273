"""The service examples (systemd units, Kubernetes manifests) run commands reshard has,
with options it accepts, and keep what a long-running worker needs: SIGTERM with time to
commit its batch, restarts except on exit codes that need an operator, config and
passwords from files, metrics probed where they are served."""

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from psycopg.conninfo import conninfo_to_dict

from reshard.cli import cli
from reshard.config import parse_config
from reshard.exit_codes import ExitCode

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections, each key with all its values (systemd repeats keys)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for line in (EXAMPLES / "systemd" / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(section, {}).setdefault(key, []).append(value)
    return out


def _reshard_args(argv: list[str]) -> list[str]:
    """The arguments after `reshard`, with options checked by parsing them for real."""
    args = argv[argv.index("reshard") + 1:]
    result = CliRunner().invoke(cli, [*[a.replace("%i", "orders_split") for a in args], "--help"])
    assert result.exit_code == 0, (args, result.output)
    return args


@pytest.mark.parametrize("name,command", [("reshard-apply@.service", "apply"),
                                          ("reshard-exporter.service", "exporter")])
def test_systemd_units(name, command, tmp_path):
    svc = {k: v[-1] for k, v in _unit(name)["Service"].items()}
    args = _reshard_args(shlex.split(svc["ExecStart"]))
    assert command in args
    assert svc["KillSignal"] == "SIGTERM" and int(svc["TimeoutStopSec"]) >= 30
    assert svc["Restart"] == "on-failure"
    env = dict(e.split("=", 1) for e in _unit(name)["Service"]["Environment"])
    assert env["RESHARD_CONFIG"].startswith("/etc/reshard/") and env["PGPASSFILE"].startswith("/etc/reshard/")
    if command == "apply":
        assert "%i" in args  # the instance names the migration
        no_restart = {int(c) for c in svc["RestartPreventExitStatus"].split()}
        assert no_restart == {ExitCode.BAD_INPUT, ExitCode.PAUSED}
    if shutil.which("systemd-analyze"):
        unit = tmp_path / name.replace("@.", "@orders_split.")
        unit.write_text((EXAMPLES / "systemd" / name).read_text())
        out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
        assert out.returncode == 0 and "reshard" not in out.stderr.replace(str(unit), ""), out.stderr


def _k8s(name: str) -> list[dict]:
    return list(yaml.safe_load_all((EXAMPLES / "kubernetes" / name).read_text()))


def _roles_sql() -> set[str]:
    text = (EXAMPLES.parent / "docs" / "roles.sql").read_text()
    return set(re.findall(r"CREATE ROLE (\w+)", text))


def _check_container(pod: dict) -> list[str]:
    """The container's reshard command parses, and config and passwords come from mounts."""
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    args = _reshard_args(["reshard", *c["args"]])
    env = {e["name"]: e["value"] for e in c["env"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert env["RESHARD_CONFIG"] == f"{mounts['config']}/reshard.yaml"
    assert env["PGPASSFILE"].startswith(mounts["secrets"] + "/")
    volumes = {v["name"] for v in pod["volumes"]}
    assert set(mounts) <= volumes
    return args


def test_kubernetes_workers_and_exporter():
    docs = _k8s("reshard-apply.yaml")
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    config = parse_config(yaml.safe_load(config_map["data"]["reshard.yaml"]))  # strict: a valid reshard.yaml
    assert all("password=" not in c.dsn for c in config.clusters.values())  # passwords come from the Secret
    assert all(c.connect_password for c in config.clusters.values())  # and reach Debezium as references
    # the roles docs/roles.sql creates: `reshard` on the shards, `reshard_control` for the control database
    roles = _roles_sql()
    assert {c.params()["user"] for c in config.clusters.values()} == {"reshard"} <= roles
    assert conninfo_to_dict(config.control_dsn)["user"] == "reshard_control" in roles
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"reshard-apply-orders-split", "reshard-exporter"}
    scraped = set()
    for d in deployments:
        template = d["spec"]["template"]
        pod = template["spec"]
        args = _check_container(pod)
        (c,) = pod["containers"]
        port = next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")
        assert str(port) in args and c["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
        notes = template["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/port"] == str(port)
        scraped.add(template["metadata"]["labels"]["app"])
        if "apply" in args:
            assert pod["terminationGracePeriodSeconds"] >= 30 and d["spec"]["replicas"] >= 2
            # a Deployment restarts whatever the exit code: a paused worker must wait, not exit 5
            assert args[args.index("--on-pause") + 1] == "wait"
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    selected = monitor["spec"]["selector"]["matchExpressions"][0]
    assert selected["key"] == "app" and set(selected["values"]) == scraped == {"reshard-apply", "reshard-exporter"}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_kubernetes_jobs_for_start_and_a_scheduled_cutover():
    from reshard.maps.shardmap import parse_map

    docs = _k8s("reshard-jobs.yaml")
    new_map = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["new.yaml"])
    clusters = parse_config(yaml.safe_load(next(d for d in _k8s("reshard-apply.yaml") if d["kind"] == "ConfigMap")
                                           ["data"]["reshard.yaml"])).clusters
    parse_map(new_map, clusters)  # a valid map over the config's clusters
    (start,) = [d for d in docs if d["kind"] == "Job"]
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    for job in (start["spec"], cron["spec"]["jobTemplate"]["spec"]):
        pod = job["template"]["spec"]
        assert pod["restartPolicy"] == "Never"  # so the Job, not the kubelet, reads each exit code
        _check_container(pod)
    args = _check_container(start["spec"]["template"]["spec"])
    assert args[2:4] == ["start", "orders_split"]
    fail_job = [r for r in start["spec"]["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert set(fail_job[0]["onExitCodes"]["values"]) == {ExitCode.BAD_INPUT, ExitCode.BUSY}
    args = _check_container(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    assert args[2:4] == ["cutover", "orders_split"] and "--window" in args and "--timezone" in args
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
