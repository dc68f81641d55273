"""The CLI explains itself: every command has help, exit codes are documented."""

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from reshard.cli import cli, main
from reshard.exit_codes import ExitCode

REPO = Path(__file__).resolve().parents[2]
COMMANDS_DOC = REPO / "docs" / "reference" / "commands.md"


def all_commands(group=cli, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, prefix + (name,))


@pytest.mark.parametrize("path,cmd", list(all_commands()), ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_every_command_has_help(path, cmd):
    assert cmd.help and len(cmd.help.strip()) > 20, f"reshard {' '.join(path)} needs help text"
    for p in cmd.params:
        if isinstance(p, click.Option):
            assert p.help, f"option {p.name} of reshard {' '.join(path)} needs help text"
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0


def test_every_command_is_in_the_commands_reference():
    text = COMMANDS_DOC.read_text()
    for path, cmd in all_commands():
        if not isinstance(cmd, click.Group):
            assert f"reshard {' '.join(path)}" in text, f"docs/reference/commands.md does not mention reshard {' '.join(path)}"


def test_exit_codes_are_documented():
    text = COMMANDS_DOC.read_text()
    help_text = CliRunner().invoke(cli, ["--help"]).output
    for code in ExitCode:
        assert re.search(rf"\b{int(code)}\b.*{code.name.lower()}", help_text)
        assert f"| {int(code)} |" in text, f"docs/reference/commands.md lacks exit code {int(code)}"


def test_usage_errors_exit_bad_input(capsys):
    with pytest.raises(SystemExit) as e:
        main(["start"])
    assert e.value.code == ExitCode.BAD_INPUT


def test_missing_config_is_a_clear_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESHARD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RESHARD_CONFIG", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["status"])
    assert e.value.code == ExitCode.BAD_INPUT
    assert "no reshard.yaml found" in capsys.readouterr().err


def test_every_time_option_takes_a_duration_with_units():
    from reshard.cli.context import Duration

    seconds, millis = Duration(), Duration(per="ms")
    assert [seconds.convert(v, None, None) for v in ("500ms", "30s", "5m", "2h", "90", 7)] == \
        [0.5, 30.0, 300.0, 7200.0, 90.0, 7]
    assert [millis.convert(v, None, None) for v in ("500ms", "1s", "750")] == [500, 1000, 750]
    for bad in ("2x", "-1s", "0", "s"):
        with pytest.raises(click.BadParameter):
            seconds.convert(bad, None, None)
    numbers = {"--timeout", "--interval", "--duration", "--kafka-outage", "--sample-interval", "--wait-for-gates",
               "--lock-timeout", "--max-write-pause", "--bake", "--bake-interval", "--bake-reconcile-every",
               "--stream-seconds"}
    for path, cmd in all_commands():
        for p in cmd.params:
            if isinstance(p, click.Option) and set(p.opts) & numbers:
                assert isinstance(p.type, Duration), f"reshard {' '.join(path)} {p.opts[0]} takes no duration"


def test_completion_scripts_complete_commands_in_bash(tmp_path):
    import shutil
    import subprocess
    import sys

    script = CliRunner().invoke(cli, ["completion", "bash"]).output
    assert "_reshard_completion" in script
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "reshard").write_text(f"#!/bin/sh\nexec {sys.executable} -m reshard.cli \"$@\"\n")
    (bin_dir / "reshard").chmod(0o755)
    probe = tmp_path / "probe.sh"
    probe.write_text(script + '\nCOMP_WORDS=(reshard st); COMP_CWORD=1; _reshard_completion reshard; '
                     'echo "${COMPREPLY[@]}"; COMPREPLY=()\n'
                     'COMP_WORDS=(reshard ddl ""); COMP_CWORD=2; _reshard_completion reshard; echo "${COMPREPLY[@]}"\n')
    out = subprocess.run([shutil.which("bash") or "bash", str(probe)], capture_output=True, text=True, timeout=60,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["stack", "start", "status"], out
    assert lines[1].split() == ["list", "resolve"], out
    for shell in ("zsh", "fish"):
        assert "reshard" in CliRunner().invoke(cli, ["completion", shell]).output


def test_errors_in_json_mode_print_the_envelope_with_the_exit_code_name(tmp_path, capsys, monkeypatch):
    import json

    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    schemas = REPO / "schemas" / "cli"
    envelope = json.loads((schemas / "envelope.schema.json").read_text())
    registry = Registry().with_resource(envelope["$id"], Resource.from_contents(envelope))
    validator = Draft202012Validator(json.loads((schemas / "error.schema.json").read_text()), registry=registry)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESHARD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RESHARD_CONFIG", raising=False)
    for argv, command, migration in ((["status", "m1", "--json"], "status", "m1"),  # no config: bad input
                                     (["start", "--json"], "start", None),  # a usage error
                                     (["wait", "m2", "--timeout", "2x", "--json"], "wait", None)):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == ExitCode.BAD_INPUT
        doc = json.loads(capsys.readouterr().out)
        assert not list(validator.iter_errors(doc)), doc
        assert (doc["command"], doc["migration"], doc["kind"], doc["ok"]) == (command, migration, "bad_input", False)


def test_version_names_the_pinned_parts_and_the_postgresql_majors():
    import json

    from reshard.stack import pg_binaries

    doc = json.loads(CliRunner().invoke(cli, ["version", "--json"]).output)
    assert set(doc["pins"]) == {"kafka", "debezium", "apicurio", "apicurio_converter"} and all(doc["pins"].values())
    assert doc["postgresql"] == {"supported": list(pg_binaries.SUPPORTED), "default": pg_binaries.DEFAULT}


@pytest.mark.parametrize("argv", [["stack", "down", "--purge"], ["fence", "remove"]])
def test_destructive_commands_ask_and_refuse_without_a_terminal(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESHARD_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == ExitCode.BAD_INPUT
    assert "pass --yes" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()  # nothing was touched
