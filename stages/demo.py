"""The embedded default: the whole pipeline on generated data, on a laptop CPU, then a report.

1. generates a synthetic dynamic-expression dataset (``dferclip demo-data``: drawn faces going
   from neutral to one of the 7 expressions) unless it is already there;
2. runs describe -> preprocess -> train with ``dferclip run`` (the shipped description set, Haar
   face detection, the tiny random-initialised CLIP; no GPU, no internet);
3. evaluates the final checkpoint on the generated test split;
4. writes ``<storage.root>/report/report.html`` with the dataset, descriptions, curves,
   confusion matrix, per-class recall, sample face crops and the time of each stage.

    dferclip demo                                  # configs/demo.yaml
    dferclip demo --set train.epochs=4 --clips-per-class 8     # a quicker, weaker run
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.cli import run_cli, stage_parser
from pipeline.config import ExperimentConfig, load_config
from pipeline.errors import UserError

__all__ = ["main", "cli", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def main(cfg: ExperimentConfig, *, clips_per_class: int = 60, seed: int = 0, log=print) -> dict:
    from pipeline.data.shards import read_manifest, shard_dir, shard_paths
    from pipeline.report_page import write_report
    from pipeline.storage import Storage
    from stages import demo_data, evaluate, run

    # validate
    if cfg.dataset.name != "demo" or not cfg.dataset.root or not cfg.dataset.annotations:
        raise UserError("the demo needs dataset.name: demo with dataset.root and dataset.annotations set "
                        f"(see {DEFAULT_CONFIG})")
    storage = Storage(cfg.storage.root)
    start = time.monotonic()
    timings: dict[str, float] = {}

    # 1. data
    labels = Path(cfg.dataset.annotations)
    if labels.exists():
        log(f"[demo] using the generated dataset in {labels.parent} (delete it to generate anew)")
    else:
        t = time.monotonic()
        demo_data.main(cfg.dataset.root, clips_per_class=clips_per_class, seed=seed)
        timings["generate data"] = time.monotonic() - t

    # 2. describe -> preprocess -> train
    summary = run.main(cfg, log=log)
    timings.update({stage: rec.seconds for stage, rec in summary.records.items() if stage in summary.ran})
    train_out = summary.records["train"].outputs
    run_dir, checkpoint = train_out.get("run_dir"), train_out.get("checkpoint")
    if not checkpoint or not Path(checkpoint).exists():
        raise UserError(f"training left no final checkpoint (outputs: {train_out})")

    # 3. evaluate
    t = time.monotonic()
    evaluation = evaluate.main(cfg, checkpoint=checkpoint, split="test", log=log)
    timings["evaluate"] = time.monotonic() - t

    # 4. report
    t = time.monotonic()
    rel = shard_dir(storage, cfg.dataset.name)
    report = write_report(
        storage.local_path("report"),
        title=f"DFER-CLIP demo — {cfg.name}",
        manifest=read_manifest(storage, rel),
        description_set=summary.records["describe"].outputs["description_set"],
        train_dir=run_dir,
        evaluation=evaluation,
        shard_files=shard_paths(storage, rel),
        timings=timings,
    )
    timings["report"] = time.monotonic() - t
    result = {"uar": evaluation["uar"], "war": evaluation["war"], "report": str(report),
              "checkpoint": checkpoint, "seconds": time.monotonic() - start, "timings": timings}
    storage.write_text(json.dumps(result, indent=2), "report", "demo.json")
    log(f"[demo] test UAR {100 * evaluation['uar']:.1f}  WAR {100 * evaluation['war']:.1f}  "
        f"in {result['seconds']:.0f} s")
    log(f"[demo] report: {report}")
    log(f"[demo] checkpoint: {checkpoint}  (try: dferclip predict --checkpoint {checkpoint} VIDEO)")
    return result


def cli(argv=None) -> int:
    parser = stage_parser("dferclip demo", __doc__, config_required=False)
    parser.add_argument("--clips-per-class", type=int, default=60, help="clips generated per class (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated dataset")
    args = parser.parse_args(argv)
    return run_cli(lambda: (main(load_config(args.config or DEFAULT_CONFIG, args.overrides),
                                 clips_per_class=args.clips_per_class, seed=args.seed), 0)[1])


if __name__ == "__main__":
    raise SystemExit(cli())
