"""Preprocess throughput: Haar every frame vs every k-th frame, and 1 vs 2 Ray Data workers.

    .venv/bin/python bench/preprocess.py [--frames 150] [--clips 12] [--repeat 3]

Generates a 640x360 H.264 video with a drawn face (tests/data/drawing.py), then measures:

1. one worker's frames/s (decode -> detect -> crop -> JPEG, in this process, OpenCV limited to
   one thread as inside a 1-CPU worker) with detection on every frame vs every k-th frame
   (k = the config default); Haar runs on a grayscale copy downscaled to <= 320 px
   (``preprocess.detect_max_side``), which is part of the default path being measured;
2. the whole Ray Data job (``run_preprocess``: actors, shards, manifest) on ``--clips`` copies
   of the video with 1 and then each of ``--workers`` (default 2) workers of 1 CPU each —
   wall-clock, after Ray is up; on a 16-core machine ``--workers 1,2,4,8 --clips 48``.

Prints frames/s and the ratios against the baselines measured in the same run. Targets: >= 150
frames/s per worker at the default k; every-k >= 3x every-frame; 2 workers >= 1.7x one; 8 workers
>= 6x one.

3. Memory (``--skip-memory`` leaves it out): a 1920x1080, 2-minute, 25 fps H.264 video with no
   face (generated once, cached in the temp folder), preprocessed with the default settings by
   ``ClipWorker`` — the Ray Data actor's code — in a fresh process, and in a fresh Ray worker
   process unless ``--skip-ray``; then read as ``dferclip predict`` reads a clip
   (``ClipLoader.load``). Prints each one's peak RSS against the 1 GB target, and against the
   old behaviour (every frame held until a face is found): measured over the video's first
   ``--baseline-seconds`` and extrapolated to its length, since holding 2 minutes of 1080p takes
   ~18 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.data.drawing

from tests.data.drawing import face_frames, write_video  # noqa: E402


def worker_fps(video: Path, every: int, repeat: int) -> float:
    """Best-of-``repeat`` frames/s of the per-clip work one worker does."""
    from pipeline.config import PreprocessConfig
    from pipeline.data.faces import ClipCropper, HaarDetector
    from pipeline.data.video import open_frames

    prep = PreprocessConfig()
    cropper = ClipCropper(
        HaarDetector(max_side=prep.detect_max_side),
        detect_every=every,
        margin=prep.margin,
        crop_size=prep.crop_size,
        jpeg_quality=prep.jpeg_quality,
    )
    best = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        res = cropper.run(open_frames(video).frames)
        best = max(best, res.num_decoded / (time.perf_counter() - t))
        assert not res.face_fallback, "the drawn face was not detected"
    return best


def job_fps(video: Path, clips: int, workers: int, frames_per_clip: int) -> float:
    from pipeline.config import DatasetConfig, PreprocessConfig
    from pipeline.preprocess import run_preprocess

    root = Path(tempfile.mkdtemp(prefix="bench-prep-"))
    try:
        prep = PreprocessConfig(num_workers=workers, cpus_per_worker=1.0, shard_target_mb=4.0)
        items = [{"clip_id": f"c{i:03d}", "path": str(video), "label": i % 7, "split": "train"} for i in range(clips)]
        t = time.perf_counter()
        manifest = run_preprocess(str(root), DatasetConfig(name="demo"), prep, clips=items, log=lambda _: None)
        elapsed = time.perf_counter() - t
        assert manifest["counts"]["clips"] == clips and manifest["num_errors"] == 0
        return clips * frames_per_clip / elapsed
    finally:
        shutil.rmtree(root, ignore_errors=True)


# Scaling targets of the Ray Data job: n workers >= this many times one worker (the clip count
# must give every worker a few clips: use --clips >= 4 x the largest count).
WORKER_TARGETS = {2: 1.7, 8: 6.0}


# The memory part's video: 1920x1080, 2 minutes, 25 fps, no face.
MEM_W, MEM_H, MEM_SECONDS, MEM_FPS = 1920, 1080, 120, 25
TARGET_MB = 1024


def noface_video() -> Path:
    """The memory part's video, made once and kept in the temp folder (~20-60 s to encode)."""
    import av
    import numpy as np

    path = Path(tempfile.gettempdir()) / "dferclip-bench" / f"noface_{MEM_W}x{MEM_H}_{MEM_SECONDS}s_{MEM_FPS}fps.mp4"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(f".{os.getpid()}.part.mp4")
    # A soft diagonal gradient drifting sideways: nothing face-like, cheap to draw and encode.
    yy, xx = np.mgrid[0:MEM_H, 0 : MEM_W + MEM_FPS * MEM_SECONDS]
    luma = (60 + 120 * (0.5 + 0.5 * np.sin((xx + yy) / 300.0))).astype(np.uint8)
    chroma = np.full((MEM_H // 2, MEM_W), 128, np.uint8)
    with av.open(str(part), "w") as out:
        stream = out.add_stream("libx264", rate=MEM_FPS)
        stream.width, stream.height, stream.pix_fmt = MEM_W, MEM_H, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for t in range(MEM_FPS * MEM_SECONDS):
            y = np.ascontiguousarray(luma[:, t : t + MEM_W])
            frame = av.VideoFrame.from_ndarray(np.concatenate([y, chroma]), format="yuv420p")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    part.replace(path)
    return path


def _peak_mb() -> float:
    """This process's peak resident set size, MB (ru_maxrss: KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:  # Linux; the old-behaviour baseline needs the current RSS
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def measure_worker(video: str, store: str) -> dict:
    """Preprocess ``video`` as one Ray Data actor does: ClipWorker, default settings, a shard written."""
    import pyarrow as pa

    from pipeline.config import PreprocessConfig
    from pipeline.preprocess import ClipWorker
    from pipeline.typed import to_dict

    prep = PreprocessConfig()
    worker = ClipWorker(store, "shards/bench", to_dict(prep), "bench", int(prep.shard_target_mb * 2**20))
    clip = {"clip_id": "noface", "source": video, "label": 2, "label_name": "neutral", "splits": ["1:train"]}
    t = time.perf_counter()
    row = worker(pa.Table.from_pylist([{**clip, "dataset": "bench"}])).to_pylist()[0]
    return {
        "peak_mb": _peak_mb(),
        "seconds": time.perf_counter() - t,
        "ok": row["ok"],
        "reason": row["reason"],
        "frames": row["num_frames"],
        "face_fallback": row["face_fallback"],
    }


def measure_predict(video: str) -> dict:
    """Read ``video`` as ``dferclip predict`` does (ClipLoader.load: crops, 16 frames, 224 px)."""
    from pipeline.config import PreprocessConfig
    from pipeline.predict import ClipLoader

    loader = ClipLoader(16, 224, PreprocessConfig())
    t = time.perf_counter()
    try:
        clip = loader.load(video)
        answer = f"answered: {clip.video.shape[0]} frames for the model from {clip.frames} decoded"
        answer += ", no face (centre crops)" if clip.face_fallback else ""
    except Exception as exc:  # noqa: BLE001 — an error is an answer too, if it is clear
        answer = f"error: {exc}"
    return {"peak_mb": _peak_mb(), "seconds": time.perf_counter() - t, "answer": answer}


def measure_old(video: str, seconds: float) -> dict:
    """The old behaviour on a clip with no face: every decoded frame held until the end."""
    from pipeline.data.video import open_frames

    n = int(seconds * MEM_FPS)
    base = _rss_mb()
    held = []
    for frame in open_frames(video).frames:
        held.append(frame)
        if len(held) == n:
            break
    now = _rss_mb()
    return {"base_mb": base, "rss_mb": now, "frames": len(held)}


def _in_subprocess(kind: str, *args: str) -> dict:
    """Run ``--child kind args`` in a fresh interpreter: its peak RSS is this measurement's alone."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _verdict(peak: float) -> str:
    return f"[target <= {TARGET_MB} MB: {'ok' if peak <= TARGET_MB else 'MISSED'}]"


def memory_part(baseline_seconds: float, with_ray: bool) -> None:
    t = time.perf_counter()
    video = str(noface_video())
    total = MEM_FPS * MEM_SECONDS
    print(
        f"memory: {MEM_W}x{MEM_H}, {MEM_SECONDS} s, {MEM_FPS} fps H.264, no face ({total} frames; "
        f"video ready in {time.perf_counter() - t:.0f} s); default preprocess settings"
    )
    old = _in_subprocess("old", video, str(baseline_seconds))
    per_frame = (old["rss_mb"] - old["base_mb"]) / old["frames"]
    old_peak = old["rss_mb"] + per_frame * (total - old["frames"])
    print(
        f"old behaviour (every frame held until a face is found): {old['rss_mb']:.0f} MB after "
        f"{old['frames']} frames -> ~{old_peak / 1024:.1f} GB for {total} (extrapolated; baseline)"
    )
    store = tempfile.mkdtemp(prefix="bench-mem-")
    try:
        runs = [("preprocess worker (ClipWorker, own process)", _in_subprocess("worker", video, store))]
        if with_ray:
            import ray

            fresh = ray.remote(num_cpus=1, max_calls=1)(measure_worker)  # max_calls=1: a process of its own
            runs.append(("preprocess worker (ClipWorker, Ray worker)", ray.get(fresh.remote(video, store))))
        for name, r in runs:
            what = (
                f"{r['frames']} crops, face_fallback={r['face_fallback']}" if r["ok"] else f"error row: {r['reason']}"
            )
            print(
                f"{name}: peak RSS {r['peak_mb']:6.0f} MB  ratio {r['peak_mb'] / old_peak:.3f}x old  "
                f"{_verdict(r['peak_mb'])}  ({r['seconds']:.0f} s; {what})"
            )
    finally:
        shutil.rmtree(store, ignore_errors=True)
    r = _in_subprocess("predict", video)
    print(
        f"predict clip reading (ClipLoader.load, own process): peak RSS {r['peak_mb']:6.0f} MB  "
        f"ratio {r['peak_mb'] / old_peak:.3f}x old  {_verdict(r['peak_mb'])}  ({r['seconds']:.0f} s; {r['answer']})"
    )


def _child(kind: str, args: list[str]) -> int:
    import cv2

    cv2.setNumThreads(1)  # as in a 1-CPU worker
    if kind == "worker":
        result = measure_worker(args[0], args[1])
    elif kind == "predict":
        result = measure_predict(args[0])
    else:
        result = measure_old(args[0], float(args[1]))
    print(json.dumps(result))
    return 0


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        return _child(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=150, help="frames in the generated 640x360 video")
    parser.add_argument("--clips", type=int, default=12, help="copies of the video in the Ray job")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of the in-process measurement (best kept)")
    parser.add_argument(
        "--workers", default="1,2", help="Ray Data worker counts to run (1 CPU each; 1 is the baseline), e.g. 1,2,4,8"
    )
    parser.add_argument("--skip-ray", action="store_true", help="no Ray Data job, no Ray worker in the memory part")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the 1080p no-face memory part")
    parser.add_argument(
        "--baseline-seconds", type=float, default=8.0, help="seconds of video the old-behaviour baseline holds"
    )
    args = parser.parse_args()

    import cv2

    from pipeline.config import PreprocessConfig

    cv2.setNumThreads(1)
    k = PreprocessConfig().detect_every
    tmp = Path(tempfile.mkdtemp(prefix="bench-video-"))
    video = write_video(tmp / "face_640x360.mp4", face_frames(args.frames, 640, 360, size=150, drift=1))
    print(
        f"video: 640x360, {args.frames} frames, H.264; Haar on grayscale downscaled to <= "
        f"{PreprocessConfig().detect_max_side} px; crop {PreprocessConfig().crop_size} px, JPEG q{PreprocessConfig().jpeg_quality}"
    )

    every1 = worker_fps(video, 1, args.repeat)
    everyk = worker_fps(video, k, args.repeat)
    print(f"one worker, detect every frame : {every1:7.1f} frames/s  (baseline)")
    print(
        f"one worker, detect every {k} (k) : {everyk:7.1f} frames/s  ratio {everyk / every1:.2f}x  "
        f"[targets: >= 150 frames/s: {'ok' if everyk >= 150 else 'MISSED'}; >= 3x: {'ok' if everyk / every1 >= 3 else 'MISSED'}]"
    )

    if not args.skip_ray:
        from pipeline.raycluster import ensure_ray

        counts = sorted({int(w) for w in args.workers.split(",")} | {1})
        ensure_ray(num_cpus=max(2, *counts))
        job_fps(video, 2, 2, args.frames)  # warm-up: worker processes, imports, the cascade file
        one = job_fps(video, args.clips, 1, args.frames)
        print(
            f"Ray Data job, 1 worker : {one:7.1f} frames/s  (baseline; {args.clips} clips, wall-clock incl. actor start)"
        )
        for n in counts[1:]:
            fps = job_fps(video, args.clips, n, args.frames)
            target = WORKER_TARGETS.get(n)
            verdict = f"  [target >= {target}x: {'ok' if fps / one >= target else 'MISSED'}]" if target else ""
            print(f"Ray Data job, {n} workers: {fps:7.1f} frames/s  ratio {fps / one:.2f}x{verdict}")
    shutil.rmtree(tmp, ignore_errors=True)
    if not args.skip_memory:
        memory_part(args.baseline_seconds, with_ray=not args.skip_ray)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
