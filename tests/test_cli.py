"""The `dferclip` entry point: help lists every stage; bad configs exit 2 with the key path."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.cli import COMMANDS, main


def test_help_lists_every_stage(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("describe", "preprocess", "train", "evaluate", "tune", "run", "submit", "predict", "demo"):
        assert name in out
    assert set(COMMANDS) >= {"describe", "preprocess", "train", "tune"}


def test_unknown_command_fails(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2  # argparse's usage-error status
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'; choose from describe" in err


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
    assert main(["-v", "--help"]) == 0


def test_the_console_script_exits_2_for_an_unknown_command():
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "frobnicate"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and "unknown command 'frobnicate'" in out.stderr


def test_models_subcommand_lists_tiny_configs(capsys):
    assert main(["models", "--filter", "dferclip"]) == 0
    assert "dferclip-tiny" in capsys.readouterr().out


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "preprocess" in out.stdout
