"""The per-batch clip transform of the data path: sample T frames, decode only those, augment.

Input is a batch of shard rows as a ``pyarrow.Table`` (``clip_id``, ``label``, ``num_frames``,
``frames``: list of JPEG bytes); output is ``{"video": (B, T, S, S, 3) uint8 RGB, "label": (B,)
int64}``. It runs inside Ray Data ``map_batches`` tasks (and in-process in bench/data_path.py).
The consumer turns a batch into the model's (B, T, 3, S, S) with :func:`model_layout`, a
permuted *view*: writing channels-first here would cost a strided copy per frame (~20 % of a
JPEG decode), while PyTorch's convolutions take the channels-last strides as they are.

Speed choices (bench/data_path.py measures them against the published per-file PIL loader):
- Only the T sampled JPEGs of a clip are decoded, straight from the Arrow buffers, to RGB with
  simplejpeg (libjpeg-turbo; :func:`decode_rgb`); with ``train.augment.fast_decode`` training
  uses its fast DCT and chroma upsampling, evaluation always decodes exactly.
- When the stored crop is at least twice the model input, libjpeg-turbo decodes at 1/2 (3/8,
  1/4, 1/8) scale in the DCT, which costs a fraction of a full decode and keeps at least the
  model's input size.
- The clip-consistent geometry (random resized crop, small rotation) is drawn once per clip and
  applied per frame: a crop view, brightness and flip on the crop (usually smaller than the
  output), and a resize written straight into the batch array (or one affine warp when
  rotating). Arithmetic stays in uint8; the model converts to float on its own device.

With ``train.augment.on_device`` (``decode_only``) training stops after the decode: each clip's
frames go into a fixed (T, C, C, 3) canvas (C: :func:`canvas_side` of the shards' crop size) and
its draws (:func:`draw_augment`, the same numbers in the same order) into a small ``"augment"``
row (:data:`PARAMS`); :func:`pipeline.train.device_augment.augment_batch` applies them batched on
the training device. This path (OpenCV) stays the reference, and evaluation's only path.

Randomness: each clip draws from ``default_rng([seed, epoch, crc32(clip_id)])``, so a clip's
frames and augmentation in a given epoch are the same whichever worker, batch or order it
lands in, and differ from epoch to epoch. The epoch comes from :class:`EpochClock`, which rank 0
of the training run advances before each epoch's data starts flowing.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
import pyarrow as pa
import simplejpeg

from pipeline.train.sampling import sample_indices

__all__ = [
    "AugmentSpec",
    "AugmentDraw",
    "PARAMS",
    "ClipTransform",
    "model_layout",
    "SelectFrames",
    "EpochClock",
    "clip_rng",
    "decode_rgb",
    "draw_augment",
    "canvas_side",
]


@dataclass(frozen=True)
class AugmentSpec:
    """Clip-level training augmentation (docs/design.md §1); one draw per clip, shared by its frames."""

    scale: tuple[float, float] = (0.2, 1.0)  # random resized crop: area fraction range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # and aspect ratio range (as torchvision)
    hflip: bool = True
    brightness: float = 0.0  # factor drawn from [max(0, 1-b), 1+b]; 0 disables
    rotation_deg: float = 0.0  # angle drawn from [-r, r]; 0 disables
    fast_decode: bool = False  # libjpeg-turbo's fast DCT and chroma upsampling (see decode_rgb)


def model_layout(video):
    """(B, T, S, S, 3) batch (numpy or torch) -> torch (B, T, 3, S, S) view, no copy."""
    import torch

    return torch.as_tensor(video).permute(0, 1, 4, 2, 3)


class EpochClock:
    """A tiny Ray actor holding the current epoch for the data tasks (created by the driver)."""

    def __init__(self) -> None:
        self.epoch = 0

    def set(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def get(self) -> int:
        return self.epoch


def clip_rng(seed: int, epoch: int, clip_id: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), zlib.crc32(clip_id.encode("utf-8"))])


def decode_rgb(buf, out_size: int, fast: bool = False, into: np.ndarray | None = None) -> np.ndarray:
    """Decode one JPEG to (h, w, 3) RGB uint8, in the DCT at 1/2 or less (factors 2, 8/3, 4, 8)
    when the result still has both sides >= ``out_size``.

    simplejpeg drives libjpeg-turbo's TurboJPEG API directly: at full size it returns exactly
    OpenCV's pixels in ~10-25 % less time, and its scaled decode costs half of OpenCV's
    IMREAD_REDUCED_* (bench/data_path.py). ``fast``: the integer fast DCT and nearest-neighbour
    chroma upsampling, ~10 % faster again, off from exact by 1.4 grey levels on average (up to
    ~25 at sharp colour edges, where 4:2:0 JPEG has no chroma detail to begin with).
    ``into``: a writable contiguous array to decode into (the result is a view of its first
    h * w * 3 bytes), used when the frame fits; a fresh array otherwise.
    """
    data = np.frombuffer(buf, np.uint8)  # pyarrow buffers present as signed bytes
    kwargs = dict(fastdct=fast, fastupsample=fast, min_height=out_size, min_width=out_size, min_factor=2)
    if into is not None:
        try:
            return simplejpeg.decode_jpeg(data, "RGB", buffer=into, **kwargs)
        except ValueError:
            pass  # larger than ``into`` (or not a JPEG: the call below says which)
    try:
        return simplejpeg.decode_jpeg(data, "RGB", **kwargs)
    except ValueError:
        raise ValueError("not a decodable JPEG") from None


def _frame_lists(table: pa.Table) -> tuple[np.ndarray, pa.BinaryArray]:
    """The ``frames`` column as (offsets (B+1,), flat binary values) without copying bytes."""
    col = table.column("frames").combine_chunks()
    # For a sliced array ``offsets`` is sliced too while ``values`` is not, so they stay consistent.
    return col.offsets.to_numpy(), col.values


def _random_crop(rng: np.random.Generator, h: int, w: int, spec: AugmentSpec) -> tuple[int, int, int, int]:
    """(x0, y0, cw, ch) as torchvision's RandomResizedCrop draws it (10 tries, then a centre crop)."""
    area = h * w
    log_lo, log_hi = math.log(spec.ratio[0]), math.log(spec.ratio[1])
    for _ in range(10):
        target = area * rng.uniform(spec.scale[0], spec.scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch
    aspect = w / h
    if aspect < spec.ratio[0]:
        cw, ch = w, int(round(w / spec.ratio[0]))
    elif aspect > spec.ratio[1]:
        ch, cw = h, int(round(h * spec.ratio[1]))
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


# The columns of the per-clip augmentation rows that the decode-only mode ships next to its frames
# (``"augment"``: (B, len(PARAMS)) float32), read by pipeline.train.device_augment.augment_batch:
# the crop box (x0, y0, cw, ch) in pixels of the clip's frame, the rotation in degrees
# (counter-clockwise, about the frame's centre), flip (0/1), the brightness factor, the frame's own
# size (h, w) at the canvas' top left, and the output size S.
PARAMS = ("x0", "y0", "cw", "ch", "angle", "flip", "brightness", "h", "w", "size")


@dataclass(frozen=True)
class AugmentDraw:
    """One clip's augmentation draw, shared by all its frames."""

    x0: int
    y0: int
    cw: int
    ch: int
    angle: float = 0.0
    flip: bool = False
    brightness: float = 1.0

    def params(self, h: int, w: int, size: int) -> np.ndarray:
        """This draw as a :data:`PARAMS` row for a frame of (h, w) and output ``size``."""
        row = (self.x0, self.y0, self.cw, self.ch, self.angle, self.flip, self.brightness, h, w, size)
        return np.array(row, np.float64)


def draw_augment(rng: np.random.Generator, h: int, w: int, spec: AugmentSpec) -> AugmentDraw:
    """The clip's draws in their fixed order (crop, angle, flip, brightness) from its ``rng``,
    after the frame sample: the CPU path and the decode-only path read the same numbers."""
    x0, y0, cw, ch = _random_crop(rng, h, w, spec)
    angle = float(rng.uniform(-spec.rotation_deg, spec.rotation_deg)) if spec.rotation_deg > 0 else 0.0
    flip = bool(spec.hflip and rng.random() < 0.5)
    factor = float(rng.uniform(max(0.0, 1.0 - spec.brightness), 1.0 + spec.brightness)) if spec.brightness > 0 else 1.0
    return AugmentDraw(x0, y0, cw, ch, angle, flip, factor)


def canvas_side(stored: int, image_size: int) -> int:
    """The side a ``stored`` x ``stored`` JPEG decodes to in training (:func:`decode_rgb`'s
    scale choice), found by decoding one: the decode-only mode's fixed canvas, so every batch of a
    dataset has one shape."""
    ok, buf = cv2.imencode(".jpg", np.zeros((int(stored), int(stored), 3), np.uint8))
    assert ok
    return int(decode_rgb(buf.tobytes(), int(image_size)).shape[0])


class ClipTransform:
    """Sample, decode and augment a batch of clips (see the module docstring).

    ``preselected``: the rows' ``frames`` already hold exactly the T frames to use, in order
    (the output of :class:`SelectFrames`), so no sampling happens here.
    """

    def __init__(
        self,
        num_frames: int,
        image_size: int,
        train: bool,
        augment: AugmentSpec | None = None,
        seed: int = 0,
        clock=None,
        preselected: bool = False,
        keep_ids: bool = False,
        decode_only: bool = False,
        stored_size: int | None = None,
    ):
        self.T, self.S, self.train = int(num_frames), int(image_size), bool(train)
        self.augment = augment or AugmentSpec()
        self.seed, self.clock, self.preselected, self.keep_ids = seed, clock, preselected, keep_ids
        # Training only: decode into a fixed canvas and ship the draws (evaluation stays here, exact).
        self.decode_only = bool(decode_only) and self.train
        self.canvas = canvas_side(stored_size, self.S) if stored_size else self.S
        self.epoch = 0  # used when there is no clock (bench, tests)
        # One Ray Data task holds one CPU; OpenCV's own thread pool would oversubscribe it.
        cv2.setNumThreads(1)

    def current_epoch(self) -> int:
        if self.clock is None:
            return self.epoch
        import ray

        return int(ray.get(self.clock.get.remote()))

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        B, T, S = table.num_rows, self.T, self.S
        epoch = self.current_epoch() if self.train else 0
        ids = table.column("clip_id").to_pylist()
        offsets, values = _frame_lists(table)
        side = self.canvas if self.decode_only else S
        video = np.empty((B, T, side, side, 3), np.uint8)  # channels last: see model_layout()
        params = np.empty((B, len(PARAMS)), np.float32) if self.decode_only else None
        for i in range(B):
            stored = int(offsets[i + 1] - offsets[i])
            if stored < 1:
                raise ValueError(f"clip {ids[i]!r} has no frames in its shard row")
            rng = clip_rng(self.seed, epoch, ids[i]) if self.train else None
            if self.preselected:
                idx = np.arange(stored) if stored == T else sample_indices(stored, T, False)
            else:
                # num_frames should equal the stored count; trust what is actually there.
                idx = sample_indices(stored, T, self.train, rng)
            bufs = [values[int(offsets[i] + j)].as_buffer() for j in idx]
            if params is not None:
                params[i] = self._decode_only(bufs, rng, video[i], ids[i])
            else:
                self._clip(bufs, rng, video[i], ids[i])
        out = {"video": video, "label": table.column("label").to_numpy().astype(np.int64)}
        if params is not None:
            out["augment"] = params
        if self.keep_ids:
            out["clip_id"] = np.asarray(ids, dtype=object)
        return out

    def _clip(self, bufs: list, rng: np.random.Generator | None, out: np.ndarray, clip_id: str) -> None:
        """Decode T JPEGs and write the clip, (T, S, S, 3) RGB, into ``out``."""
        S = self.S
        geometry = color = None
        flip = False
        for t, img in enumerate(self._decoded(bufs, clip_id)):
            if geometry is None:
                draw = draw_augment(rng, img.shape[0], img.shape[1], self.augment) if self.train else None
                geometry = self._geometry(img.shape[0], img.shape[1], draw)
                flip = bool(draw is not None and draw.flip)
                factor = 1.0 if draw is None else draw.brightness
                color = None if factor == 1.0 else float(factor)  # brightness: one saturating SIMD pass
            elif img.shape[:2] != geometry[0]:
                img = cv2.resize(img, geometry[0][::-1], interpolation=cv2.INTER_AREA)
            _, op, arg = geometry
            if op == "warp":
                m = arg
                if flip:
                    m = np.array([[-1.0, 0.0, S - 1.0], [0.0, 1.0, 0.0]]) @ np.vstack([m, [0.0, 0.0, 1.0]])
                cv2.warpAffine(img, m, (S, S), dst=out[t], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
                if color is not None:
                    cv2.convertScaleAbs(out[t], out[t], alpha=color)
                continue
            x0, y0, cw, ch, interp = arg
            # Brightness and flip in place on the crop (a view into this frame's own decode, usually
            # smaller than S x S), then one resize straight into the batch: no intermediate copies.
            crop = img[y0 : y0 + ch, x0 : x0 + cw]
            if color is not None:
                cv2.convertScaleAbs(crop, crop, alpha=color)
            if flip:
                cv2.flip(crop, 1, dst=crop)
            cv2.resize(crop, (S, S), dst=out[t], interpolation=interp)

    def _decoded(self, bufs: list, clip_id: str, into: np.ndarray | None = None):
        """The clip's frames decoded to RGB uint8, one at a time (errors name the clip and frame);
        with ``into`` (T, C, C, 3), each is decoded into its canvas ``into[t]`` when it fits."""
        fast = self.train and self.augment.fast_decode
        for t, b in enumerate(bufs):
            try:
                yield decode_rgb(b, self.S, fast, into=None if into is None else into[t])
            except ValueError:
                raise ValueError(f"clip {clip_id!r}: frame {t} of its sample is not a decodable JPEG") from None

    def _decode_only(self, bufs: list, rng: np.random.Generator, out: np.ndarray, clip_id: str) -> np.ndarray:
        """Decode the clip's frames into the canvas ``out`` (T, C, C, 3), each at its top left
        with zeros around it; return the clip's drawn augmentation as a :data:`PARAMS` row for
        :func:`~pipeline.train.device_augment.augment_batch` (which does what :meth:`_clip` does)."""
        C = out.shape[1]
        size = draw = None
        for t, img in enumerate(self._decoded(bufs, clip_id, into=out)):
            if size is None:
                h, w = img.shape[:2]
                if h > C or w > C:  # larger than the shards' crop size: shrink to fit (see canvas_side)
                    k = min(C / h, C / w)
                    h, w = max(1, min(C, round(h * k))), max(1, min(C, round(w * k)))
                size = (h, w)
                draw = draw_augment(rng, h, w, self.augment)
            if img.shape[:2] == (C, C) and size == (C, C):
                continue  # decoded in place: the common case, no copy
            if img.shape[:2] != size:
                img = cv2.resize(img, size[::-1], interpolation=cv2.INTER_AREA)
            elif np.shares_memory(img, out[t]):
                img = img.copy()  # decoded into the canvas' first bytes: move it to the top left
            out[t] = 0
            out[t, : size[0], : size[1]] = img
        return draw.params(size[0], size[1], self.S)

    def _geometry(self, h: int, w: int, draw: AugmentDraw | None):
        """One geometric transform for every frame of the clip: ((h, w), "crop"|"warp", params)."""
        S = self.S
        if draw is None:
            side = min(h, w)  # centre square (face crops are square already), then resize to S
            interp = cv2.INTER_AREA if side > S else cv2.INTER_LINEAR
            return (h, w), "crop", ((w - side) // 2, (h - side) // 2, side, side, interp)
        x0, y0, cw, ch, angle = draw.x0, draw.y0, draw.cw, draw.ch, draw.angle
        if not angle:
            return (h, w), "crop", (x0, y0, cw, ch, cv2.INTER_LINEAR)
        # Rotate the whole frame about its centre, then crop and scale: one warp per frame.
        rot = np.vstack([cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0), [0, 0, 1]])
        crop = np.array([[S / cw, 0, -x0 * S / cw], [0, S / ch, -y0 * S / ch], [0, 0, 1]])
        return (h, w), "warp", (crop @ rot)[:2]


class SelectFrames:
    """Evaluation rows -> the same rows holding only their T evaluation frames (deterministic).

    Runs once before ``materialize()``, so each epoch's evaluation reads T JPEGs per clip
    from memory instead of whole clips from the shards.
    """

    def __init__(self, num_frames: int):
        self.T = int(num_frames)

    def __call__(self, table: pa.Table) -> pa.Table:
        offsets, values = _frame_lists(table)
        counts = np.diff(offsets)
        if (counts < 1).any():
            ids = table.column("clip_id").to_pylist()
            raise ValueError(
                f"clips with no frames in their shard rows: {[ids[i] for i in np.flatnonzero(counts < 1)][:5]}"
            )
        take = [offsets[i] + sample_indices(int(counts[i]), self.T, False) for i in range(table.num_rows)]
        flat = np.concatenate(take) if take else np.zeros(0, np.int64)
        new_offsets = pa.array(np.arange(0, len(flat) + 1, self.T, dtype=np.int32))
        frames = pa.ListArray.from_arrays(new_offsets, values.take(pa.array(flat)))
        keep = [c for c in ("clip_id", "label", "num_frames") if c in table.column_names]
        return table.select(keep).append_column("frames", frames)
