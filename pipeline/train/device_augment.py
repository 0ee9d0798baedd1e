"""The clip-level training augmentation, batched in torch on the training device.

With ``train.augment.on_device`` the data path's :class:`~pipeline.train.transforms.ClipTransform`
only samples and decodes: it writes each clip's frames into a fixed canvas (B, T, C, C, 3) uint8
and ships the clip's draws (``"augment"``: one :data:`~pipeline.train.transforms.PARAMS` row per
clip, drawn from the same per-clip ``default_rng([seed, epoch, crc32(clip_id)])`` in the same
order as the CPU path). :func:`augment_batch` then applies every clip's random resized crop,
rotation, flip and brightness in **one** ``grid_sample`` over the whole batch, before the model
normalises its input:

- Every clip's geometry is one affine map from output pixels to source pixels, with its frames
  as channels (B, T * 3, C, C), so one sampling grid (B, S, S, 2) serves all T frames of a clip.
- It reproduces the CPU path's OpenCV calls (the reference, kept for evaluation and for
  ``on_device: false``): a crop is ``cv2.resize(INTER_LINEAR)`` of the crop box (half-pixel
  centres, edge pixels of the *box* repeated: sampling positions are clamped to it), a rotation
  is ``cv2.warpAffine`` of rotate-about-the-centre then crop-and-scale (no half-pixel offset,
  zeros outside the frame), the flip mirrors the output, and brightness scales and saturates the
  crop *before* resizing (crop path) or the output *after* warping (rotation path), as there.
- The result differs from the CPU path only by rounding: OpenCV works in uint8 with fixed-point
  weights (and ``warpAffine`` rounds positions to 1/32 px), this in float32 without rounding to
  uint8 (tests/train/test_device_augment.py bounds it).

The result is float32 (B, T, 3, S, S) in [0, 1], which the model reads as it is (it divides
uint8 by 255 itself). On a CPU-only run the same function runs in the training worker on the CPU
(:func:`~pipeline.train.evaluation.frame_pairs`), the place where the batch is already a tensor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.train.transforms import PARAMS

__all__ = ["augment_batch", "source_maps"]

_COL = {name: k for k, name in enumerate(PARAMS)}


def source_maps(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per clip, the affine map from output pixel (x, y, 1) to source pixel (u, v) — (B, 2, 3),
    flip folded in — and the box positions are clamped to, lo and hi (B, 2) as (u, v).

    Crop clips (angle 0): ``u = x0 + (x + 0.5) cw / S - 0.5`` (cv2.resize's half-pixel mapping)
    clamped to [x0, x0 + cw - 1]; rotated clips: the inverse of cv2's warp (crop-and-scale after
    rotating by ``angle`` about (w/2, h/2)), not clamped (zeros outside, as BORDER_CONSTANT).
    """
    p = params.to(torch.float64)
    col = {name: p[:, k] for name, k in _COL.items()}
    x0, y0, cw, ch, S = col["x0"], col["y0"], col["cw"], col["ch"], col["size"]
    sx, sy = cw / S, ch / S
    warp = col["angle"] != 0
    # Crop (resize) mapping, per axis: u = sx * x + (x0 + 0.5 sx - 0.5), v likewise.
    cu = x0 + 0.5 * sx - 0.5
    cv = y0 + 0.5 * sy - 0.5
    # Rotation mapping: undo the crop-and-scale (q = (x0 + sx x, y0 + sy y)), then rotate q back
    # about the centre c: p = c + R(-angle)(q - c), where cv2's R(angle) = [[a, b], [-b, a]].
    theta = col["angle"] * (math.pi / 180.0)
    a, b = torch.cos(theta), torch.sin(theta)
    cx, cy = col["w"] / 2.0, col["h"] / 2.0
    # u = cx + a (qx - cx) - b (qy - cy);  v = cy + b (qx - cx) + a (qy - cy)
    wu = torch.stack([a * sx, -b * sy, cx + a * (x0 - cx) - b * (y0 - cy)], 1)
    wv = torch.stack([b * sx, a * sy, cy + b * (x0 - cx) + a * (y0 - cy)], 1)
    zero = torch.zeros_like(sx)
    ru = torch.stack([sx, zero, cu], 1)
    rv = torch.stack([zero, sy, cv], 1)
    m = torch.where(warp[:, None, None], torch.stack([wu, wv], 1), torch.stack([ru, rv], 1))
    # The flip mirrors the output: x -> S - 1 - x.
    flip = col["flip"] != 0
    mirrored = torch.stack([-m[:, :, 0], m[:, :, 1], m[:, :, 2] + m[:, :, 0] * (S - 1)[:, None]], 2)
    m = torch.where(flip[:, None, None], mirrored, m)
    inf = torch.full_like(sx, math.inf)
    lo = torch.stack([torch.where(warp, -inf, x0), torch.where(warp, -inf, y0)], 1)
    hi = torch.stack([torch.where(warp, inf, x0 + cw - 1), torch.where(warp, inf, y0 + ch - 1)], 1)
    return m, lo, hi


def augment_batch(video: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """(B, T, C, C, 3) uint8 canvases + (B, len(PARAMS)) draws -> (B, T, 3, S, S) float32 in [0, 1].

    Runs on ``video``'s device (``params`` may be anywhere). All clips share one output size S.
    """
    B, T, H, W, _ = video.shape
    if B == 0:
        return video.new_zeros((0, T, 3, 0, 0), dtype=torch.float32)
    # The per-clip numbers are few: they are read and turned into maps on the CPU (where the batch
    # brings them), so nothing here waits for the device; only the maps and factors travel.
    params = params.detach().cpu()
    sizes = params[:, _COL["size"]]
    S = int(sizes[0])
    if not bool((sizes == S).all()):
        raise ValueError(f"augment_batch: clips of one batch must share the output size, got {sizes.tolist()}")
    m, lo, hi = source_maps(params)
    dev = video.device
    # One grid per clip, in float64 while positions are formed (sub-pixel exact), then float32.
    ys, xs = torch.meshgrid(
        torch.arange(S, dtype=torch.float64, device=dev),
        torch.arange(S, dtype=torch.float64, device=dev),
        indexing="ij",
    )
    base = torch.stack([xs, ys, torch.ones_like(xs)], -1)  # (S, S, 3)
    uv = torch.einsum("bij,yxj->byxi", m.to(dev), base)  # (B, S, S, 2) source pixel positions
    uv = torch.maximum(torch.minimum(uv, hi.to(dev)[:, None, None, :]), lo.to(dev)[:, None, None, :])
    # grid_sample's normalised coordinates with align_corners=False: pixel i <-> (2 i + 1) / n - 1.
    scale = torch.tensor([2.0 / W, 2.0 / H], dtype=torch.float64, device=dev)
    grid = (uv * scale + (scale / 2 - 1)).to(torch.float32)
    x = video.permute(0, 1, 4, 2, 3).reshape(B, T * 3, H, W).to(torch.float32)
    factor = params[:, _COL["brightness"]].to(torch.float32)
    warp = params[:, _COL["angle"]] != 0
    ones = torch.ones_like(factor)
    before = torch.where(warp, ones, factor)  # crop path: brightness on the source, saturating
    after = torch.where(warp, factor, ones)  # rotation path: on the warped output
    if bool((before != 1).any()):
        x = x.mul_(before.to(dev).view(B, 1, 1, 1)).clamp_(0.0, 255.0)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.mul_((after / 255.0).to(dev).view(B, 1, 1, 1)).clamp_(0.0, 1.0)
    return out.view(B, T, 3, S, S)
