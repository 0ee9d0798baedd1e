"""The `dferclip` command: one subcommand per stage, each also runnable as `python -m stages.<name>`.

Subcommands delegate to the stage module's own ``cli(argv)``, so ``dferclip train ...`` and
``ray job submit -- python -m stages.train ...`` parse and behave identically.

Every command takes ``-v`` (repeatable: more detail, Ray's own info lines) and ``-q`` (warnings
and errors only), before the command (``dferclip -v train ...``) or after it; the parsers from
:func:`command_parser` / :func:`stage_parser` call :func:`pipeline.logs.setup_logging` when
they parse, and :func:`run_cli` does for a command whose parser does not.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable, Sequence

from pipeline import logs
from pipeline.errors import UserError
from pipeline.typed import ConfigError

__all__ = ["main", "command_parser", "stage_parser", "add_logging_args", "run_cli"]

# Verbosity given before the command (``dferclip -v train``); the command's own -v/-q win.
_base_verbosity = logs.NORMAL
# Whether a parser of this command has already set the verbosity (run_cli then leaves it).
_parsed_verbosity = False

# subcommand -> (module, one-line help). Order is the pipeline's order.
COMMANDS: dict[str, tuple[str, str]] = {
    "describe": ("stages.describe", "LLM stage: write per-class facial-behaviour descriptions (cached)"),
    "preprocess": ("stages.preprocess", "videos / frame folders -> face crops in Parquet shards (Ray Data)"),
    "train": ("stages.train", "fit DFER-CLIP with Ray Train (DDP), checkpoints and resume"),
    "evaluate": ("stages.evaluate", "evaluate a checkpoint (or zero-shot CLIP) on a split; --folds: reproduction card"),
    "calibrate": ("stages.calibrate", "fit a temperature on a validation split and store it in the checkpoint"),
    "tune": ("stages.tune", "Ray Tune sweep over context length x temporal depth"),
    "run": ("stages.run", "run describe -> preprocess -> train (-> tune), skipping what is up to date"),
    "submit": ("pipeline.jobs", "submit a stage or the whole run to a Ray cluster"),
    "jobs": ("pipeline.jobs", "status / logs / stop of submitted Ray jobs"),
    "predict": ("stages.predict", "predict expressions of your own videos with a checkpoint"),
    "demo-data": ("stages.demo_data", "generate the synthetic drawn-face expression dataset"),
    "batch-predict": ("stages.batch_predict", "predict a video collection on Ray Data -> Parquet results (resumable)"),
    "demo": ("stages.demo", "the embedded default: the whole pipeline on generated data, then a report"),
    "models": ("pipeline.model.backbone", "list the CLIP architectures this project can build"),
    "pretrain": ("stages.pretrain", "contrastive pretraining of a small CLIP on captioned synthetic faces"),
    "export": ("stages.export", "export a checkpoint to ONNX (checked against PyTorch with onnxruntime)"),
    "serve": ("stages.serve", "serve a checkpoint over HTTP with Ray Serve (predict's JSON per request)"),
    "import-official": ("stages.import_official", "convert a checkpoint saved by the published DFER-CLIP code"),
}


def add_logging_args(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose`` (countable) and ``-q/--quiet`` (args.verbose, args.quiet)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more detail: debug lines and Ray's own log (-vv: Ray's debug lines too)",
    )
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def _verbosity_of(args: argparse.Namespace) -> int:
    if getattr(args, "quiet", False):
        return logs.QUIET
    verbose = getattr(args, "verbose", 0) or 0
    return max(_base_verbosity, logs.NORMAL) + verbose if verbose else _base_verbosity


class _CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose parse sets up logging from the -v/-q it parsed."""

    def parse_known_args(self, args=None, namespace=None):
        global _parsed_verbosity
        parsed, rest = super().parse_known_args(args, namespace)
        logs.setup_logging(_verbosity_of(parsed))
        _parsed_verbosity = True
        return parsed, rest


def command_parser(prog: str, description: str | None = None, **kwargs) -> argparse.ArgumentParser:
    """An ``argparse.ArgumentParser`` with ``-v``/``-q`` that sets up logging when it parses."""
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    parser = _CommandParser(prog=prog, description=description, **kwargs)
    add_logging_args(parser)
    return parser


def stage_parser(prog: str, description: str | None, config_required: bool = True) -> argparse.ArgumentParser:
    """The arguments every stage shares: ``--config FILE``, repeated ``--set KEY=VALUE``, ``-v``/``-q``."""
    parser = command_parser(prog, description)
    parser.add_argument("--config", required=config_required, help="experiment YAML (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=2 (repeatable)",
    )
    return parser


INTERRUPTED = "interrupted; finished work is kept and a re-run resumes from it"


def run_cli(fn: Callable[[], int | None], interrupted: str = INTERRUPTED) -> int:
    """Run a stage's CLI body, turning user errors into a clear message and exit code 2, and
    Ctrl-C into ``interrupted`` (what the user keeps) and exit code 130.

    Sets up logging first unless the command's parser did (a plain argparse parser).
    """
    global _parsed_verbosity
    if not _parsed_verbosity:
        logs.setup_logging(_base_verbosity)
    try:
        code = fn()
    except (ConfigError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    finally:
        _parsed_verbosity = False
    return int(code or 0)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dferclip",
        description="DFER-CLIP dynamic facial expression recognition as a Ray pipeline.",
        epilog="Run `dferclip COMMAND --help` for a command's options.",
    )
    add_logging_args(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


_GLOBAL_FLAGS = re.compile(r"^(-v+|--verbose|-q|--quiet)$")


def main(argv: Sequence[str] | None = None) -> int:
    global _base_verbosity, _parsed_verbosity
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    verbosity = logs.NORMAL
    while argv and _GLOBAL_FLAGS.match(argv[0]):
        flag = argv.pop(0)
        if flag in ("-q", "--quiet"):
            verbosity = logs.QUIET
        else:
            verbosity = max(verbosity, logs.NORMAL) + (1 if flag == "--verbose" else len(flag) - 1)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    _base_verbosity, _parsed_verbosity = verbosity, False
    logs.setup_logging(verbosity)
    try:
        return _dispatch(parser, command, rest)
    finally:
        _base_verbosity, _parsed_verbosity = logs.NORMAL, False


def _dispatch(parser: argparse.ArgumentParser, command: str, rest: list[str]) -> int:
    if command not in COMMANDS:
        parser.error(f"unknown command {command!r}; choose from {', '.join(COMMANDS)}")
    module_name = COMMANDS[command][0]
    if importlib.util.find_spec(module_name) is None:
        print(f"dferclip {command}: this stage is not built yet ({module_name} does not exist).", file=sys.stderr)
        return 3
    module = importlib.import_module(module_name)
    entry = module.cli
    # Modules that serve several subcommands (submit / jobs) take the command name first.
    if getattr(module, "CLI_TAKES_COMMAND", False):
        return int(entry([command, *rest]) or 0)
    return int(entry(rest) or 0)


if __name__ == "__main__":
    # The stages import `pipeline.cli`; run that module's main, not this `__main__` copy of it,
    # so that both see the same verbosity state.
    from pipeline.cli import main as _main

    sys.exit(_main())
