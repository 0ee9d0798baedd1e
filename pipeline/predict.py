"""Predict the expression of your own videos with a saved checkpoint — no Ray, no training config.

Each input goes through exactly the path a clip takes from raw video to the model during
evaluation, built from the same functions:

1. :func:`pipeline.data.video.open_frames` decodes a video file (PyAV) or reads a frame folder;
2. :class:`pipeline.data.faces.ClipCropper` detects, tracks and crops the face and JPEG-encodes
   the crops, as the preprocess stage does when it writes a shard row (the checkpoint does not
   record the preprocess settings, so they are arguments here with the preprocess defaults —
   pass the ones your training data was preprocessed with; :func:`crop_options` reads them
   from a config's ``preprocess`` section);
3. :func:`pipeline.train.sampling.sample_indices` picks the T evaluation frames (segment
   middles) and :class:`pipeline.train.transforms.ClipTransform` (evaluation mode) decodes them
   and resizes them to the model's input size, as ``dferclip evaluate`` does.

So a video's probabilities here equal what evaluation computes for the same video after
preprocessing. The JPEG round trip in step 2 costs little (a few ms per clip) and is kept for
that reason: the model was trained on JPEG-decoded crops.

Many inputs are batched: a small thread pool decodes and crops the next clips while the model
runs on the current batch (OpenCV, PyAV and PyTorch all release the GIL in their heavy parts).
Results come back in input order. An input that cannot be read yields a :class:`Prediction`
with ``error`` set; the others are unaffected.

    from pipeline.predict import predict_paths
    for p in predict_paths("runs/train/<run>/final/model.pt", ["a.mp4", "clips/"]):
        print(p.path, p.label, p.probability, p.error)
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config import PreprocessConfig
from pipeline.errors import UserError

__all__ = [
    "Prediction",
    "ClipLoader",
    "VIDEO_EXTENSIONS",
    "expand_inputs",
    "crop_options",
    "recorded_preprocess",
    "predict_paths",
    "iter_predictions",
    "resolve_device",
    "forward_probabilities",
    "make_prediction",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts")
_PREP = PreprocessConfig()  # the preprocess defaults, used as this module's defaults
# The settings that make a crop: the same the shards record (PreprocessConfig.OUTPUT_FIELDS).
_CROP_FIELDS = PreprocessConfig.OUTPUT_FIELDS
# The per-clip caps, applied as in preprocessing (resource limits: a checkpoint does not record
# them; they come from --config's preprocess section, else the defaults).
_CAP_FIELDS = ("max_pixels", "max_clip_frames", "max_clip_seconds")


@dataclass
class Prediction:
    """The result for one input clip. ``error`` is None on success; then ``label`` is the most
    probable class, ``probability`` its probability and ``probabilities`` every class's, in the
    model's class order. ``face_fallback``: no face was found in any frame, so the centre of the
    frame was used (as preprocessing does). ``frames``: frames decoded from the input."""

    path: str
    label: str | None = None
    probability: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    face_fallback: bool = False
    frames: int = 0
    error: str | None = None
    # A long video's windows per face track (pipeline.timeline.timeline_result), else None.
    timeline: dict | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def top(self, k: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` most probable classes (all when None), most probable first."""
        ranked = sorted(self.probabilities.items(), key=lambda kv: -kv[1])
        return ranked if k is None else ranked[:k]

    def to_dict(self) -> dict:
        out = {
            "path": self.path,
            "ok": self.ok,
            "label": self.label,
            "probability": self.probability,
            "probabilities": dict(self.probabilities),
            "face_fallback": self.face_fallback,
            "frames": self.frames,
            "error": self.error,
        }
        if self.timeline is not None:  # only for a video scored as a timeline: the fields above stay as they were
            out["timeline"] = self.timeline
        return out


def recorded_preprocess(extra: dict, source: str = "<checkpoint>") -> PreprocessConfig | None:
    """The crop settings a training run recorded in its checkpoint (``extra["preprocess"]``: the
    preprocess section its shards were made with), or None for a checkpoint without them.

    The record is checked like a config's ``preprocess`` section (types and ranges); an invalid
    one is a UserError naming ``source`` (the checkpoint) and each bad setting."""
    from pipeline.typed import ConfigError, from_dict

    recorded = extra.get("preprocess") if isinstance(extra, dict) else None
    if not isinstance(recorded, dict):
        return None
    try:
        return from_dict(PreprocessConfig, {k: recorded[k] for k in _CROP_FIELDS if k in recorded}, source)
    except ConfigError as exc:
        raise UserError(
            f"{source}: the crop settings it records are not valid ({'; '.join(exc.problems)}); "
            "give the ones its training data was preprocessed with (predict --config)"
        ) from None


def crop_options(prep: PreprocessConfig) -> dict:
    """The keyword arguments of :func:`predict_paths` that a preprocess section fixes: its crop
    settings and its per-clip caps."""
    return {name: getattr(prep, name) for name in _CROP_FIELDS + _CAP_FIELDS}


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[tuple[str, str | None]]:
    """Command-line inputs -> clips as ``(path, error or None)``, in the given order.

    A file is one clip (whatever its extension: the decoder decides). A folder holding frame
    images is one clip; a folder holding video files (by extension, not recursive) expands to
    each video in natural order. A missing path or a folder with neither becomes an error entry
    so that it is reported with the others rather than stopping the run.
    """
    from pipeline.data.video import FRAME_EXTENSIONS, list_frame_files, natural_key

    out: list[tuple[str, str | None]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            try:
                frames = list_frame_files(path)
                videos = sorted(
                    (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS),
                    key=lambda p: natural_key(p.name),
                )
            except Exception as exc:  # noqa: BLE001 — unreadable folder: report it, go on
                out.append((str(path), f"cannot list folder: {exc}"))
                continue
            if frames:
                out.append((str(path), None))
            elif videos:
                out.extend((str(v), None) for v in videos)
            else:
                out.append(
                    (
                        str(path),
                        f"folder has no frame images ({'/'.join(FRAME_EXTENSIONS)}) "
                        f"and no videos ({'/'.join(VIDEO_EXTENSIONS)})",
                    )
                )
        elif path.exists():
            out.append((str(path), None))
        else:
            out.append((str(path), "file not found"))
    return out


@dataclass
class LoadedClip:
    video: np.ndarray  # (T, S, S, 3) uint8 RGB, the model's input for this clip
    face_fallback: bool
    frames: int  # frames decoded


class ClipLoader:
    """Turns one input path into the model's frames, as preprocessing + evaluation would.

    Thread-safe: each thread gets its own detector (OpenCV detectors keep per-call state).
    """

    def __init__(self, num_frames: int, image_size: int, prep: PreprocessConfig):
        from pipeline.data.faces import build_detector
        from pipeline.train.transforms import ClipTransform

        problems = prep.validate()
        if problems:
            raise UserError("predict: " + "; ".join(problems))
        self.prep, self.T = prep, int(num_frames)
        self._local = threading.local()
        # Built once here so a bad detector setting fails before any work starts; the first
        # thread that loads a clip takes it over (loading the Haar cascade costs ~30 ms).
        self._spare = [build_detector(prep.detector, prep.yunet_model, prep.detect_max_side)]
        self._lock = threading.Lock()
        # Rows given to the transform hold exactly the T sampled frames, as after SelectFrames.
        # Its constructor sets OpenCV to one thread process-wide: parallelism here comes from
        # the loader threads, and the detector then runs as in a 1-CPU preprocess worker.
        self.transform = ClipTransform(num_frames, image_size, train=False, preselected=True)

    def _cropper(self):
        from pipeline.data.faces import ClipCropper, build_detector
        from pipeline.data.video import ClipLimits

        cropper = getattr(self._local, "cropper", None)
        if cropper is None:
            p = self.prep
            with self._lock:
                spare = self._spare.pop() if self._spare else False
            detector = build_detector(p.detector, p.yunet_model, p.detect_max_side) if spare is False else spare
            cropper = ClipCropper(
                detector,
                detect_every=p.detect_every,
                margin=p.margin,
                crop_size=p.crop_size,
                jpeg_quality=p.jpeg_quality,
                max_frames=p.max_frames,
                limits=ClipLimits.of(p),
            )
            self._local.cropper = cropper
        return cropper

    def detector(self):
        """This thread's face detector (None for detector "none"), as the crops use it."""
        return self._cropper().detector

    def load_input(self, path: str | os.PathLike, timeline=None):
        """:meth:`load`, or :func:`pipeline.timeline.load_timeline` for a video that ``timeline``
        (a TimelineConfig, None: never) scores as a timeline."""
        from pipeline.timeline import load_timeline, wants_timeline

        if wants_timeline(path, timeline):
            return load_timeline(path, self, timeline)
        return self.load(path)

    def load(self, path: str | os.PathLike) -> LoadedClip:
        """Raises :class:`~pipeline.data.video.UnreadableClip` (or another error) when it cannot;
        :class:`~pipeline.data.video.ClipOverCap` for a clip over a cap (the message names it).
        Memory is bounded as in a preprocess worker (the cropper's frame buffer, the caps)."""
        import pyarrow as pa

        from pipeline.train.sampling import sample_indices

        # The T frames evaluation samples from a shard row of every stored frame, JPEG as there;
        # only those T are cropped and encoded (the detector still sees the same frames).
        crops = self._cropper().run_source(path, threads=1, pick=lambda k: sample_indices(k, self.T, train=False))
        row = pa.table(
            {
                "clip_id": pa.array([str(path)]),
                "label": pa.array([0], pa.int64()),
                "frames": pa.array([crops.frames], pa.list_(pa.binary())),
            }
        )
        video = self.transform(row)["video"][0]  # (T, S, S, 3)
        return LoadedClip(video, crops.face_fallback, crops.num_decoded)


def resolve_device(device: str | None):
    """``"auto"``/None: CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"predict: bad device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"predict: device {device!r} asked for, but this PyTorch sees no CUDA GPU")
    return dev


def forward_probabilities(model, videos: np.ndarray, device, batch_size: int, temperature: float = 1.0) -> np.ndarray:
    """Softmax probabilities (N, C) of ``videos`` (N, T, S, S, 3) uint8 (logits divided by
    ``temperature``), ``batch_size`` clips per forward pass (a long video's windows come in one array)."""
    import torch

    out = [np.zeros((0, len(model.class_names)), np.float32)]
    for i in range(0, len(videos), batch_size):
        video = torch.from_numpy(np.ascontiguousarray(videos[i : i + batch_size]))  # (B, T, S, S, 3) uint8
        video = video.permute(0, 1, 4, 2, 3).to(device, non_blocking=True)  # (B, T, 3, S, S)
        with torch.no_grad():
            out.append((model(video).float() / temperature).softmax(dim=1).cpu().numpy())  # (B, C)
    return np.concatenate(out)


def make_prediction(path: str, clip, probs: np.ndarray, names: list[str]) -> Prediction:
    """The :class:`Prediction` of a loaded clip (``probs`` (1, C)) or timeline (``probs`` (K, C):
    one row per window, see :func:`pipeline.timeline.timeline_result`)."""
    if isinstance(clip, LoadedClip):
        p, timeline = probs[0], None
        k = int(p.argmax())
    else:
        from pipeline.timeline import timeline_result

        k, p, timeline = timeline_result(clip, probs, names)
    return Prediction(
        path,
        names[k],
        float(p[k]),
        {n: float(v) for n, v in zip(names, p)},
        clip.face_fallback,
        clip.frames,
        timeline=timeline,
    )


def _reason(exc: Exception) -> str:
    from pipeline.data.video import UnreadableClip

    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, UnreadableClip) else f"{type(exc).__name__}: {text}"


def iter_predictions(
    checkpoint_or_model,
    paths: Sequence[str | os.PathLike],
    *,
    detector: str = _PREP.detector,
    yunet_model: str | None = _PREP.yunet_model,
    detect_every: int = _PREP.detect_every,
    detect_max_side: int = _PREP.detect_max_side,
    margin: float = _PREP.margin,
    crop_size: int = _PREP.crop_size,
    jpeg_quality: int = _PREP.jpeg_quality,
    max_frames: int | None = _PREP.max_frames,
    max_pixels: int | None = _PREP.max_pixels,
    max_clip_frames: int | None = _PREP.max_clip_frames,
    max_clip_seconds: float | None = _PREP.max_clip_seconds,
    batch_size: int = 8,
    device: str = "cpu",
    workers: int = 2,
    expand: bool = True,
    temperature: float | None = None,
    timeline=None,
    timeline_png: str | os.PathLike | None = None,
) -> Iterator[Prediction]:
    """Like :func:`predict_paths`, but yields each :class:`Prediction` (in input order) as soon
    as its batch is done, so a caller can print results while later clips are still running."""
    from pipeline.model.checkpoint import calibration_temperature, load_checkpoint

    if batch_size < 1:
        raise UserError(f"predict: batch size must be >= 1, got {batch_size}")
    if workers < 1:
        raise UserError(f"predict: workers must be >= 1, got {workers}")
    dev = resolve_device(device)
    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        model, extra = load_checkpoint(checkpoint_or_model, map_location="cpu")
        stored = calibration_temperature(extra, str(checkpoint_or_model))
    else:
        model, stored = checkpoint_or_model, 1.0
    # The temperature of `dferclip calibrate` (stored in the checkpoint) unless one is given.
    temperature = stored if temperature is None else float(temperature)
    if not 0.0 < temperature < float("inf"):
        raise UserError(f"predict: temperature must be a positive number, got {temperature}")
    model = getattr(model, "module", model)  # a DDP-wrapped model works too
    model.eval().to(dev)  # note: a model object passed in is moved to ``device`` and left in eval mode
    prep = PreprocessConfig(
        detector=detector,
        yunet_model=yunet_model,
        detect_every=detect_every,
        detect_max_side=detect_max_side,
        margin=margin,
        crop_size=crop_size,
        jpeg_quality=jpeg_quality,
        max_frames=max_frames,
        max_pixels=max_pixels,
        max_clip_frames=max_clip_frames,
        max_clip_seconds=max_clip_seconds,
    )
    loader = ClipLoader(model.num_frames, model.image_size, prep)
    items = expand_inputs(paths) if expand else [(str(p), None) for p in paths]
    names = list(model.class_names)

    def load(path: str) -> LoadedClip | str:
        try:
            return loader.load_input(path, timeline)
        except Exception as exc:  # noqa: BLE001 — one bad input must not stop the others
            return _reason(exc)

    def run(group: list[tuple[str, LoadedClip | str]]) -> Iterator[Prediction]:
        ok = [clip for _, clip in group if not isinstance(clip, str)]
        # One row per clip, one per window of a timeline (LoadedTimeline.videos).
        videos = [c.video[None] if isinstance(c, LoadedClip) else c.videos for c in ok]
        probs = forward_probabilities(model, np.concatenate(videos), dev, batch_size, temperature) if ok else None
        start = 0
        for path, clip in group:
            if isinstance(clip, str):
                yield Prediction(path, error=clip)
                continue
            n = 1 if isinstance(clip, LoadedClip) else len(clip.videos)
            pred = make_prediction(path, clip, probs[start : start + n], names)
            start += n
            if pred.timeline is not None and timeline_png is not None:
                from pipeline.timeline import write_timeline_png

                write_timeline_png(pred, timeline_png, names)
            yield pred

    # Decode ahead by about two batches: enough to keep the model busy, bounded memory.
    ahead = 2 * batch_size + workers
    group: list[tuple[str, LoadedClip | str]] = []
    loaded = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="predict-load") as pool:
        queue: deque[tuple[str, Future | str]] = deque()
        todo = iter(items)

        def refill() -> None:
            while len(queue) < ahead:
                item = next(todo, None)
                if item is None:
                    return
                path, error = item
                queue.append((path, error if error is not None else pool.submit(load, path)))

        refill()
        while queue:
            path, job = queue.popleft()
            refill()
            clip = job if isinstance(job, str) else job.result()
            group.append((path, clip))
            loaded += not isinstance(clip, str)
            if loaded == batch_size:
                yield from run(group)
                group, loaded = [], 0
        if group:
            yield from run(group)


def predict_paths(checkpoint_or_model, paths: Sequence[str | os.PathLike], **options) -> list[Prediction]:
    """Predict every input; returns one :class:`Prediction` per clip, in input order.

    ``checkpoint_or_model``: a checkpoint path (``save_checkpoint`` format) or a loaded
    ``DferClip``. ``paths``: video files and folders (see :func:`expand_inputs`; pass
    ``expand=False`` to treat each path as exactly one clip). Keyword options:

    - crop settings, defaults = the preprocess defaults — ``detector`` ("haar", "yunet",
      "none"), ``yunet_model``, ``detect_every``, ``detect_max_side``, ``margin``,
      ``crop_size``, ``jpeg_quality``, ``max_frames``, and the per-clip caps ``max_pixels``,
      ``max_clip_frames``, ``max_clip_seconds`` (a clip over one gets an error naming it)
      (``**crop_options(cfg.preprocess)`` passes a config's);
    - ``batch_size`` (8) clips per forward pass, ``device`` ("cpu", "cuda", "auto"),
      ``workers`` (2) decode/crop threads;
    - ``temperature``: divides the logits before the softmax; default the one ``dferclip
      calibrate`` stored in the checkpoint (1 when none, or for a model object);
    - ``timeline``: a :class:`~pipeline.config.TimelineConfig` (None: never) — a long video is
      scored per face track and window (:mod:`pipeline.timeline`; ``Prediction.timeline``);
      ``timeline_png``: a folder for one timeline PNG per such video.

    A bad setting (unknown detector, missing YuNet file, bad checkpoint) raises
    :class:`~pipeline.errors.UserError`; a bad input only sets its Prediction's ``error``.
    """
    return list(iter_predictions(checkpoint_or_model, paths, **options))
