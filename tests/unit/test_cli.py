"""The CLI explains itself: every command has help, exit codes are documented."""

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from reshard.cli import cli, main
from reshard.exit_codes import ExitCode

README = Path(__file__).resolve().parents[2] / "README.md"


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


def test_every_command_is_in_the_readme():
    text = README.read_text()
    for path, cmd in all_commands():
        if not isinstance(cmd, click.Group):
            assert f"reshard {' '.join(path)}" in text, f"README does not mention reshard {' '.join(path)}"


def test_exit_codes_are_documented():
    text = README.read_text()
    help_text = CliRunner().invoke(cli, ["--help"]).output
    for code in ExitCode:
        assert re.search(rf"\b{int(code)}\b.*{code.name.lower()}", help_text)
        assert f"| {int(code)} |" in text, f"README lacks exit code {int(code)}"


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
