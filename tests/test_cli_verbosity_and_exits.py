"""The `dferclip` entry point's contract, each value worked out by hand from docs/cli.md:
-v/-q before and after the command and what verbosity results, the exit statuses (0, 2 for a
user error or usage, 3 for a stage not built, 130 for Ctrl-C, a stage's own status passed on),
and the shared stage parser's --config/--set."""

from __future__ import annotations

import argparse
import re
import sys

import open_clip  # the models command lists its registry (imported here, once, for every test)
import pytest

import pipeline.cli as cli
from pipeline import logs
from pipeline.errors import UserError
from pipeline.typed import ConfigError


@pytest.fixture(autouse=True)
def _normal_logging():
    yield
    logs.setup_logging(logs.NORMAL)
    cli._base_verbosity, cli._parsed_verbosity = logs.NORMAL, False


# ---- run_cli: errors become messages and exit statuses --------------------------------------


def test_run_cli_statuses(capsys):
    assert cli.run_cli(lambda: None) == 0
    assert cli.run_cli(lambda: 3) == 3
    capsys.readouterr()

    def config_error():
        raise ConfigError(["train.epochs: must be >= 1, got 0"], "exp.yaml")

    assert cli.run_cli(config_error) == 2
    assert capsys.readouterr().err == (
        "error: invalid configuration in exp.yaml:\n  - train.epochs: must be >= 1, got 0\n"
    )

    def user_error():
        raise UserError("no such checkpoint: x.pt")

    assert cli.run_cli(user_error) == 2
    assert capsys.readouterr().err == "error: no such checkpoint: x.pt\n"

    def ctrl_c():
        raise KeyboardInterrupt

    assert cli.run_cli(ctrl_c) == 130
    assert capsys.readouterr().err == "interrupted; finished work is kept and a re-run resumes from it\n"
    assert cli.run_cli(ctrl_c, "interrupted; a re-run starts over") == 130
    assert capsys.readouterr().err == "interrupted; a re-run starts over\n"


def test_run_cli_lets_a_bug_through():
    def bug():
        raise ValueError("a bug, not a user error")

    with pytest.raises(ValueError, match="a bug, not a user error"):
        cli.run_cli(bug)
    assert cli._parsed_verbosity is False


def test_run_cli_sets_up_logging_unless_a_parser_did():
    logs.setup_logging(logs.DEBUG)
    assert cli.run_cli(logs.verbosity) == logs.NORMAL  # nothing parsed: the base verbosity
    parser = cli.command_parser("dferclip x")
    parser.parse_args(["-v"])
    assert cli._parsed_verbosity is True
    assert cli.run_cli(logs.verbosity) == logs.VERBOSE  # the parser's -v stays
    assert cli._parsed_verbosity is False  # and is forgotten after the command
    assert cli.run_cli(logs.verbosity) == logs.NORMAL


# ---- the parsers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, verbosity",
    [([], logs.NORMAL), (["-q"], logs.QUIET), (["-v"], 1), (["-vv"], 2), (["--verbose"], 1), (["--quiet"], -1)],
)
def test_command_parser_sets_the_verbosity_it_parses(argv, verbosity):
    args = cli.command_parser("dferclip x").parse_args(argv)
    assert logs.verbosity() == verbosity
    assert args.quiet == ("-q" in argv or "--quiet" in argv)


def test_command_parser_fills_a_given_namespace():
    ns = argparse.Namespace(stage="train")
    args = cli.command_parser("dferclip x").parse_args(["-q"], namespace=ns)
    assert args is ns and (args.stage, args.quiet) == ("train", True)


def test_unknown_command_lists_the_commands_comma_separated(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["frobnicate"])
    assert exc.value.code == 2
    assert "unknown command 'frobnicate'; choose from describe, preprocess, train, " in capsys.readouterr().err


def test_verbose_and_quiet_together_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.command_parser("dferclip x").parse_args(["-v", "-q"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_command_parser_keeps_descriptions_as_written():
    parser = cli.command_parser("dferclip x", "line one\n  indented")
    assert parser.formatter_class is argparse.RawDescriptionHelpFormatter
    assert "line one\n  indented" in parser.format_help()
    assert parser.prog == "dferclip x"
    other = cli.command_parser("dferclip y", formatter_class=argparse.HelpFormatter)
    assert other.formatter_class is argparse.HelpFormatter


def test_stage_parser_config_and_set(capsys):
    parser = cli.stage_parser("dferclip train", "fit")
    args = parser.parse_args(["--config", "exp.yaml", "--set", "train.epochs=2", "--set", "model.n_ctx=4"])
    assert (args.config, args.overrides) == ("exp.yaml", ["train.epochs=2", "model.n_ctx=4"])
    assert parser.parse_args(["--config", "exp.yaml"]).overrides == []
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([])
    assert exc.value.code == 2 and "--config" in capsys.readouterr().err
    assert cli.stage_parser("dferclip evaluate", None, config_required=False).parse_args([]).config is None


# ---- main: flags before the command, dispatch, statuses ----------------------------------------


@pytest.mark.parametrize(
    "before, after, verbosity",
    [
        ([], [], logs.NORMAL),
        (["-q"], [], logs.QUIET),
        (["--quiet"], [], logs.QUIET),
        (["-vv"], [], 2),
        (["--verbose"], [], 1),
        (["-v", "-v"], [], 2),  # 1, then max(1, 0) + 1
        (["-q", "-v"], [], 1),  # the later flag: max(-1, 0) + 1
        (["-v"], ["-v"], 2),  # the command's own -v adds to the base
        (["-vv"], ["-q"], logs.QUIET),  # the command's -q wins
    ],
)
def test_flags_before_and_after_the_command(before, after, verbosity, tmp_path, capsys):
    # preprocess with a missing config: the stage parser parses the flags, then the config error
    # ends the command with status 2 (no stage work, nothing heavy imported).
    missing = tmp_path / "missing.yaml"
    assert cli.main([*before, "preprocess", *after, "--config", str(missing)]) == 2
    assert logs.verbosity() == verbosity
    assert (
        capsys.readouterr().err == f"error: invalid configuration in {missing}:\n  - config file not found: {missing}\n"
    )
    assert (cli._base_verbosity, cli._parsed_verbosity) == (logs.NORMAL, False)  # reset after the command


def test_main_reads_sys_argv_when_given_nothing(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dferclip", "-h"])
    assert cli.main() == 0
    assert capsys.readouterr().out.startswith("usage: dferclip")


def test_help_and_no_command(capsys):
    assert cli.main(["-h"]) == 0
    assert capsys.readouterr().out.startswith("usage: dferclip")
    assert cli.main(["-q"]) == 2  # flags but no command: help, and a usage status
    assert "COMMAND" in capsys.readouterr().out


def test_a_stages_status_is_passed_on(capsys):
    assert cli.main(["models", "--filter", "dferclip-micro"]) == 0
    listed = capsys.readouterr().out.split()
    assert "dferclip-micro" in listed and "dferclip-micro" in open_clip.list_models()


def test_commands_served_by_one_module_get_their_name(capsys):
    # pipeline.jobs serves submit and jobs: it reads the command name first (without it: usage, 2).
    with pytest.raises(SystemExit) as exc:
        cli.main(["jobs", "--help"])
    assert exc.value.code == 0
    assert "usage: dferclip jobs" in capsys.readouterr().out


def test_a_stage_that_is_not_built_exits_3(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "ghost", ("stages.no_such_stage", "not built"))
    assert cli.main(["ghost", "--x"]) == 3
    assert capsys.readouterr().err == (
        "dferclip ghost: this stage is not built yet (stages.no_such_stage does not exist).\n"
    )


# ---- what --help shows (the user's reference for the shared options) --------------------------


def _has_row(text: str, left: str, right: str) -> bool:
    """An option or command row of argparse's help: ``left``, padding, ``right``, on one line."""
    return re.search(rf"^  {re.escape(left)} +{re.escape(right)}$", text, re.M) is not None


def test_stage_parser_help_text(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per option: no wrapping to compare across
    text = cli.stage_parser("dferclip train", "Fit DFER-CLIP.\n\n  Indented example.").format_help()
    assert text.startswith("usage: dferclip train [-h] [-v | -q] --config CONFIG [--set KEY=VALUE]")
    assert "Fit DFER-CLIP.\n\n  Indented example." in text
    assert _has_row(text, "--config CONFIG", "experiment YAML (see configs/)")
    assert _has_row(text, "--set KEY=VALUE", "override a config value, e.g. --set train.epochs=2 (repeatable)")
    assert _has_row(text, "-v, --verbose", "more detail: debug lines and Ray's own log (-vv: Ray's debug lines too)")
    assert _has_row(text, "-q, --quiet", "only warnings and errors")


def test_main_help_text(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: dferclip [-h] [-v | -q] COMMAND ...")
    assert "\n\nDFER-CLIP dynamic facial expression recognition as a Ray pipeline.\n\n" in text
    assert text.rstrip().endswith("Run `dferclip COMMAND --help` for a command's options.")
    assert _has_row(text, "  describe", "LLM stage: write per-class facial-behaviour descriptions (cached)")
    assert _has_row(text, "  train", "fit DFER-CLIP with Ray Train (DDP), checkpoints and resume")
    assert _has_row(text, "  predict", "predict expressions of your own videos with a checkpoint")
