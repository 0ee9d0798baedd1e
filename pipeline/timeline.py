"""Long videos as timelines: windows of the model's T frames, per face track, and their aggregate.

A video longer than one clip (``timeline.mode``: ``auto`` past ``auto_after_s`` seconds, or
``on``) is not squeezed into T frames: it is cut into windows of ``window_s`` seconds every
``stride_s`` seconds, and each window of each face track (:mod:`pipeline.data.tracks`) is one
clip for the model — its T frames picked as evaluation picks them (segment middles,
:func:`~pipeline.train.sampling.sample_indices`), cropped with the preprocess crop rule and
JPEG round trip, resized by the evaluation transform. Each window gets its probabilities and
time span; each track gets an aggregate label (``timeline.aggregate``); the video's label is
its track 0's (the face seen most), so ``label``/``probability`` keep their meaning.

Windows (frame indices, ``fps`` the video's rate or ``timeline.folder_fps`` for frame folders):
``W = round(window_s * fps)``, ``S = round(stride_s * fps)`` (each at least 1); windows
``[k*S, k*S + W)`` while they fit, plus one ending at the last frame when the stride leaves a
tail; a video of at most W frames is one window. A track is scored on the windows it spans for
at least ``min_coverage`` of their frames (a track too short for any gets its best-covered one).

The cost is two decodes of the video (boxes first, then only the sampled frames are cropped)
and one forward pass per window and track; memory is bounded by the caps of the preprocess
section (``max_clip_seconds`` ...) and holds the sampled crops only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import TimelineConfig
from pipeline.data.tracks import Track, TrackScan

__all__ = [
    "TimelineConfig",
    "LoadedTimeline",
    "windows",
    "track_windows",
    "probe_seconds",
    "wants_timeline",
    "load_timeline",
    "aggregate",
    "timeline_result",
    "plot_timeline",
    "png_name",
    "write_timeline_png",
]


def windows(num_frames: int, fps: float, window_s: float, stride_s: float) -> list[tuple[int, int]]:
    """The windows ``[(start, end)]`` (frame indices, end exclusive) of the module doc."""
    W = max(1, round(window_s * fps))
    S = max(1, round(stride_s * fps))
    if num_frames <= W:
        return [(0, num_frames)]
    out = [(a, a + W) for a in range(0, num_frames - W + 1, S)]
    if out[-1][1] < num_frames:
        out.append((num_frames - W, num_frames))
    return out


def track_windows(track: Track, wins: list[tuple[int, int]], min_coverage: float) -> list[tuple[int, int]]:
    """The windows ``track`` is scored on: those it spans for >= ``min_coverage`` of their frames."""
    lo, hi = track.first, track.last + 1

    def overlap(w: tuple[int, int]) -> int:
        return max(0, min(w[1], hi) - max(w[0], lo))

    kept = [w for w in wins if overlap(w) >= min_coverage * (w[1] - w[0])]
    if not kept:
        kept = [max(wins, key=lambda w: (overlap(w), -w[0]))]
    return kept


def probe_seconds(source: str | os.PathLike, folder_fps: float) -> float | None:
    """A local video's or frame folder's duration from its header / file count, without
    decoding; None when unknown (a URI, a stream without a duration)."""
    from pipeline.storage import is_uri

    if is_uri(source):
        return None
    path = Path(source)
    if path.is_dir():
        from pipeline.data.video import list_frame_files

        try:
            return len(list_frame_files(path)) / folder_fps
        except Exception:  # noqa: BLE001 — unreadable: the load reports it
            return None
    import av

    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
            if container.duration:
                return container.duration / 1e6
            rate = stream.average_rate or stream.guessed_rate
            if stream.frames and rate:
                return stream.frames / float(rate)
    except Exception:  # noqa: BLE001 — not a video: the load reports it with its reason
        return None
    return None


def wants_timeline(source: str | os.PathLike, cfg: TimelineConfig | None) -> bool:
    """Whether ``source`` is scored as a timeline under ``cfg`` (None: never)."""
    if cfg is None or cfg.mode == "off":
        return False
    if cfg.mode == "on":
        return True
    seconds = probe_seconds(source, cfg.folder_fps)
    return seconds is not None and seconds > cfg.auto_after_s


@dataclass
class LoadedTimeline:
    """A video's windows ready for the model: ``videos`` (K, T, S, S, 3) uint8, and per row the
    track and window it is (``plan``)."""

    videos: np.ndarray
    plan: list[tuple[int, int, int]]  # (track id, start frame, end frame) per row of videos
    scan: TrackScan
    fps: float  # the rate the windows were cut at
    cfg: TimelineConfig

    @property
    def face_fallback(self) -> bool:
        return self.scan.face_fallback

    @property
    def frames(self) -> int:
        return self.scan.num_frames


def load_timeline(source: str | os.PathLike, loader, cfg: TimelineConfig) -> LoadedTimeline:
    """Scan ``source`` for face tracks and build every (track, window) clip with ``loader``'s
    crop settings, detector and transform (a :class:`pipeline.predict.ClipLoader`).
    Raises UnreadableClip / ClipOverCap as a clip load does."""
    import pyarrow as pa

    from pipeline.data.tracks import crop_frames, scan_tracks
    from pipeline.data.video import ClipLimits, open_frames
    from pipeline.train.sampling import sample_indices

    prep = loader.prep
    limits = ClipLimits.of(prep)
    stream = open_frames(source, threads=1, limits=limits)
    scan = scan_tracks(
        stream.frames, loader.detector(), detect_every=prep.detect_every, max_tracks=cfg.max_tracks, fps=stream.fps
    )
    fps = scan.fps or cfg.folder_fps
    wins = windows(scan.num_frames, fps, cfg.window_s, cfg.stride_s)
    plan: list[tuple[int, int, int]] = []
    samples: list[np.ndarray] = []
    wanted: dict[int, list[Track]] = {}
    for tr in scan.tracks:
        for a, b in track_windows(tr, wins, cfg.min_coverage):
            idx = a + sample_indices(b - a, loader.T, train=False)
            plan.append((tr.id, a, b))
            samples.append(idx)
            for t in sorted(set(idx.tolist())):
                if tr not in wanted.setdefault(t, []):
                    wanted[t].append(tr)
    crops = crop_frames(
        open_frames(source, threads=1, limits=limits).frames,
        wanted,
        margin=prep.margin,
        crop_size=prep.crop_size,
        jpeg_quality=prep.jpeg_quality,
    )
    rows = pa.table(
        {
            "clip_id": pa.array([f"{source}#{tid}@{a}" for tid, a, _ in plan]),
            "label": pa.array([0] * len(plan), pa.int64()),
            "frames": pa.array(
                [[crops[(tid, int(t))] for t in idx] for (tid, _, _), idx in zip(plan, samples)], pa.list_(pa.binary())
            ),
        }
    )
    videos = loader.transform(rows)["video"]  # (K, T, S, S, 3)
    return LoadedTimeline(videos, plan, scan, fps, cfg)


def aggregate(probs: np.ndarray, how: str) -> tuple[int, np.ndarray]:
    """A track's label (class index) and probabilities from its windows' ``probs`` (K, C):
    ``mean`` the argmax of the mean; ``majority`` the most frequent window label (a tie goes to
    the higher mean probability), with the mean probabilities; ``max`` the single most confident
    window's label and probabilities."""
    mean = probs.mean(axis=0)
    if how == "mean":
        return int(mean.argmax()), mean
    if how == "majority":
        votes = np.bincount(probs.argmax(axis=1), minlength=probs.shape[1])
        best = np.flatnonzero(votes == votes.max())
        return int(best[np.argmax(mean[best])]), mean
    if how == "max":
        row = probs[int(probs.max(axis=1).argmax())]
        return int(row.argmax()), row
    raise ValueError(f"unknown aggregate {how!r} (mean, majority, max)")


def timeline_result(lt: LoadedTimeline, probs: np.ndarray, names: list[str]) -> tuple[int, np.ndarray, dict]:
    """The video's (label index, probabilities) — its track 0's aggregate — and the ``timeline``
    dict of its prediction (every track with its windows), from the windows' ``probs``."""
    fps, cfg = lt.fps, lt.cfg
    tracks = []
    video_label: tuple[int, np.ndarray] | None = None
    for tr in lt.scan.tracks:
        rows = [i for i, (tid, _, _) in enumerate(lt.plan) if tid == tr.id]
        if not rows:
            continue
        k, p = aggregate(probs[rows], cfg.aggregate)
        if video_label is None:
            video_label = (k, p)
        tracks.append(
            {
                **tr.to_dict(),
                "first_s": round(tr.first / fps, 4),
                "last_s": round(tr.last / fps, 4),
                "label": names[k],
                "probability": float(p[k]),
                "probabilities": {n: float(v) for n, v in zip(names, p)},
                "windows": [
                    {
                        "start_frame": lt.plan[i][1],
                        "end_frame": lt.plan[i][2],
                        "start_s": round(lt.plan[i][1] / fps, 4),
                        "end_s": round(lt.plan[i][2] / fps, 4),
                        "label": names[int(probs[i].argmax())],
                        "probability": float(probs[i].max()),
                        "probabilities": {n: float(v) for n, v in zip(names, probs[i])},
                    }
                    for i in rows
                ],
            }
        )
    assert video_label is not None  # every video has a track, every track a window
    info = {
        "fps": fps,
        "frames": lt.scan.num_frames,
        "seconds": round(lt.scan.num_frames / fps, 4),
        "window_s": cfg.window_s,
        "stride_s": cfg.stride_s,
        "aggregate": cfg.aggregate,
        "tracks": tracks,
    }
    return video_label[0], video_label[1], info


def plot_timeline(title: str, timeline: dict, classes: list[str]) -> bytes:
    """A PNG of a video's timeline: one panel per track, each class's window probability over
    time (a step at each window's middle), the window labels as a band on top."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=True)  # no display anywhere this runs (Ray workers, CI)
    import matplotlib.pyplot as plt

    tracks = timeline["tracks"]
    fig, axes = plt.subplots(len(tracks), 1, figsize=(9, 2.2 * len(tracks) + 0.6), squeeze=False, sharex=True)
    colours = plt.get_cmap("tab10")
    for ax, tr in zip(axes[:, 0], tracks):
        mids = [(w["start_s"] + w["end_s"]) / 2 for w in tr["windows"]]
        for c, name in enumerate(classes):
            ax.plot(
                mids, [w["probabilities"][name] for w in tr["windows"]], "-o", ms=3, color=colours(c % 10), label=name
            )
        for w in tr["windows"]:
            c = classes.index(w["label"])
            ax.axvspan(w["start_s"], w["end_s"], ymin=0.93, ymax=1.0, color=colours(c % 10), alpha=0.5, lw=0)
        ax.set_ylim(0, 1.08)
        ax.set_ylabel("probability")
        ax.set_title(
            f"track {tr['track']}: {tr['label']} ({timeline['aggregate']} {tr['probability']:.2f})", fontsize=9
        )
    axes[-1, 0].set_xlabel("seconds")
    axes[-1, 0].set_xlim(0, timeline["seconds"])
    axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def png_name(path: str) -> str:
    """The timeline PNG's file name for input ``path``: its stem plus a short hash of the whole
    path (two inputs named ``a.mp4`` in different folders do not collide)."""
    import hashlib
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(path).rstrip("/")).stem)[:60] or "video"
    return f"{stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}.png"


def write_timeline_png(pred, folder, classes: list[str]) -> str:
    """Write ``pred``'s timeline PNG into ``folder`` (a local path or a storage URI) and record
    where in ``pred.timeline["png"]``; returns that location."""
    from pipeline.storage import Storage

    storage = Storage(folder)
    name = png_name(pred.path)
    storage.write_bytes(plot_timeline(pred.path, pred.timeline, classes), name)
    pred.timeline["png"] = storage.uri(name)
    return pred.timeline["png"]
