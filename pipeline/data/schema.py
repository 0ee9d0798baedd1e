"""The shard contract between preprocess and train/tune (docs/design.md §3), in one place.

One Parquet row per clip. Split membership of *every* official fold is stored in the row
(``splits``: ``["1:train", "2:test", ...]``), so training selects any fold without
preprocessing again. Frames are JPEG bytes in temporal order; boxes are the face boxes in the
source frame's pixel coordinates ``[x0, y0, x1, y1]``. How the frames column is written (PLAIN,
uncompressed, no dictionary or statistics: JPEG bytes gain nothing from them) is the writer's
choice, not part of the contract: :func:`pipeline.data.shards.parquet_write_options`; shards
written with other settings read the same. Layout below a dataset's shard folder::

    part-<hash>.parquet    data shards (written atomically)
    manifest.json          schema version, classes, counts per class and split, config
    errors.parquet         clip_id, source_path, reason for every clip that failed
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "SCHEMA_VERSION",
    "SHARD_SCHEMA",
    "ERROR_SCHEMA",
    "MANIFEST_NAME",
    "ERRORS_NAME",
    "membership",
    "parse_membership",
]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
ERRORS_NAME = "errors.parquet"

SHARD_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("label_name", pa.string(), nullable=False),
        pa.field("splits", pa.list_(pa.string()), nullable=False),
        pa.field("num_frames", pa.int32(), nullable=False),
        pa.field("frames", pa.list_(pa.binary()), nullable=False),
        pa.field("boxes", pa.list_(pa.list_(pa.float32(), 4)), nullable=False),
        # True when no face was found anywhere in the clip and the fallback crop was used.
        pa.field("face_fallback", pa.bool_(), nullable=False),
        pa.field("source_path", pa.string(), nullable=False),
        pa.field("fps", pa.float64(), nullable=True),
    ],
    metadata={"dferclip.schema_version": str(SCHEMA_VERSION)},
)

ERROR_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("source_path", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)


def membership(fold: int, split: str) -> str:
    """Encode one fold/split membership; ``split`` is ``train`` or ``test``."""
    return f"{fold}:{split}"


def parse_membership(entry: str) -> tuple[int, str]:
    fold, _, split = entry.partition(":")
    return int(fold), split
