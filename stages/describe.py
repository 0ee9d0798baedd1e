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

import re
from datetime import datetime, timezone

from pipeline.cli import run_cli, stage_parser
from pipeline.config import ExperimentConfig, load_config
from pipeline.llm import (AnswerCache, DescriptionSet, default_description_set_path, diff_description_sets,
                          generate_descriptions, llm_description_set, load_class_set, load_template,
                          read_description_set, resolve_set_path, write_description_set)
from pipeline.storage import Storage


def _log(line: str) -> None:
    print(line, flush=True)


def _offline_set(name: str, user_set: str | None, class_names: list[str]) -> DescriptionSet:
    """The shipped default for these classes (or the user's file), restricted to them."""
    source = resolve_set_path(user_set) if user_set else str(default_description_set_path(class_names))
    original = read_description_set(source)
    classes = original.subset(class_names, source)
    provenance = {"source": "shipped" if user_set is None else "file", "copied_from": source,
                  "original_name": original.name, "original_provenance": original.provenance,
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    notes = {c: original.action_units[c] for c in class_names if c in original.action_units}
    return DescriptionSet(name, classes, provenance, notes)


def main(cfg: ExperimentConfig, *, refresh: bool = False) -> str:
    """Write the experiment's description set; returns its full path."""
    d = cfg.describe
    storage = Storage(cfg.storage.root)
    if d.class_set:
        class_set = load_class_set(d.class_set)
        class_names, class_source = list(class_set.classes), f"class set {class_set.name}"
    else:
        class_names, class_source = cfg.dataset.class_names, f"dataset {cfg.dataset.name}"
    name = d.output_name or re.sub(r"[^A-Za-z0-9._-]+", "-", cfg.name).strip("-.") or "descriptions"

    if not d.enabled:
        dset = _offline_set(name, d.description_set, class_names)
        _log(f"[describe] describe.enabled is false: using the {dset.provenance['source']} set "
             f"{dset.provenance['copied_from']}")
    else:
        template = load_template(d.template)
        result = generate_descriptions(d, class_names, template, AnswerCache(storage), refresh=refresh, log=_log)
        dset = llm_description_set(name, d, template, class_source, result)
        _log(f"[describe] {result.cached} cached + {result.new} new answers, {result.requests} requests, "
             f"{result.seconds:.1f}s")
    path = write_description_set(storage, dset)
    counts = ", ".join(f"{c} {len(v)}" for c, v in dset.classes.items())
    _log(f"[describe] description set {dset.name} (id {dset.id}) written to {path}")
    _log(f"[describe] descriptions per class: {counts}")
    return path


def show_diff(a: str, b: str) -> int:
    left, right = resolve_set_path(a), resolve_set_path(b)
    print(diff_description_sets(read_description_set(left), read_description_set(right), left, right))
    return 0


def cli(argv=None) -> int:
    parser = stage_parser("dferclip describe", __doc__, config_required=False)
    parser.add_argument("--refresh", action="store_true",
                        help="ignore cached answers for this run (and overwrite them)")
    parser.add_argument("--diff", nargs=2, metavar=("A", "B"),
                        help="show two description sets side by side (paths or shipped names); needs no --config")
    args = parser.parse_args(argv)
    if args.diff:
        return run_cli(lambda: show_diff(*args.diff))
    if not args.config:
        parser.error("--config is required (or use --diff A B)")
    return run_cli(lambda: (main(load_config(args.config, args.overrides), refresh=args.refresh), 0)[1])


if __name__ == "__main__":
    raise SystemExit(cli())
