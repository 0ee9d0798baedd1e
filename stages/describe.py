"""Describe stage: per-class facial-behaviour descriptions from an LLM, cached, with provenance.

For each class x sample it renders the prompt template (prompts/templates/), asks the
OpenAI-compatible endpoint in ``describe.base_url`` through the ``openai`` client (concurrent
requests, bounded retries, every answer validated), caches each answer under
``<storage.root>/llm_cache/`` and writes the description set to
``<storage.root>/descriptions/<name>.yaml``. A re-run makes no request; ``--refresh`` asks
again. With ``describe.enabled: false`` it writes the offline set instead (the shipped default
for the classes, or ``describe.description_set``), so the pipeline runs with no endpoint.

  dferclip describe --config configs/demo.yaml --set describe.enabled=true
  dferclip describe --diff runs/descriptions/a.yaml runs/descriptions/b.yaml

The same module is the entrypoint of ``ray job submit -- python -m stages.describe --config X``;
it needs no Ray cluster itself (the requests are asyncio, not Ray tasks).
"""

from __future__ import annotations

from pipeline.cli import run_cli, stage_parser
from pipeline.config import ExperimentConfig, load_config
from pipeline.llm.describe_run import print_diff, write_descriptions

__all__ = ["main", "cli"]


def main(cfg: ExperimentConfig, *, refresh: bool = False) -> str:
    """The stage on a loaded config: :func:`pipeline.llm.describe_run.write_descriptions`; returns the set's location."""
    return write_descriptions(cfg, refresh=refresh)


def cli(argv=None) -> int:
    parser = stage_parser("dferclip describe", __doc__, config_required=False)
    parser.add_argument(
        "--refresh", action="store_true", help="ignore cached answers for this run (and overwrite them)"
    )
    parser.add_argument(
        "--diff",
        nargs=2,
        metavar=("A", "B"),
        help="show two description sets side by side (paths or shipped names); needs no --config",
    )
    args = parser.parse_args(argv)
    if args.diff:
        return run_cli(lambda: print_diff(*args.diff))
    if not args.config:
        parser.error("--config is required (or use --diff A B)")

    def body() -> None:
        main(load_config(args.config, args.overrides), refresh=args.refresh)

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(cli())
