"""Shard folder helpers: where shards live, writing them atomically, reading what is finished.

A dataset's shards live in ``<storage.root>/shards/<dataset.name>/`` (layout in
:mod:`pipeline.data.schema`). Each ``part-<hash>.parquet`` is written in one atomic step and
named by a hash of the clip ids it holds, so a retried batch rewrites the same file instead of
adding a duplicate, and a killed run leaves only whole shards (plus hidden ``.tmp`` files,
which readers never list). Every shard records the hash of the output-affecting preprocess
settings in its file metadata; a re-run with different settings refuses to mix them.

Selecting a fold at training time needs no re-preprocessing: :func:`split_filter` is a pyarrow
expression (``pyarrow.dataset``, ``pyarrow.Table.filter``), :func:`split_row_filter` a row
predicate for ``ray.data.Dataset.filter``, and :func:`select_clips` lists a fold/split's clip ids.

A clip id is in at most one shard: readers (:func:`finished_clips`, training's ``open_shards``,
the tune embedding cache) refuse a folder where two shards hold the same clip (two preprocess
runs that wrote it at once before the folder was locked, a shard copied in by hand) rather
than count the clip twice and let it land in both train and test. Preprocess holds the folder's
lock (:mod:`pipeline.locks`) while it writes.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.data.schema import ERROR_SCHEMA, ERRORS_NAME, MANIFEST_NAME, SCHEMA_VERSION, SHARD_SCHEMA, membership
from pipeline.errors import UserError
from pipeline.names import check_name
from pipeline.storage import Storage

__all__ = [
    "shard_dir",
    "shard_files",
    "shard_paths",
    "reader_filesystem",
    "write_shard",
    "shard_bytes",
    "parquet_write_options",
    "write_errors",
    "read_errors",
    "write_manifest",
    "read_manifest",
    "read_current_manifest",
    "finished_clips",
    "check_unique_clips",
    "shard_counts",
    "split_filter",
    "split_row_filter",
    "select_clips",
    "OUTPUT_HASH_KEY",
]

OUTPUT_HASH_KEY = b"dferclip.output_hash"
# Rows hold whole clips (tens of JPEGs each); small row groups let readers stream them.
_ROW_GROUP_BYTES = 32 * 1024 * 1024
# The frames column holds JPEG bytes: already entropy-coded, and no two alike. Compressing them,
# dictionary-encoding them or keeping min/max statistics of them costs CPU on every write and
# read for nothing. pyarrow's default dictionary did worst: it checks the dictionary's size only
# between write batches of 1024 values, so most of a row group's JPEGs landed in one dictionary
# page that a reader decodes whole before the first row (2-3x the read CPU of PLAIN). The column
# is written PLAIN, uncompressed, without statistics, so a reader copies the bytes and nothing
# else (bench/shard_read.py; docs/preprocess.md#frame-storage).
# The small columns keep pyarrow's defaults (dictionary for repeated names, statistics for
# row-group pruning); only compression is off file-wide, they are a few bytes per clip.
_PLAIN_COLUMNS = ("frames",)


def _leaf_paths(name: str, type_: pa.DataType) -> list[str]:
    """Parquet leaf column paths of one Arrow field (``frames`` -> ``frames.list.element``):
    pyarrow's per-column write options match leaves, not top-level names."""
    if pa.types.is_list(type_) or pa.types.is_fixed_size_list(type_) or pa.types.is_large_list(type_):
        return _leaf_paths(f"{name}.list.element", type_.value_type)
    return [name]


def parquet_write_options(schema: pa.Schema = SHARD_SCHEMA) -> dict:
    """``pyarrow.parquet.write_table`` keyword arguments for a shard (without ``row_group_size``)."""
    plain = [p for f in schema if f.name in _PLAIN_COLUMNS for p in _leaf_paths(f.name, f.type)]
    other = [p for f in schema if f.name not in _PLAIN_COLUMNS for p in _leaf_paths(f.name, f.type)]
    return {
        "compression": "none",
        "use_dictionary": other,
        "write_statistics": other,
        "column_encoding": dict.fromkeys(plain, "PLAIN"),
    }


def shard_bytes(table: pa.Table) -> bytes:
    """``table`` (SHARD_SCHEMA) as the bytes of one Parquet shard, with the shard writer settings."""
    per_row = max(1, table.nbytes // max(1, table.num_rows))
    sink = pa.BufferOutputStream()
    rows_per_group = max(1, _ROW_GROUP_BYTES // per_row)
    pq.write_table(table, sink, row_group_size=rows_per_group, **parquet_write_options(table.schema))
    return sink.getvalue().to_pybytes()


def reader_filesystem(storage: Storage):
    """The filesystem to read shard files through: local shards memory-mapped, so Parquet's
    pages reach the reader without first being copied into a read buffer (about a third less
    CPU per clip read, bench/shard_read.py); other storage as it is. Shards are only ever
    replaced whole (an atomic rename), never rewritten in place, so a mapped file cannot change
    under a reader."""
    if storage.is_local:
        return pafs.LocalFileSystem(use_mmap=True)
    return storage.fs


def shard_dir(storage: Storage, dataset_name: str) -> str:
    """Relative path of a dataset's shard folder below the storage root."""
    return posixpath.join("shards", check_name(dataset_name, "dataset.name"))


def shard_files(storage: Storage, rel_dir: str) -> list[str]:
    """Names of the finished data shards (``part-*.parquet``), sorted."""
    return [n for n in storage.list(rel_dir, suffix=".parquet") if n.startswith("part-")]


def shard_paths(storage: Storage, rel_dir: str) -> list[str]:
    """Full filesystem paths of the data shards (for pyarrow/polars/Ray Data with storage.fs)."""
    return [storage.path(rel_dir, n) for n in shard_files(storage, rel_dir)]


def write_shard(storage: Storage, rel_dir: str, rows: list[dict], output_hash: str) -> tuple[str, int]:
    """Write rows (dicts matching SHARD_SCHEMA) as one shard atomically; returns (name, bytes)."""
    ids = sorted(r["clip_id"] for r in rows)
    name = "part-" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16] + ".parquet"
    table = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)
    schema = table.schema.with_metadata({**(table.schema.metadata or {}), OUTPUT_HASH_KEY: output_hash.encode()})
    data = shard_bytes(table.replace_schema_metadata(schema.metadata))
    storage.write_bytes(data, rel_dir, name)
    return name, len(data)


def _read_columns(storage: Storage, rel_dir: str, columns: list[str], filter=None) -> pa.Table:
    paths = shard_paths(storage, rel_dir)
    if not paths:
        return pa.table({c: pa.array([], SHARD_SCHEMA.field(c).type) for c in columns})
    dataset = pads.dataset(paths, schema=SHARD_SCHEMA, format="parquet", filesystem=storage.fs)
    return dataset.to_table(columns=columns, filter=filter)


def _refuse_duplicate(clip_id: str, first: str, second: str, hint: str) -> None:
    where = f"twice in the shard {first}" if first == second else f"in two shards, {first} and {second}"
    raise UserError(
        f"clip {clip_id!r} is {where}: two preprocess runs wrote this folder at once, or a shard was copied in; {hint}"
    )


_DUPLICATE_HINT = "rebuild the shards with `dferclip preprocess --overwrite`"


def check_unique_clips(filesystem, paths: list[str], hint: str = _DUPLICATE_HINT) -> None:
    """UserError naming both shard files when a clip id is in more than one of ``paths``
    (or twice in one); reads only the ``clip_id`` column."""
    seen: dict[str, str] = {}
    for path in paths:
        ids = pq.read_table(path, columns=["clip_id"], filesystem=filesystem).column("clip_id").to_pylist()
        for clip_id in ids:
            if clip_id in seen:
                _refuse_duplicate(clip_id, seen[clip_id], path, hint)
            seen[clip_id] = path


def finished_clips(storage: Storage, rel_dir: str) -> tuple[set[str], set[str]]:
    """(clip ids present in finished shards, output hashes those shards were made with); a
    UserError naming both files when two shards hold one clip."""
    owner: dict[str, str] = {}
    hashes: set[str] = set()
    for path in shard_paths(storage, rel_dir):
        with storage.fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            meta = pf.schema_arrow.metadata or {}
            hashes.add(meta.get(OUTPUT_HASH_KEY, b"").decode())
            for clip_id in pf.read(columns=["clip_id"]).column("clip_id").to_pylist():
                if clip_id in owner:
                    _refuse_duplicate(clip_id, owner[clip_id], path, _DUPLICATE_HINT)
                owner[clip_id] = path
    return set(owner), hashes


def shard_counts(storage: Storage, rel_dir: str) -> dict:
    """Clip and frame counts per class and per fold/split membership, read from the shards."""
    t = _read_columns(storage, rel_dir, ["clip_id", "label_name", "splits", "num_frames", "face_fallback"])
    names = t.column("label_name").to_pylist()
    splits = t.column("splits").to_pylist()
    per_split: dict[str, Counter] = {}
    for name, memberships in zip(names, splits):
        for m in memberships:
            per_split.setdefault(m, Counter())[name] += 1
    return {
        "clips": t.num_rows,
        "frames": int(pc.sum(t.column("num_frames")).as_py() or 0),
        "face_fallback": int(pc.sum(t.column("face_fallback").cast(pa.int64())).as_py() or 0),
        "per_class": dict(sorted(Counter(names).items())),
        "per_split": {k: dict(sorted(v.items())) for k, v in sorted(per_split.items())},
        "duplicate_clip_ids": t.num_rows - len(set(t.column("clip_id").to_pylist())),
    }


def write_errors(storage: Storage, rel_dir: str, errors: list[dict]) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(errors, schema=ERROR_SCHEMA), sink)
    storage.write_bytes(sink.getvalue().to_pybytes(), rel_dir, ERRORS_NAME)


def read_errors(storage: Storage, rel_dir: str) -> pa.Table:
    if not storage.exists(rel_dir, ERRORS_NAME):
        return ERROR_SCHEMA.empty_table()
    with storage.fs.open_input_file(storage.path(rel_dir, ERRORS_NAME)) as f:
        return pq.read_table(f)


def write_manifest(storage: Storage, rel_dir: str, manifest: dict) -> None:
    storage.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", rel_dir, MANIFEST_NAME)


def read_manifest(storage: Storage, rel_dir: str) -> dict:
    """The manifest of a shard folder; UserError naming the folder when there is none."""
    if not storage.exists(rel_dir, MANIFEST_NAME):
        raise UserError(
            f"no shards manifest at {storage.path(rel_dir, MANIFEST_NAME)}: run `dferclip preprocess` first"
        )
    try:
        return json.loads(storage.read_text(rel_dir, MANIFEST_NAME))
    except json.JSONDecodeError as exc:
        raise UserError(f"{storage.path(rel_dir, MANIFEST_NAME)}: not valid JSON ({exc})") from None


def read_current_manifest(storage: Storage, rel_dir: str) -> dict:
    """:func:`read_manifest` for a reader (train, tune, evaluate): a UserError unless the shards
    were written with this code's ``SCHEMA_VERSION``; rows of another layout would fail later,
    mid-run, or be read wrongly."""
    manifest = read_manifest(storage, rel_dir)
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        found = "no schema version" if version is None else f"shard schema version {version!r}"
        raise UserError(
            f"{storage.path(rel_dir, MANIFEST_NAME)}: the shards were written with {found}, and this code "
            f"reads version {SCHEMA_VERSION}; re-run preprocess with --overwrite "
            "(`dferclip preprocess --config ... --overwrite`) to rewrite them"
        )
    return manifest


def split_filter(fold: int, split: str) -> pc.Expression:
    """pyarrow expression true for rows in ``fold``'s ``split`` (``train``/``test``).

    pyarrow has no list-contains kernel, so the list is joined into ``,a,b,`` and searched for
    ``,<fold>:<split>,`` — the commas keep ``1:train`` from matching ``11:train``.
    """
    call = pc.Expression._call
    joined = call("binary_join", [pc.field("splits"), pc.scalar(",")])
    wrapped = call("binary_join_element_wise", [pc.scalar(","), joined, pc.scalar(","), pc.scalar("")])
    return call("match_substring", [wrapped], pc.MatchSubstringOptions(f",{membership(fold, split)},"))


def split_row_filter(fold: int, split: str):
    """Row predicate for ``ray.data.Dataset.filter`` (Ray Data expressions have no list-contains)."""
    wanted = membership(fold, split)
    return lambda row: wanted in row["splits"]


def select_clips(storage: Storage, rel_dir: str, fold: int, split: str) -> list[str]:
    """Sorted clip ids of ``fold``'s ``split`` in the finished shards."""
    t = _read_columns(storage, rel_dir, ["clip_id"], filter=split_filter(fold, split))
    return sorted(t.column("clip_id").to_pylist())
