"""A minimal shard row in the schema's exact shape, for tests of how shard folders are opened
(no decoding happens there, so one placeholder JPEG byte string stands in for the frames)."""

from __future__ import annotations

__all__ = ["shard_row"]


def shard_row(clip_id: str, label: int = 0) -> dict:
    return {
        "clip_id": clip_id,
        "dataset": "dfew",
        "label": label,
        "label_name": ["happiness", "sadness"][label],
        "splits": ["1:train"],
        "num_frames": 1,
        "frames": [b"\xff\xd8jpeg"],
        "boxes": [[0.0, 0.0, 1.0, 1.0]],
        "face_fallback": False,
        "source_path": f"/videos/{clip_id}.mp4",
        "fps": 25.0,
    }
