"""Preprocess throughput: Haar every frame vs every k-th frame, and 1 vs 2 Ray Data workers.

    .venv/bin/python bench/preprocess.py [--frames 150] [--clips 12] [--repeat 3]

Generates a 640x360 H.264 video with a drawn face (tests/data/drawing.py), then measures:

1. one worker's frames/s (decode -> detect -> crop -> JPEG, in this process, OpenCV limited to
   one thread as inside a 1-CPU worker) with detection on every frame vs every k-th frame
   (k = the config default); Haar runs on a grayscale copy downscaled to <= 320 px
   (``preprocess.detect_max_side``), which is part of the default path being measured;
2. the whole Ray Data job (``run_preprocess``: actors, shards, manifest) on ``--clips`` copies
   of the video with 1 and then 2 workers of 1 CPU each — wall-clock, after Ray is up.

Prints frames/s and the ratios against the baselines measured in the same run. Targets: >= 150
frames/s per worker at the default k; every-k >= 3x every-frame; 2 workers >= 1.7x one.
"""

from __future__ import annotations

import argparse
import shutil
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=150, help="frames in the generated 640x360 video")
    parser.add_argument("--clips", type=int, default=12, help="copies of the video in the Ray job")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of the in-process measurement (best kept)")
    parser.add_argument("--skip-ray", action="store_true", help="only the in-process every-frame/every-k part")
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

        ensure_ray(num_cpus=2)
        job_fps(video, 2, 2, args.frames)  # warm-up: worker processes, imports, the cascade file
        one = job_fps(video, args.clips, 1, args.frames)
        two = job_fps(video, args.clips, 2, args.frames)
        print(
            f"Ray Data job, 1 worker : {one:7.1f} frames/s  (baseline; {args.clips} clips, wall-clock incl. actor start)"
        )
        print(
            f"Ray Data job, 2 workers: {two:7.1f} frames/s  ratio {two / one:.2f}x  "
            f"[target >= 1.7x: {'ok' if two / one >= 1.7 else 'MISSED'}]"
        )
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
