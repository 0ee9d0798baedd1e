"""Batch prediction on Ray Data (2 CPUs) vs in-process ``predict`` on the same clips, side by side.

What each side includes (both read the same checkpoint file and the same generated clips):

A (engine): ``run_batch_predict`` over the clip folder on a local Ray with 2 CPUs, timed from
  the call to the last result shard: the driver's checkpoint load, listing and results folder,
  Ray Data's start, the model traced for the actors (TorchScript, in the driver), the actors'
  start (each a new process that imports Ray Data, the project and torch, then loads the traced
  model from the object store), decode/crop, the forward passes and the Parquet shards. Not included: the Ray cluster's own start (a cluster
  runs before a job is submitted to it), the first ``import ray.data`` in the driver, and Ray
  Data's own per-cluster actors (its stats and autoscaling actors, made by the first Ray Data
  job on a cluster and kept): a 2-clip run before timing makes them, as on a cluster that has
  run a job before. Every timed run starts its own actors, as every job does.
  - fused (the default on a CPU-only cluster, ``batch_predict.fuse: auto``): 2 actors of 1 CPU,
    each decodes, crops and runs the model on its own batches of 8;
  - fused 1x2: 1 actor of 2 CPUs decoding with 2 threads (``loaders: 1``, ``cpus_per_loader:
    2``, ``threads_per_loader: 2``): one model import instead of two, the threads share a GIL;
  - two stages (``fuse: off``, what a GPU cluster runs): 2 loader actors (0.75 CPU) -> 1 model
    actor (0.5 CPU), clips through the object store.
B (baseline): ``iter_predictions(checkpoint, clips, workers=2, batch_size=8)`` in this process:
  the checkpoint load, 2 decode/crop threads and the forward on the calling thread. Python,
  torch and the model's modules are already imported here (a warm-up call before timing): B
  pays no process start and no import, which A's actors must.

Each side runs the first quarter of the clips (at least 8) and then all of them, interleaved
(B, then each A layout, at each size, per repeat) so background load hits all alike. It
prints clips/s end to end (including start) at the full count; the steady rate, the clips/s of
the extra clips between the two counts, in which the start cancels out; the start (end-to-end
time less the clips at the steady rate); when the first batch came back; the CPU seconds of the
process tree (:class:`CpuMeter`: Ray's workers included; a fairer measure than wall time on a
shared machine); and the ratios A / B (target >= 0.85); results are checked against B's. Then
one more engine run over the clips plus a corrupt file and a video whose actor is killed
(SIGKILL, as the OOM killer sends) while it decodes it: the job completes, the corrupt file is
an error row, the victim is predicted after Ray restarts its actor. The machine's load average
is printed at the start and the end.

    python bench/batch_predict.py [--clips 64] [--frames 32] [--repeats 2] [--arch dferclip-micro]
                                  [--fused-only] [--no-faults]

Run time: 4.5 min at the defaults at load average ~13 on the shared 2-core VM; on the quiet VM,
estimated from its last rates, about 2.5 min, and about 3 min with ``--clips 400 --repeats 1
--fused-only`` (generating 400 clips is about half of that). ``--no-faults`` shortens it more.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch


def _kill_once(path: str, stop: threading.Event, kills: list[int]) -> None:
    me = os.getpid()
    while not stop.is_set() and not kills:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == me:
                continue
            try:
                if b"ray::" in (proc / "cmdline").read_bytes() and any(
                    os.readlink(fd) == path for fd in (proc / "fd").iterdir()
                ):
                    os.kill(int(proc.name), signal.SIGKILL)
                    kills.append(int(proc.name))
                    return
            except OSError:
                continue
        stop.wait(0.02)


class CpuMeter:
    """CPU seconds used by this process and every process it started (Ray's raylet, workers and
    actors), sampled every 0.1 s: a process is followed from when it is first seen below this
    one, also after it is re-parented, so an actor that ends between two samples loses at most
    0.1 s. A fairer measure than wall time on a machine shared with other work."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.seen: dict[tuple[int, int], int] = {}  # (pid, start time) -> own CPU ticks, last seen
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._sample()
        self.thread.start()

    def _sample(self) -> None:
        stats = {}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    f = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(proc.name)] = (int(f[1]), int(f[19]), int(f[11]) + int(f[12]))  # ppid, start, utime+stime
        followed = {pid for pid, _ in self.seen} | {os.getpid()}
        grew = True
        while grew:  # descendants of the processes followed so far
            new = {pid for pid, (ppid, _, _) in stats.items() if ppid in followed} - followed
            followed |= new
            grew = bool(new)
        for pid in followed:
            if pid in stats:
                _, start, ticks = stats[pid]
                self.seen[(pid, start)] = ticks

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            self._sample()

    def seconds(self) -> float:
        self._sample()
        return sum(self.seen.values()) / self.tick


@dataclasses.dataclass
class Run:
    clips: int
    seconds: float  # end to end
    first: float  # first batch back
    cpu: float


def _summary(runs: list[Run]) -> tuple[float, float, float, float, float]:
    """From runs at two clip counts: median clips/s end to end (at the larger count), steady
    rate (clips/s of the extra clips: the start cancels out), the start (end-to-end time less
    the clips at the steady rate), median first batch back and CPU s (larger count)."""
    big = max(r.clips for r in runs)
    small = min(r.clips for r in runs)
    t_big = statistics.median(r.seconds for r in runs if r.clips == big)
    t_small = statistics.median(r.seconds for r in runs if r.clips == small)
    steady = (big - small) / max(t_big - t_small, 1e-9)
    return (
        big / t_big,
        steady,
        t_big - big / steady,
        statistics.median(r.first for r in runs if r.clips == big),
        statistics.median(r.cpu for r in runs if r.clips == big),
    )


def make_workload(prefix: str, n: int, frames: int, arch: str = "dferclip-micro") -> tuple[Path, Path, Path]:
    """A temporary folder with ``n`` generated 320x240 clips of ``frames`` frames (25 fps) in
    ``clips/`` and a random-weight ``arch`` checkpoint (T = 8): (folder, clips, checkpoint).
    Shared with bench/batch_predict_start.py, so both measure the same workload."""
    from pipeline.config import ModelConfig
    from pipeline.datasets import CLASSES_7
    from pipeline.model import build_model, save_checkpoint
    from pipeline.synth import render_clip, write_video

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    clips = tmp / "clips"
    clips.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        label = CLASSES_7[i % len(CLASSES_7)]
        write_video(clips / f"c{i:03d}.mp4", render_clip(label, rng, num_frames=frames, size=(320, 240)), 25)
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(clip_model=arch, pretrained=None, num_frames=8, text_source="class_names"), list(CLASSES_7)
    )
    return tmp, clips, save_checkpoint(model, tmp / "model.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--frames", type=int, default=32, help="frames per clip (320x240, 25 fps)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--arch", default="dferclip-micro", help="CLIP architecture (random weights)")
    ap.add_argument("--fused-only", action="store_true", help="measure the default fused layout only")
    ap.add_argument("--no-faults", action="store_true", help="skip the corrupt-file / killed-actor run")
    args = ap.parse_args()
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (2 cores)", flush=True)

    import ray
    import ray.data  # noqa: F401 — imported before timing (module doc)

    from pipeline.batch_predict import read_results, run_batch_predict
    from pipeline.config import BatchPredictConfig, PreprocessConfig
    from pipeline.predict import iter_predictions
    from pipeline.raycluster import local_ray_env
    from pipeline.synth import render_clip, write_video

    tmp, clips, ckpt = make_workload("bench-bp-", args.clips, args.frames, args.arch)
    prep = PreprocessConfig()
    fused = BatchPredictConfig(loaders=2, cpus_per_loader=1.0, batch_size=8, fuse="on")
    two = BatchPredictConfig(loaders=2, cpus_per_loader=0.75, models=1, cpus_per_model=0.5, batch_size=8, fuse="off")
    fused_1x2 = BatchPredictConfig(loaders=1, cpus_per_loader=2.0, threads_per_loader=2, batch_size=8, fuse="on")
    variants = {"fused": fused}
    if not args.fused_only:
        variants.update({"fused 1x2": fused_1x2, "two stages": two})
    paths = sorted(str(p) for p in clips.iterdir())
    list(iter_predictions(str(ckpt), paths[:1], workers=2, device="cpu"))  # B's imports, before timing

    small = tmp / "small"  # the first quarter of the clips: with the full set, the steady rate
    small.mkdir()
    n_small = max(8, args.clips // 4)
    for p in paths[:n_small]:
        shutil.copy(p, small)
    sets = {n_small: (str(small), sorted(str(p) for p in small.iterdir())), args.clips: (str(clips), paths)}

    local_ray_env()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    quiet = lambda _: None  # noqa: E731
    meter = CpuMeter()
    runs: dict[str, list[Run]] = {k: [] for k in ["in-process predict", *variants]}
    try:
        # Ray Data's per-cluster actors (module doc); then the cluster's own start settles.
        warm = tmp / "warm"
        warm.mkdir()
        for p in paths[:2]:
            shutil.copy(p, warm)
        run_batch_predict(str(ckpt), str(warm), str(tmp / "out-warm"), fused, prep, log=quiet)
        time.sleep(2)
        for r in range(args.repeats):
            for n, (folder, some) in sets.items():
                cpu, t = meter.seconds(), time.perf_counter()
                base, first = [], None
                for p in iter_predictions(str(ckpt), some, workers=2, batch_size=8, device="cpu"):
                    base.append(p)
                    first = first or time.perf_counter() - t
                runs["in-process predict"].append(Run(n, time.perf_counter() - t, first, meter.seconds() - cpu))
                line = f"repeat {r}, {n} clips: in-process {n / runs['in-process predict'][-1].seconds:.2f} clips/s"
                for name, sizing in variants.items():
                    out = tmp / f"out-{name.replace(' ', '-')}-{r}-{n}"
                    cpu, t = meter.seconds(), time.perf_counter()
                    summary = run_batch_predict(str(ckpt), folder, str(out), sizing, prep, log=quiet)
                    seconds = time.perf_counter() - t
                    assert summary["predicted"] == n, summary
                    first_s = summary["last_run"]["first_result"][0]
                    runs[name].append(Run(n, seconds, first_s, meter.seconds() - cpu))
                    rows = {x["path"]: x for x in read_results(out).to_pylist()}
                    worst = max(abs(rows[p.path]["probability"] - p.probability) for p in base)
                    same = sum(rows[p.path]["label"] == p.label for p in base)
                    line += (
                        f"; {name} {n / seconds:.2f} clips/s (first batch after {first_s:.1f} s), "
                        f"labels equal {same}/{n}, max |dp| {worst:.1e}"
                    )
                print(line, flush=True)

        print(
            f"\n{args.clips} clips x {args.frames} frames 320x240, {args.arch}, 2 CPUs, medians of {args.repeats}; "
            f"steady: clips/s of the {args.clips - n_small} clips beyond {n_small} (the start cancels out); "
            f"start: end-to-end time less the clips at the steady rate\n"
            f"  {'':<30} {'end to end':>11} {'steady':>11} {'start':>7} {'first batch':>12} {'CPU s':>7}",
            flush=True,
        )
        b = _summary(runs["in-process predict"])
        for name, rs in runs.items():
            a = _summary(rs)
            side = "B" if name == "in-process predict" else "A"
            label = name if side == "B" else f"Ray Data, {name}"
            print(
                f"  {label + f' ({side})':<30} {a[0]:>6.2f} c/s {a[1]:>6.2f} c/s {a[2]:>5.1f} s {a[3]:>10.1f} s {a[4]:>7.1f}",
                flush=True,
            )
            if side == "A":
                print(
                    f"  {'  ratio A / B':<30} {a[0] / b[0]:>9.2f}x {a[1] / b[1]:>9.2f}x {'':>20} {b[4] / a[4]:>6.2f}x"
                    "  (target >= 0.85; CPU: B's CPU s / A's)",
                    flush=True,
                )

        if not args.no_faults:  # keeps going past a corrupt file and a killed actor
            (clips / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video" * 40)
            victim = clips / "zz_victim.mp4"
            write_video(victim, render_clip("fear", np.random.default_rng(1), num_frames=250, size=(320, 240)), 25)
            stop, kills = threading.Event(), []
            killer = threading.Thread(target=_kill_once, args=(str(victim), stop, kills), daemon=True)
            killer.start()
            try:
                summary = run_batch_predict(str(ckpt), str(clips), str(tmp / "faults"), fused, prep, log=quiet)
            finally:
                stop.set()
                killer.join()
            results = read_results(tmp / "faults").to_pylist()
            errors = [r for r in results if not r["ok"]]
            victim_row = [r for r in results if r["path"] == str(victim)]
            print(
                f"\nfaults (fused): {summary['inputs']} inputs, {summary['predicted']} predicted, "
                f"{summary['errors']} error row(s) {[(Path(e['path']).name, e['error'][:40]) for e in errors]}; "
                f"actors killed: {len(kills)}; the victim predicted: {bool(victim_row and victim_row[0]['ok'])}",
                flush=True,
            )
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)  # the clips and results (hundreds of MB at 400 clips)
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
