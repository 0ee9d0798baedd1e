"""The `dferclip` entry point: help lists every stage; bad configs exit 2 with the key path."""

from __future__ import annotations

import subprocess
import sys

from pipeline.cli import COMMANDS, main


def test_help_lists_every_stage(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("describe", "preprocess", "train", "evaluate", "tune", "run", "submit", "predict", "demo"):
        assert name in out
    assert set(COMMANDS) >= {"describe", "preprocess", "train", "tune"}


def test_unknown_command_fails(capsys):
    try:
        main(["frobnicate"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "unknown command" in capsys.readouterr().err


def test_models_subcommand_lists_tiny_configs(capsys):
    assert main(["models", "--filter", "dferclip"]) == 0
    assert "dferclip-tiny" in capsys.readouterr().out


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "preprocess" in out.stdout
