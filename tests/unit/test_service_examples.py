"""The service examples (systemd units, Kubernetes manifests) run commands reshard has,
with options it accepts, and keep what a long-running worker needs: SIGTERM with time to
commit its batch, restarts except on exit codes that need an operator, config and
passwords from files, metrics probed where they are served."""

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

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


def test_kubernetes_manifests():
    docs = list(yaml.safe_load_all((EXAMPLES / "kubernetes" / "reshard-apply.yaml").read_text()))
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    config = parse_config(yaml.safe_load(config_map["data"]["reshard.yaml"]))  # strict: a valid reshard.yaml
    assert all("password=" not in c.dsn for c in config.clusters.values())  # passwords come from the Secret
    assert all(c.connect_password for c in config.clusters.values())  # and reach Debezium as references
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"reshard-apply-orders-split", "reshard-exporter"}
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (c,) = pod["containers"]
        args = _reshard_args(["reshard", *c["args"]])
        env = {e["name"]: e["value"] for e in c["env"]}
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert env["RESHARD_CONFIG"] == f"{mounts['config']}/reshard.yaml"
        assert env["PGPASSFILE"].startswith(mounts["secrets"] + "/")
        port = next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")
        assert str(port) in args and c["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
        if "apply" in args:
            assert pod["terminationGracePeriodSeconds"] >= 30 and d["spec"]["replicas"] >= 2
