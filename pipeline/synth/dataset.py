"""Write a synthetic expression dataset: mp4 clips plus a ``labels.csv`` the CSV importer reads.

Layout below ``out_dir``::

    videos/clip_00000.mp4 ...   H.264 (or MPEG-4 Part 2 where the PyAV build lacks libx264), yuv420p
    labels.csv                  path,label,split — path relative to out_dir, split train/test

Every clip is rendered from its own generator seeded by ``(seed, class index, clip index)``,
so the dataset is the same whatever the number of worker processes, and a different ``seed``
gives fresh people, scenes and timings for the same classes (what a held-out predict test
needs). Clip ids are assigned in a seeded random order so that neither the id nor the row
order reveals the class.
"""

from __future__ import annotations

import csv
import io
import logging
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.datasets import CLASSES_7
from pipeline.errors import UserError
from pipeline.logs import progress as progress_display
from pipeline.synth.render import render_clip

__all__ = ["generate_dataset", "write_video", "video_codec", "LABELS_NAME", "VIDEOS_DIR"]

logger = logging.getLogger(__name__)

LABELS_NAME = "labels.csv"
VIDEOS_DIR = "videos"
_CODECS = ("libx264", "mpeg4")


def video_codec() -> str:
    """The first encoder of ``libx264``, ``mpeg4`` that this PyAV build has."""
    for name in _CODECS:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises UnknownCodecError (a ValueError) or FFmpegError by version
            continue
    raise RuntimeError(f"this PyAV build has none of the encoders {', '.join(_CODECS)}")


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: int, codec: str | None = None) -> None:
    """Encode RGB frames (H, W, 3 uint8, H and W even) as an mp4 at ``path``, atomically."""
    path = Path(path)
    height, width = frames[0].shape[:2]
    tmp = path.with_name(f".{path.name}.partial")
    codec = codec or video_codec()
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # CRF 20 keeps the cues (a few pixels of brow or lid movement once the face is cropped
        # and downscaled) that the default CRF 23 starts to smear. "ultrafast" with one thread
        # encodes ~3x faster than "veryfast" for ~2.5x the bytes (~250 kB a clip): generation
        # time is what the demo waits on. Parallelism comes from the worker processes instead.
        if codec == "libx264":
            stream.options = {"crf": "20", "preset": "ultrafast"}
        else:
            stream.options = {"qscale": "2"}
            stream.codec_context.qmin, stream.codec_context.qmax = 2, 4
        stream.codec_context.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    os.replace(tmp, path)


@dataclass(frozen=True)
class _ClipJob:
    clip_id: str
    label: str
    seed: tuple[int, int, int]  # (dataset seed, class index, clip index within class)
    path: str
    num_frames: int
    size: tuple[int, int]
    fps: int
    codec: str


def _make_clip(job: _ClipJob) -> str:
    frames = render_clip(job.label, np.random.default_rng(list(job.seed)), num_frames=job.num_frames, size=job.size)
    write_video(job.path, frames, job.fps, job.codec)
    return job.clip_id


def _split(clips_per_class: int, test_fraction: float, rng: np.random.Generator) -> list[str]:
    """Stratified split of one class: round(n * fraction) test clips, at least one of each split
    when the class has two or more clips and the fraction is strictly between 0 and 1."""
    n_test = int(round(clips_per_class * test_fraction))
    if 0 < test_fraction < 1 and clips_per_class >= 2:
        n_test = min(max(n_test, 1), clips_per_class - 1)
    splits = ["test"] * n_test + ["train"] * (clips_per_class - n_test)
    return [splits[i] for i in rng.permutation(clips_per_class)]


def _validate(
    clips_per_class: int, num_frames: int, size: tuple[int, int], fps: int, test_fraction: float, classes: Sequence[str]
) -> None:
    problems = []
    if clips_per_class < 1:
        problems.append(f"clips_per_class must be >= 1, got {clips_per_class}")
    if num_frames < 8:
        problems.append(f"num_frames must be >= 8 (onset and apex need room), got {num_frames}")
    width, height = size
    if width < 96 or height < 96 or width % 2 or height % 2:
        problems.append(f"size must be even and at least 96x96 (yuv420p halves chroma), got {width}x{height}")
    if fps < 1:
        problems.append(f"fps must be >= 1, got {fps}")
    if not 0.0 <= test_fraction < 1.0:
        problems.append(f"test_fraction must be in [0, 1), got {test_fraction}")
    unknown = [c for c in classes if c not in CLASSES_7]
    if unknown or not classes:
        problems.append(f"classes must be a non-empty subset of {', '.join(CLASSES_7)}; got {list(classes)}")
    if problems:
        raise UserError("demo data: " + "; ".join(problems))


def generate_dataset(
    out_dir: str | Path,
    clips_per_class: int,
    seed: int,
    *,
    num_frames: int = 24,
    size: tuple[int, int] = (320, 240),
    fps: int = 12,
    test_fraction: float = 0.2,
    classes: Sequence[str] = CLASSES_7,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Render ``clips_per_class`` clips of every class into ``out_dir`` and return the path of
    its ``labels.csv`` (written last, atomically, so its presence means the dataset is complete).

    ``workers`` processes render in parallel (default: one per CPU, up to 8; 1 renders in this
    process). ``progress(done, total)`` is called after every finished clip; without it, a
    progress bar on a terminal (:func:`pipeline.logs.progress`). Videos from an earlier run into
    the same folder that are not part of this dataset are removed.
    """
    _validate(clips_per_class, num_frames, size, fps, test_fraction, classes)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"demo data: output {out} exists and is not a directory")
    videos = out / VIDEOS_DIR
    videos.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng([seed, 7919])  # the split/id stream, apart from every clip's own
    entries = []  # (class index, clip index, split)
    for k in range(len(classes)):
        for j, split in enumerate(_split(clips_per_class, test_fraction, rng)):
            entries.append((k, j, split))
    order = rng.permutation(len(entries))
    codec = video_codec()
    jobs, rows = [], []
    for position, e in enumerate(order):
        k, j, split = entries[e]
        clip_id = f"clip_{position:05d}"
        rel = f"{VIDEOS_DIR}/{clip_id}.mp4"
        # Seeded by the class's index in CLASSES_7, not in ``classes``: a subset of classes
        # renders the same clips of those classes as the full set.
        class_seed = (seed, CLASSES_7.index(classes[k]), j)
        jobs.append(_ClipJob(clip_id, classes[k], class_seed, str(out / rel), num_frames, tuple(size), fps, codec))
        rows.append((rel, classes[k], split))

    wanted = {Path(job.path).name for job in jobs}
    for old in videos.glob("clip_*.mp4"):
        if old.name not in wanted:
            old.unlink()

    total = len(jobs)
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    bar = progress_display(total, "demo data", unit="clip", logger=logger) if progress is None else None
    report = progress if progress is not None else (lambda _done, _total: bar.update(1))
    try:
        if workers <= 1 or total < 4:
            for done, job in enumerate(jobs, 1):
                _make_clip(job)
                report(done, total)
        else:
            # spawn, not fork: the caller may hold threads (torch, Ray) that fork would copy broken.
            with ProcessPoolExecutor(max_workers=min(workers, total), mp_context=mp.get_context("spawn")) as pool:
                for done, _ in enumerate(pool.map(_make_clip, jobs, chunksize=max(1, total // (4 * workers))), 1):
                    report(done, total)
    finally:
        if bar is not None:
            bar.close()

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("path", "label", "split"))
    writer.writerows(rows)
    labels = out / LABELS_NAME
    tmp = labels.with_name(f".{LABELS_NAME}.partial")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, labels)
    return labels
