"""The `dferclip` command: one subcommand per stage, each also runnable as `python -m stages.<name>`.

Subcommands delegate to the stage module's own ``cli(argv)``, so ``dferclip train ...`` and
``ray job submit -- python -m stages.train ...`` parse and behave identically.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence

from pipeline.errors import UserError
from pipeline.typed import ConfigError

__all__ = ["main", "stage_parser", "run_cli"]

# subcommand -> (module, one-line help). Order is the pipeline's order.
COMMANDS: dict[str, tuple[str, str]] = {
    "describe": ("stages.describe", "LLM stage: write per-class facial-behaviour descriptions (cached)"),
    "preprocess": ("stages.preprocess", "videos / frame folders -> face crops in Parquet shards (Ray Data)"),
    "train": ("stages.train", "fit DFER-CLIP with Ray Train (DDP), checkpoints and resume"),
    "evaluate": ("stages.evaluate", "evaluate a checkpoint (or zero-shot CLIP) on a split"),
    "tune": ("stages.tune", "Ray Tune sweep over context length x temporal depth"),
    "run": ("stages.run", "run describe -> preprocess -> train (-> tune), skipping what is up to date"),
    "submit": ("pipeline.jobs", "submit a stage or the whole run to a Ray cluster"),
    "jobs": ("pipeline.jobs", "status / logs / stop of submitted Ray jobs"),
    "predict": ("stages.predict", "predict expressions of your own videos with a checkpoint"),
    "demo-data": ("stages.demo_data", "generate the synthetic drawn-face expression dataset"),
    "demo": ("stages.demo", "the embedded default: the whole pipeline on generated data, then a report"),
    "models": ("pipeline.model.backbone", "list the CLIP architectures this project can build"),
}


def stage_parser(prog: str, description: str | None, config_required: bool = True) -> argparse.ArgumentParser:
    """The arguments every stage shares: ``--config FILE`` and repeated ``--set KEY=VALUE``."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=config_required, help="experiment YAML (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=2 (repeatable)")
    return parser


def run_cli(fn: Callable[[], int | None]) -> int:
    """Run a stage's CLI body, turning user errors into a clear message and exit code 2."""
    try:
        code = fn()
    except (ConfigError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is kept and a re-run resumes from it", file=sys.stderr)
        return 130
    return int(code or 0)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dferclip",
        description="DFER-CLIP dynamic facial expression recognition as a Ray pipeline.",
        epilog="Run `dferclip COMMAND --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        parser.error(f"unknown command {command!r}; choose from {', '.join(COMMANDS)}")
    module_name = COMMANDS[command][0]
    if importlib.util.find_spec(module_name) is None:
        print(f"dferclip {command}: this stage is not built yet ({module_name} does not exist).", file=sys.stderr)
        return 3
    module = importlib.import_module(module_name)
    entry = getattr(module, "cli")
    # Modules that serve several subcommands (submit / jobs) take the command name first.
    if getattr(module, "CLI_TAKES_COMMAND", False):
        return int(entry([command, *rest]) or 0)
    return int(entry(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
