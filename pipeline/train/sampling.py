"""Which T frames of a clip the model sees: the paper's segment rule, in one function.

Training splits the clip's frame range into T equal segments and takes a random frame inside
each (a different one every epoch); evaluation takes the middle frame of each segment. A clip
with fewer than T frames uses all of its frames and repeats the last one to fill up.

The published code computes segment lengths with integer division when training (so the tail
``n mod T`` frames are never drawn, and clips of T..2T-1 frames fall back to sorted uniform
draws); here segment boundaries are ``floor(i * n / T)``, so every frame belongs to exactly one
segment and each segment is non-empty whenever ``n >= T``. Evaluation indices match the
published ``int(tick / 2 + tick * i)`` with ``tick = n / T``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sample_indices"]


def sample_indices(
    num_frames_available: int, T: int, train: bool, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Indices (T,) int64 into the clip's frames, in temporal order.

    ``rng`` is required when ``train`` is true (draws one integer per segment); evaluation is
    deterministic and ignores it.
    """
    n = int(num_frames_available)
    if n < 1:
        raise ValueError(f"a clip needs at least one frame, got {n}")
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if n < T:
        # Short clip: every frame once, then the last index repeated ("edge" padding).
        return np.concatenate([np.arange(n), np.full(T - n, n - 1)]).astype(np.int64)
    if not train:
        tick = n / T
        return (tick / 2.0 + tick * np.arange(T)).astype(np.int64)
    if rng is None:
        raise ValueError("training-mode sampling needs an rng")
    starts = (np.arange(T) * n) // T  # (T,) segment i covers [starts[i], ends[i])
    ends = (np.arange(1, T + 1) * n) // T
    return starts + rng.integers(0, ends - starts)  # one draw per segment
