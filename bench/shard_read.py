"""Shard read benchmark: what reading a clip's frames from its Parquet shard costs, against
decoding the T = 16 frames the data path samples from them (issue 17, "read only what is sampled").

A training row read brings every stored frame of the clip (48 here) to use 16. This measures
whether a layout that reads only the sampled frames would pay off. Layouts, all holding the same
clips and JPEG bytes, each read from a file (in the page cache) the way Ray Data's Parquet source
reads a shard for the train stage: ``pyarrow.dataset`` fragments to row batches of the read
columns, ``DECODE_BATCH`` rows at a time, one thread:

1. v1 writer: the shard writer's settings before this bench (uncompressed, but pyarrow's default
   dictionary encoding and statistics on the frames column too), read as the train stage read it.
2. current writer (``pipeline.data.shards.shard_bytes``): frames PLAIN, no dictionary, no
   statistics, uncompressed; read the same way, and memory-mapped as the train stage reads
   local shards now (``pipeline.data.shards.reader_filesystem``).
3. snappy: the current layout with the frames compressed, for reference (JPEG does not shrink).
4. one row group per frame: the layout pyarrow can read selectively (its reader skips row groups,
   never pages: Arrow's page-index row ranges are not in the Python API), reading only the 16
   sampled row groups of each clip (``read_row_groups``; footer parse included).
5. sampled-only floor: rows that hold only the 16 sampled frames, current writer, read like the
   train stage. Not a layout (the sample changes every epoch); it is what a reader fetching
   exactly the sampled frames could at best cost, so no storage layout can gain more than the
   train reader's cost minus this.

The decode is the data path's (``decode_rgb``, exact) of the 16 sampled JPEGs at the model's
input size. Costs are CPU-seconds of this single-threaded process per clip (load from other
processes does not inflate them by much), ratios are paired within a round; medians over rounds
are shown, and the best (lowest) round in brackets: on a loaded machine cache misses and page
faults only ever add CPU time, so the best round is the closest to the intrinsic cost.
Run: ``.venv/bin/python bench/shard_read.py [--clips 32] [--frames 48] [--sizes 224,448]
[--repeats 7]`` (about a minute).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.schema import SHARD_SCHEMA  # noqa: E402
from pipeline.data.shards import parquet_write_options, reader_filesystem, shard_bytes  # noqa: E402
from pipeline.storage import Storage  # noqa: E402
from pipeline.train.data import DECODE_BATCH, READ_COLUMNS  # noqa: E402
from pipeline.train.sampling import sample_indices  # noqa: E402
from pipeline.train.transforms import clip_rng, decode_rgb  # noqa: E402

T = 16
INPUT = 224
V1_OPTIONS = {"compression": "none"}  # the writer until this bench: pyarrow defaults otherwise
CURRENT = "current writer (frames PLAIN, no statistics)"
FLOOR = "floor: rows holding only the 16 sampled"
TRAIN = "current writer, memory-mapped (the train reader)"


def face_like_jpegs(n: int, size: int, rng: np.random.Generator) -> list[bytes]:
    """Smooth face-crop-like frames (about 12 KB per 224 px JPEG at quality 90, as real crops)."""
    base = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 6)
    base = cv2.normalize(base, None, 30, 220, cv2.NORM_MINMAX)
    cv2.ellipse(base, (size // 2, size // 2), (size // 3, size // 2 - 10), 0, 0, 360, (150, 180, 220), -1)
    out = []
    for t in range(n):
        noise = rng.integers(-7, 8, base.shape, dtype=np.int16)  # sensor-like grain, cheap to draw
        img = np.clip(np.roll(base, t, axis=1) + noise, 0, 255).astype(np.uint8)
        out.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def clip_rows(clips: int, frames: int, size: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "clip_id": f"clip{k:04d}",
            "dataset": "bench",
            "label": k % 7,
            "label_name": str(k % 7),
            "splits": ["1:train", "2:test"],
            "num_frames": frames,
            "frames": face_like_jpegs(frames, size, rng),
            "boxes": [[0.0, 0.0, float(size), float(size)]] * frames,
            "face_fallback": False,
            "source_path": f"/videos/clip{k:04d}.mp4",
            "fps": 25.0,
        }
        for k in range(clips)
    ]


def sampled(clip_id: str, stored: int, epoch: int) -> np.ndarray:
    return sample_indices(stored, T, True, clip_rng(0, epoch, clip_id))


def write_layouts(tmp: Path, rows: list[dict], epoch: int) -> dict[str, Path]:
    table = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)
    rows_per_group = max(1, (32 << 20) // max(1, table.nbytes // len(rows)))  # as the shard writer
    paths = {name: tmp / f"{name}.parquet" for name in ("v1", "current", "snappy", "per-frame", "floor")}
    pq.write_table(table, paths["v1"], row_group_size=rows_per_group, **V1_OPTIONS)
    paths["current"].write_bytes(shard_bytes(table))
    pq.write_table(
        table, paths["snappy"], row_group_size=rows_per_group, **{**parquet_write_options(), "compression": "snappy"}
    )
    per_frame = pa.table(
        {
            "clip_id": pa.array([r["clip_id"] for r in rows for _ in r["frames"]], pa.string()),
            "frame": pa.array([t for r in rows for t in range(len(r["frames"]))], pa.int32()),
            "jpeg": pa.array([b for r in rows for b in r["frames"]], pa.binary()),
        }
    )
    pq.write_table(
        per_frame,
        paths["per-frame"],
        row_group_size=1,
        compression="none",
        use_dictionary=["clip_id"],
        write_statistics=["clip_id", "frame"],
    )
    floor = [
        {**r, "frames": [r["frames"][i] for i in sampled(r["clip_id"], len(r["frames"]), epoch)], "num_frames": T}
        for r in rows
    ]
    paths["floor"].write_bytes(shard_bytes(pa.Table.from_pylist(floor, schema=SHARD_SCHEMA)))
    return paths


def read_rows(path: Path, filesystem=None) -> int:
    """The train reader's read, as Ray Data's Parquet source does it (``pyarrow.dataset``
    fragments to row batches of the read columns); returns the clip count."""
    dataset = pads.dataset([str(path)], format="parquet", filesystem=filesystem or pafs.LocalFileSystem())
    n = 0
    for batch in dataset.to_batches(columns=READ_COLUMNS, batch_size=DECODE_BATCH, use_threads=False):
        n += batch.num_rows
    return n


def read_per_frame(path: Path, clips: int, frames: int, epoch: int) -> int:
    pf = pq.ParquetFile(path)
    for k in range(clips):
        groups = [int(k * frames + i) for i in sampled(f"clip{k:04d}", frames, epoch)]
        pf.read_row_groups(groups, columns=["jpeg"], use_threads=False)
    return clips


def decode_sampled(table: pa.Table, epoch: int) -> int:
    col = table.column("frames").combine_chunks()
    offsets, values = col.offsets.to_numpy(), col.values
    for i, clip_id in enumerate(table.column("clip_id").to_pylist()):
        for j in sampled(clip_id, int(offsets[i + 1] - offsets[i]), epoch):
            decode_rgb(values[int(offsets[i] + j)].as_buffer(), INPUT)
    return table.num_rows


def check_same_bytes(paths: dict[str, Path], rows: list[dict], epoch: int) -> None:
    """Every layout yields exactly the sampled frames' bytes (so the timings compare like with like)."""
    want = [[r["frames"][i] for i in sampled(r["clip_id"], len(r["frames"]), epoch)] for r in rows]
    for name in ("v1", "current", "snappy"):
        t = pq.read_table(paths[name], columns=READ_COLUMNS)
        got = [
            [f[i] for i in sampled(c, len(f), epoch)] for c, f in zip(t["clip_id"].to_pylist(), t["frames"].to_pylist())
        ]
        assert got == want, name
    assert pq.read_table(paths["floor"], columns=["frames"])["frames"].to_pylist() == want
    pf = pq.ParquetFile(paths["per-frame"])
    frames = len(rows[0]["frames"])
    for k, r in enumerate(rows[:4]):
        groups = [int(k * frames + i) for i in sampled(r["clip_id"], frames, epoch)]
        assert pf.read_row_groups(groups, columns=["jpeg"])["jpeg"].to_pylist() == want[k]


def cpu_per_clip(fn, min_seconds: float = 0.1) -> float:
    """CPU-seconds per clip of ``fn`` (returns its clip count), repeated for at least
    ``min_seconds`` so one timer tick or interrupt does not swing a sub-millisecond read."""
    clips, start = 0, time.process_time()
    while True:
        clips += fn()
        spent = time.process_time() - start
        if spent >= min_seconds:
            return spent / clips


def run_size(size: int, clips: int, frames: int, repeats: int) -> None:
    rows = clip_rows(clips, frames, size)
    kb = statistics.mean(len(b) for r in rows for b in r["frames"]) / 1024
    with tempfile.TemporaryDirectory() as tmp:
        epoch = 1
        paths = write_layouts(Path(tmp), rows, epoch)
        check_same_bytes(paths, rows, epoch)
        decode_table = pq.read_table(paths["current"], columns=READ_COLUMNS)
        methods = {
            "v1 writer (dictionary + statistics on frames)": lambda: read_rows(paths["v1"]),
            CURRENT: lambda: read_rows(paths["current"]),
            TRAIN: lambda: read_rows(paths["current"], reader_filesystem(Storage(tmp))),
            "frames snappy-compressed (reference)": lambda: read_rows(paths["snappy"]),
            "one row group per frame, 16 sampled read": lambda: read_per_frame(
                paths["per-frame"], clips, frames, epoch
            ),
            FLOOR: lambda: read_rows(paths["floor"], reader_filesystem(Storage(tmp))),
        }
        decode = lambda: decode_sampled(decode_table, epoch)  # noqa: E731
        for fn in (*methods.values(), decode):
            fn()  # warm-up: page cache, allocator
        costs: dict[str, list[float]] = {name: [] for name in methods}
        vs_v1: dict[str, list[float]] = {name: [] for name in methods}
        of_decode: dict[str, list[float]] = {name: [] for name in methods}
        decodes = []
        for _ in range(repeats):
            round_costs = {name: cpu_per_clip(fn) for name, fn in methods.items()}
            d = cpu_per_clip(decode)
            decodes.append(d)
            base = round_costs["v1 writer (dictionary + statistics on frames)"]
            for name, c in round_costs.items():
                costs[name].append(c)
                vs_v1[name].append(c / base)
                of_decode[name].append(100 * c / d)
    med = statistics.median
    print(
        f"\nstored crops {size} px: {clips} clips x {frames} frames, {kb:.1f} KB per JPEG; decode of the "
        f"{T} sampled at {INPUT} px: {med(decodes) * 1e3:.2f} ms per clip (median of {repeats} rounds, "
        f"best {min(decodes) * 1e3:.2f})"
    )
    print(f"{'read per clip':<48} {'CPU us (best)':>14} {'x v1':>6} {'% of decode (best)':>19}  per-round range")
    for name in methods:
        lo, hi = min(of_decode[name]), max(of_decode[name])
        best = 100 * min(costs[name]) / min(decodes)
        print(
            f"{name:<48} {med(costs[name]) * 1e6:6.0f} ({min(costs[name]) * 1e6:5.0f}) {med(vs_v1[name]):6.2f}"
            f" {med(of_decode[name]):9.1f} % ({best:4.1f} %)  {lo:.1f}-{hi:.1f}"
        )
    gain = med([c - f for c, f in zip(of_decode[TRAIN], of_decode[FLOOR])])
    best_gain = 100 * (min(costs[TRAIN]) - min(costs[FLOOR])) / min(decodes)
    print(
        f"most any layout could still save: {gain:.1f} % of the decode (the train reader minus the floor; "
        f"{best_gain:.1f} % from the best rounds)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--sizes", default="224,448")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    print(f"shard read vs sampled-frame decode, CPU time of one thread (pyarrow {pa.__version__})")
    for size in (int(s) for s in args.sizes.split(",")):
        run_size(size, args.clips, args.frames, args.repeats)


if __name__ == "__main__":
    main()
