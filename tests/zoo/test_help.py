"""The whole `zoo` help output, pinned: the top-level help and every command's help (with examples)
are compared with tests/zoo/golden/help.txt. After an intended change, regenerate it with
ZOO_UPDATE_GOLDEN=1 python -m pytest tests/zoo/test_help.py and review the diff."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from zoo import cli

GOLDEN = Path(__file__).parent / "golden" / "help.txt"


def _help(argv: list[str], capsys) -> str:
    assert cli.main(argv) == 0
    return capsys.readouterr().out


def full_help(capsys) -> str:
    parts = [f"$ zoo --help\n{_help(['--help'], capsys)}"]
    for command in cli.COMMANDS:
        parts.append(f"$ zoo {command.name} --help\n{_help([command.name, '--help'], capsys)}")
    return "\n".join(parts)


@pytest.fixture(autouse=True)
def fixed_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps at the terminal width


def test_help_output_is_as_pinned(capsys):
    text = full_help(capsys)
    if os.environ.get("ZOO_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_every_command_has_examples_and_is_listed(capsys):
    top = _help(["--help"], capsys)
    for command in cli.COMMANDS:
        assert command.name in top
        assert "examples:" in _help([command.name, "--help"], capsys)


def test_usage_errors_exit_2_with_argparse_message(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err
    assert cli.main(["convert", "--opset", "x"]) == 2
    assert "--opset: invalid int value: 'x'" in capsys.readouterr().err


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("zoo (caffezoo) ")
