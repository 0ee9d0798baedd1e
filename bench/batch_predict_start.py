"""What one batch-predict actor costs to start, in CPU-seconds of its own process (load-independent).

Runs ``run_batch_predict`` over generated clips on a local Ray with 2 CPUs and 2 fused actors
(the CPU default), twice: once as it ships the model to CPU actors (traced to TorchScript,
:class:`pipeline.batch_predict.TracedModel`), once with the model pickled as it is (what GPU
actors get, and what CPU actors got before). The actors are ``FusedActor`` with a probe added
(a subclass defined here, which Ray pickles by value): it reads ``time.process_time()`` — the
CPU of the actor's own process, all its threads — when its ``__init__`` starts (the Ray worker,
Ray, Ray Data and this project imported), once the model is ready (waited for inside
``__init__`` here, so no decoding runs meanwhile: the number is the start alone) and after
each batch. Wall time under load says little; these numbers hold on a busy machine too.

    python bench/batch_predict_start.py [--clips 32] [--frames 32]

Run time: about 1 min on the quiet 2-core VM, 2-4 min under heavy load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from batch_predict import make_workload  # this folder is sys.path[0] when run as a script

import pipeline.batch_predict as bp

PROBE_LOG = "BENCH_BP_START_LOG"  # the environment variable naming the probe's file (Ray's workers inherit it)


class ProbedFusedActor(bp.FusedActor):
    """FusedActor that appends its process's CPU-seconds at each phase to the probe's file."""

    def __init__(self, *args, **kwargs):
        import sys

        at_init = time.process_time()
        super().__init__(*args, **kwargs)
        self.predictor._model.result()  # the start alone: nothing decodes while the model loads
        self.log, self.batches = os.environ[PROBE_LOG], 0
        self.probe = {
            "pid": os.getpid(),
            "init": at_init,
            "model_ready": time.process_time(),
            "open_clip_imported": "open_clip" in sys.modules,
        }

    def __call__(self, batch):
        out = super().__call__(batch)
        self.batches += 1
        with open(self.log, "a") as f:  # one line per batch, the last one per pid wins
            f.write(json.dumps({**self.probe, "batches": self.batches, "end": time.process_time()}) + "\n")
        return out


def _probe(log: Path) -> list[dict]:
    last: dict[int, dict] = {}
    for line in log.read_text().splitlines():
        row = json.loads(line)
        last[row["pid"]] = row
    return list(last.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--frames", type=int, default=32, help="frames per clip (320x240, 25 fps)")
    args = ap.parse_args()
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (2 cores)", flush=True)

    import ray

    from pipeline.config import BatchPredictConfig, PreprocessConfig
    from pipeline.raycluster import local_ray_env

    tmp, clips, ckpt = make_workload("bench-bp-start-", args.clips, args.frames)
    ckpt = str(ckpt)
    sizing = BatchPredictConfig(loaders=2, cpus_per_loader=1.0, batch_size=8, fuse="on")
    prep = PreprocessConfig()
    quiet = lambda _: None  # noqa: E731

    log = tmp / "probe.jsonl"
    os.environ[PROBE_LOG] = str(log)  # before ray.init: its workers inherit it
    local_ray_env()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    traced_for_actors = bp.traced_for_actors
    try:
        bp.run_batch_predict(ckpt, str(clips), str(tmp / "warm"), sizing, prep, log=quiet)  # Ray Data's own actors
        print(
            f"\n{args.clips} clips x {args.frames} frames 320x240, dferclip-micro, 2 fused actors of 1 CPU; "
            "CPU-seconds of each actor's own process (time.process_time), median of the actors\n"
            f"  {'model shipped as':<24} {'at __init__':>12} {'model load':>11} {'start':>8} {'per batch':>10}"
            f" {'open_clip':>10} {'driver CPU s':>13}",
            flush=True,
        )
        for name, tracer in (("traced (TorchScript)", traced_for_actors), ("pickled model", lambda _m: None)):
            bp.traced_for_actors = tracer  # the driver's choice; the actors load whatever it ships
            bp.FusedActor = ProbedFusedActor
            log.write_text("")
            cpu = time.process_time()
            try:
                summary = bp.run_batch_predict(ckpt, str(clips), str(tmp / f"out-{len(name)}"), sizing, prep, log=quiet)
            finally:
                bp.FusedActor = ProbedFusedActor.__mro__[1]
            driver = time.process_time() - cpu
            assert summary["predicted"] == args.clips, summary
            rows = _probe(log)
            med = lambda key, rows=rows: statistics.median(key(r) for r in rows)  # noqa: E731
            per_batch = med(lambda r: (r["end"] - r["model_ready"]) / r["batches"])
            print(
                f"  {name:<24} {med(lambda r: r['init']):>10.2f} s {med(lambda r: r['model_ready'] - r['init']):>9.2f} s"
                f" {med(lambda r: r['model_ready']):>6.2f} s {per_batch:>8.2f} s"
                f" {str(all(r['open_clip_imported'] for r in rows)):>10} {driver:>11.2f} s",
                flush=True,
            )
    finally:
        bp.traced_for_actors = traced_for_actors
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
