"""The preprocess job: clip table -> face crops -> Parquet shards, distributed with Ray Data.

Entry point for stages and for other stages' tests::

    run_preprocess(storage_root: str, dataset: DatasetConfig, prep: PreprocessConfig, *,
                   clips=None, overwrite=False, retry_errors=False, log=None) -> dict

- ``clips``: None reads the dataset's official label/split files (:mod:`pipeline.data.importers`);
  or a list of ``ClipEntry`` / dicts ``{"path", "label"[, "split" | "splits"][, "clip_id"]}``
  (label = class name or index into ``dataset.class_names``; path = video file or frame folder).
- Writes ``<storage_root>/shards/<dataset.name>/``: ``part-*.parquet``, ``manifest.json``,
  ``errors.parquet`` (see :mod:`pipeline.data.shards`).
- Returns the summary dict that is also the manifest (counts, hashes, shard list, errors).
- Logs to ``pipeline.preprocess``: a line before and after (info), one per shard (debug), the
  first failed clips (warning), and a progress bar on a terminal. ``log``: a callable that gets
  every one of those lines instead (a bench silences it with ``lambda _: None``).

How it runs: ``ray.data.from_items(clip table)`` -> ``map_batches(ClipWorker)``, an actor pool
of ``prep.num_workers`` actors with ``prep.cpus_per_worker`` CPUs each; an actor builds its
face detector once and writes each finished group of clips as one shard itself (atomically,
named by its clip ids), so data never funnels through the driver and a killed run keeps every
finished shard. The driver only sees one small summary row per clip, logs a line per shard,
and writes the error table and the manifest at the end. Re-running skips clips already in the
shards and clips already in the error table (``retry_errors=True`` tries those again); a run
with different output settings (crop size, detector, ...) is refused unless ``overwrite=True``,
which clears the folder first. A re-run with nothing to do never starts Ray. The run holds the
shard folder's lock (:mod:`pipeline.locks`): a second preprocess of the same dataset and
storage root is refused with a message naming the first (host, pid, start time).

Bounded cost per clip: a worker holds a bounded frame buffer (:class:`~pipeline.data.faces.ClipCropper`),
and a clip over ``prep.max_pixels``, ``max_clip_frames`` or ``max_clip_seconds`` is an error row
naming the cap. A worker process that dies (killed for memory, crashed) is restarted by Ray and its
batch retried ``prep.worker_retries`` times; clips still without a result are then run one per
batch, as often, and a clip that still kills its worker is an error row — the job always ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import pyarrow as pa

from pipeline.config import DatasetConfig, PreprocessConfig, config_hash
from pipeline.data import shards as sh
from pipeline.data.importers import ClipTable, clips_from_records, load_clip_table
from pipeline.data.schema import MANIFEST_NAME, SCHEMA_VERSION
from pipeline.errors import UserError
from pipeline.locks import folder_lock
from pipeline.logs import progress
from pipeline.raydata import lone_retry_notice, map_batches_retried, with_lone_retries
from pipeline.storage import Storage
from pipeline.typed import to_dict

__all__ = ["run_preprocess", "is_up_to_date", "output_hash", "ClipWorker", "process_clip"]

logger = logging.getLogger(__name__)

# Failed clips named one by one on the console; the rest are counted (all are in errors.parquet).
_ERRORS_SHOWN = 5

Log = Callable[[int, str], None]  # (level, message)


def _log_to(log: Callable[[str], None] | None) -> Log:
    if log is None:
        return logger.log
    return lambda _level, message: log(message)


_OUTPUT_FIELDS = PreprocessConfig.OUTPUT_FIELDS
# JPEG at quality ~90 of a face crop: about 0.35 byte per pixel; used only to size batches.
_BYTES_PER_PIXEL = 0.35
_FRAMES_GUESS = 64

_SUMMARY_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("source_path", pa.string()),
        ("ok", pa.bool_()),
        ("reason", pa.string()),
        ("shard", pa.string()),
        ("shard_bytes", pa.int64()),
        ("num_frames", pa.int64()),
        ("decoded", pa.int64()),
        ("face_fallback", pa.bool_()),
        # Non-empty: the worker could not write a shard (storage); the driver stops the run.
        ("fatal", pa.string()),
    ]
)


def output_hash(dataset_name: str, classes: list[str], prep: PreprocessConfig) -> str:
    """Hash of what determines the shard rows' content (dataset, label order, crop settings)."""
    settings = {k: getattr(prep, k) for k in _OUTPUT_FIELDS}
    return config_hash(
        {"dataset": dataset_name, "classes": list(classes), "settings": settings, "schema_version": SCHEMA_VERSION}
    )


def process_clip(clip: dict, cropper) -> tuple[dict, int]:
    """One clip -> (a SHARD_SCHEMA row, frames decoded). Raises UnreadableClip and the like."""
    result = cropper.run_source(clip["source"], threads=1)
    return {
        "clip_id": clip["clip_id"],
        "dataset": clip["dataset"],
        "label": int(clip["label"]),
        "label_name": clip["label_name"],
        "splits": list(clip["splits"]),
        "num_frames": len(result.frames),
        "frames": result.frames,
        "boxes": result.boxes,
        "face_fallback": result.face_fallback,
        "source_path": clip["source"],
        "fps": result.fps,
    }, result.num_decoded


class ClipWorker:
    """Ray Data actor: holds one detector and writes shards of at most ~``target_bytes`` each."""

    def __init__(self, storage_root: str, rel_dir: str, prep: dict, out_hash: str, target_bytes: int):
        import cv2

        from pipeline.data.faces import ClipCropper, build_detector
        from pipeline.data.video import ClipLimits

        # One worker = cpus_per_worker cores: OpenCV's own thread pool would oversubscribe them.
        cv2.setNumThreads(max(1, int(prep["cpus_per_worker"])))
        self.storage = Storage(storage_root)
        self.rel_dir, self.out_hash, self.target_bytes = rel_dir, out_hash, target_bytes
        detector = build_detector(prep["detector"], prep["yunet_model"], prep["detect_max_side"])
        self.cropper = ClipCropper(
            detector,
            detect_every=prep["detect_every"],
            margin=prep["margin"],
            crop_size=prep["crop_size"],
            jpeg_quality=prep["jpeg_quality"],
            max_frames=prep["max_frames"],
            limits=ClipLimits(prep["max_pixels"], prep["max_clip_frames"], prep["max_clip_seconds"]),
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        # A failure outside the per-clip work (writing a shard) comes back as a row, not as an
        # exception: the driver lets Ray Data skip failed batches (a dead worker), and an
        # exception here would be skipped with them instead of stopping the run.
        try:
            return self._process(batch)
        except Exception as exc:  # noqa: BLE001 — reported to the driver, which raises it
            import traceback

            first = batch.slice(0, 1).to_pylist()[0] if batch.num_rows else {"clip_id": "", "source": ""}
            return pa.Table.from_pylist(
                [
                    {
                        "clip_id": first["clip_id"],
                        "source_path": first["source"],
                        "ok": False,
                        "reason": "",
                        "fatal": "".join(traceback.format_exception_only(exc)).strip(),
                    }
                ],
                schema=_SUMMARY_SCHEMA,
            )

    def _process(self, batch: pa.Table) -> pa.Table:
        summary: list[dict] = []
        rows: list[dict] = []
        pending: list[dict] = []  # summaries of the rows not yet written
        size = 0

        def flush() -> None:
            nonlocal rows, pending, size
            if rows:
                name, nbytes = sh.write_shard(self.storage, self.rel_dir, rows, self.out_hash)
                for s in pending:
                    s.update(shard=name, shard_bytes=nbytes)
                summary.extend(pending)
            rows, pending, size = [], [], 0

        for clip in batch.to_pylist():
            base = {"clip_id": clip["clip_id"], "source_path": clip["source"], "shard": "", "shard_bytes": 0}
            try:
                row, decoded = process_clip(clip, self.cropper)
            except Exception as exc:  # noqa: BLE001 — any per-clip failure goes to the error table
                summary.append(
                    {
                        **base,
                        "ok": False,
                        "reason": _reason(exc),
                        "num_frames": 0,
                        "decoded": 0,
                        "face_fallback": False,
                        "fatal": "",
                    }
                )
                continue
            rows.append(row)
            pending.append(
                {
                    **base,
                    "ok": True,
                    "reason": "",
                    "num_frames": row["num_frames"],
                    "decoded": decoded,
                    "face_fallback": row["face_fallback"],
                    "fatal": "",
                }
            )
            size += sum(len(f) for f in row["frames"])
            if size >= self.target_bytes:
                flush()
        flush()
        return pa.Table.from_pylist(summary, schema=_SUMMARY_SCHEMA)


def _reason(exc: Exception) -> str:
    from pipeline.data.video import UnreadableClip

    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, UnreadableClip) else f"{type(exc).__name__}: {text}"


def _table_for(dataset: DatasetConfig, clips: Iterable | None) -> ClipTable:
    if clips is None:
        return load_clip_table(dataset)
    return clips_from_records(clips, dataset.name, dataset.class_names)


def run_preprocess(
    storage_root: Storage | str,
    dataset: DatasetConfig,
    prep: PreprocessConfig,
    *,
    clips: Iterable | None = None,
    overwrite: bool = False,
    retry_errors: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Preprocess every clip not yet in the shards; returns the manifest dict (module doc)."""
    emit = _log_to(log)
    problems = prep.validate()
    if problems:
        raise UserError("preprocess: " + "; ".join(problems))
    storage = storage_root if isinstance(storage_root, Storage) else Storage(storage_root)
    rel_dir = sh.shard_dir(storage, dataset.name)
    # One writer per shard folder: two runs would write the same clips into differently grouped shards.
    with folder_lock(storage, rel_dir, what=f"preprocess of {dataset.name}"):
        return _preprocess_locked(storage, rel_dir, dataset, prep, clips, overwrite, retry_errors, emit)


def _preprocess_locked(
    storage: Storage,
    rel_dir: str,
    dataset: DatasetConfig,
    prep: PreprocessConfig,
    clips: Iterable | None,
    overwrite: bool,
    retry_errors: bool,
    emit: Log,
) -> dict:
    table = _table_for(dataset, clips)
    if not table.clips:
        raise UserError(f"dataset {dataset.name}: the annotation lists no clips")
    out_hash = output_hash(dataset.name, table.classes, prep)
    if overwrite:
        storage.delete(rel_dir)
    done, hashes = sh.finished_clips(storage, rel_dir)
    if done and hashes != {out_hash}:
        raise UserError(
            f"{storage.path(rel_dir)} holds shards made with other preprocess settings or classes; "
            "re-run with --overwrite (or a different storage.root) to rebuild them"
        )
    # Clips that failed before stay failed (a corrupt file stays corrupt) unless asked to retry.
    old_errors = (
        [] if retry_errors else [e for e in sh.read_errors(storage, rel_dir).to_pylist() if e["clip_id"] not in done]
    )
    failed = {e["clip_id"] for e in old_errors}
    todo = [c for c in table.clips if c.clip_id not in done and c.clip_id not in failed]
    table_ids = {c.clip_id for c in table.clips}
    old_errors = [e for e in old_errors if e["clip_id"] in table_ids]
    for note in table.notes:
        emit(logging.INFO, f"preprocess: {note}")
    failed_before = f", {len(old_errors)} failed before (retry with --retry-errors)" if old_errors else ""
    emit(
        logging.INFO,
        f"preprocess {dataset.name}: {len(table.clips)} clips, {len(done & table_ids)} already in "
        f"shards{failed_before}, {len(todo)} to do -> {storage.path(rel_dir)}",
    )

    started = time.perf_counter()
    errors: list[dict] = list(old_errors)
    frames = 0
    if todo:
        new_errors, frames = _run_ray(storage, rel_dir, dataset.name, todo, prep, out_hash, emit)
        errors += new_errors
    elapsed = time.perf_counter() - started
    sh.write_errors(storage, rel_dir, errors)
    counts = sh.shard_counts(storage, rel_dir)
    stale = len(done - table_ids)
    if stale:
        emit(
            logging.WARNING,
            f"preprocess: {stale} clip(s) in the shards are no longer in the annotation; "
            "use --overwrite to rebuild without them",
        )
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "dataset": dataset.name,
        "classes": table.classes,
        "counts": counts,
        "clips_in_annotation": len(table.clips),
        "num_errors": len(errors),
        "stale_clips": stale,
        "shards": sh.shard_files(storage, rel_dir),
        "preprocess": to_dict(prep),
        "config_hash": config_hash(prep),
        "output_hash": out_hash,
        "inputs_hash": table.inputs_hash(),
        "annotation_files": table.annotation_files,
        "notes": table.notes,
        "last_run": {
            "clips": len(todo),
            "frames_decoded": frames,
            "seconds": round(elapsed, 3),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    sh.write_manifest(storage, rel_dir, manifest)
    rate = f" in {elapsed:.0f} s" if todo else ""
    emit(
        logging.WARNING if errors else logging.INFO,
        f"preprocess {dataset.name}: {counts['clips']} clips in {len(manifest['shards'])} shards{rate}, "
        f"{len(errors)} errors" + (f" (see {storage.path(rel_dir, 'errors.parquet')})" if errors else ""),
    )
    return manifest


def is_up_to_date(
    storage_root: str, dataset: DatasetConfig, prep: PreprocessConfig, *, clips: Iterable | None = None
) -> bool:
    """True when the shards were made from these inputs with these output settings and every
    clip was attempted (what ``dferclip run`` checks before skipping preprocess)."""
    storage = Storage(storage_root)
    rel_dir = sh.shard_dir(storage, dataset.name)
    if not storage.exists(rel_dir, MANIFEST_NAME):
        return False
    manifest = sh.read_manifest(storage, rel_dir)
    table = _table_for(dataset, clips)
    return (
        manifest.get("schema_version") == SCHEMA_VERSION
        and manifest.get("output_hash") == output_hash(dataset.name, table.classes, prep)
        and manifest.get("inputs_hash") == table.inputs_hash()
    )


def _run_ray(
    storage: Storage, rel_dir: str, dataset_name: str, todo: list, prep: PreprocessConfig, out_hash: str, emit: Log
) -> tuple[list[dict], int]:
    from pipeline.raycluster import check_resources, ensure_ray

    ensure_ray()
    check_resources("preprocess worker", cpus=prep.cpus_per_worker, key="preprocess.cpus_per_worker")
    target = int(prep.shard_target_mb * 1024 * 1024)
    clip_bytes = (prep.max_frames or _FRAMES_GUESS) * prep.crop_size**2 * _BYTES_PER_PIXEL
    # A batch is about one shard, but small enough that every worker gets several batches.
    per_batch = max(1, min(int(target // clip_bytes) or 1, -(-len(todo) // (4 * prep.num_workers))))
    items = [
        {
            "clip_id": c.clip_id,
            "source": c.source,
            "label": c.label,
            "label_name": c.label_name,
            "splits": list(c.splits),
            "dataset": dataset_name,
        }
        for c in todo
    ]
    worker_args = dict(
        # Absolute: a Ray worker's current directory need not be the driver's.
        storage_root=storage.uri(),
        rel_dir=rel_dir,
        prep=to_dict(prep),
        out_hash=out_hash,
        target_bytes=target,
    )
    errors: list[dict] = []
    done = frames = 0
    seen: set[str] = set()

    with progress(len(todo), f"preprocess {dataset_name}", unit="clip", logger=logger) as bar:

        def take(rows: list[dict]) -> None:
            nonlocal done, frames
            fatal = next((r for r in rows if r["fatal"]), None)
            if fatal is not None:
                raise RuntimeError(f"preprocess: a worker failed on the batch of {fatal['clip_id']}: {fatal['fatal']}")
            done += len(rows)
            for r in rows:
                if not r["ok"]:
                    errors.append({"clip_id": r["clip_id"], "source_path": r["source_path"], "reason": r["reason"]})
                    level = logging.WARNING if len(errors) <= _ERRORS_SHOWN else logging.DEBUG
                    emit(level, f"preprocess: {r['clip_id']} failed: {r['reason']}")
                frames += r["decoded"]
            for r in rows:
                if r["shard"] and r["shard"] not in seen:
                    seen.add(r["shard"])
                    n = sum(1 for x in rows if x["shard"] == r["shard"])
                    emit(
                        logging.DEBUG,
                        f"  shard {r['shard']}: {n} clips, {r['shard_bytes'] / 1e6:.1f} MB "
                        f"[{done}/{len(todo)} clips, {len(errors)} errors]",
                    )
            bar.update(len(rows), postfix=f"{len(errors)} errors" if errors else None)

        def one_pass(its: list[dict], alone: bool) -> set[str]:
            return _map_clips(its, 1 if alone else per_batch, worker_args, prep, take)

        def settle(lost: list[dict]) -> list[dict]:
            # Clips that reached a shard before their worker died are done.
            nonlocal done
            in_shards, _ = sh.finished_clips(storage, rel_dir)
            still = [it for it in lost if it["clip_id"] not in in_shards]
            done += len(lost) - len(still)
            bar.update(len(lost) - len(still))
            return still

        def announce(lost: list[dict]) -> None:
            emit(logging.WARNING, lone_retry_notice("preprocess", "a worker process", len(lost), "clip(s)"))

        # A batch whose worker died on every try: each of its clips runs alone, so only a clip
        # that kills its worker by itself ends as an error row (pipeline/raydata.py).
        lost = with_lone_retries(items, lambda it: it["clip_id"], one_pass, settle=settle, announce=announce)
        tries = prep.worker_retries + 1
        if lost:
            take(
                [
                    {
                        "clip_id": it["clip_id"],
                        "source_path": it["source"],
                        "ok": False,
                        "reason": f"{it['source']}: the preprocess worker process died on this clip "
                        f"{tries} time(s) (killed, e.g. for memory, or crashed; see the Ray worker logs); "
                        "lower preprocess.max_pixels / max_clip_frames / max_clip_seconds, or give workers "
                        "more memory",
                        "shard": "",
                        "shard_bytes": 0,
                        "num_frames": 0,
                        "decoded": 0,
                        "face_fallback": False,
                        "fatal": "",
                    }
                    for it in lost
                ]
            )
    return errors, frames


def _map_clips(
    items: list[dict], per_batch: int, worker_args: dict, prep: PreprocessConfig, take: Callable[[list[dict]], None]
) -> set[str]:
    """One Ray Data pass of ClipWorker over ``items``; ``take`` gets each batch's summary rows.
    Returns the clip ids that came back (a batch whose worker died on every try does not).
    ``per_batch`` 1 also gives each actor one batch at a time: a worker that dies then takes
    only its own clip's try with it, not those of clips queued behind it."""
    import ray

    blocks = max(1, -(-len(items) // per_batch))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    ds = map_batches_retried(
        ds,
        ClipWorker,
        retries=prep.worker_retries,
        alone=per_batch == 1,
        pool_size=min(prep.num_workers, blocks),
        fn_constructor_kwargs=worker_args,
        batch_size=per_batch,
        batch_format="pyarrow",
        num_cpus=prep.cpus_per_worker,
    )
    answered: set[str] = set()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = batch.to_pylist()
        answered.update(r["clip_id"] for r in rows)
        take(rows)
    return answered
