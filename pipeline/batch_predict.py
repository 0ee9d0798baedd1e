"""Batch prediction on Ray Data: a listing of videos -> Parquet result shards, resumable.

    run_batch_predict(checkpoint, listing, out, cfg: BatchPredictConfig, prep: PreprocessConfig, *,
                      timeline: TimelineConfig | None = None, retry_errors=False, overwrite=False,
                      log=None) -> dict   # the summary, also written as <out>/manifest.json

``listing`` (:func:`list_inputs`): a folder tree (every video file below it, and every folder of
frame images, each one clip), a CSV or a Parquet file with a ``path`` column (relative paths are
relative to the listing's folder); local or a pyarrow.fs URI (``s3://``, ``gs://``, ``file://``).

How it runs (one Ray Data pipeline, data never funnels through the driver):

1. ``ray.data.from_items(paths)``;
2. ``map_batches(LoadActor)``: ``cfg.loaders`` CPU actors that decode, detect and crop with
   :class:`pipeline.predict.ClipLoader` — the preprocess stage's own code, as ``dferclip
   predict`` runs it — and a long video into its timeline windows (:mod:`pipeline.timeline`);
   an input that cannot be read becomes a row carrying its reason;
3. ``map_batches(ModelActor)``: ``cfg.models`` actors holding the checkpoint's model (from the
   object store: the driver loads it once), on a GPU when the cluster has one (``device: auto``),
   running ``cfg.batch_size`` clips per forward pass (:func:`pipeline.predict.forward_probabilities`)
   and writing each batch's results as one Parquet shard the moment it is done
   (``part-<hash of its paths>.parquet``, atomically), plus a timeline PNG per long video;
4. the driver reads one small summary row per input and moves the progress bar.

When the model gets no GPU (``cfg.fuse`` auto), steps 2 and 3 are one: ``map_batches(FusedActor)``,
``cfg.loaders`` actors that each load a batch and run the model on it — on CPUs the forward
pass shares the decoders' cores anyway, and one stage starts one set of actor processes (each
imports torch and the model's modules: seconds of CPU) and moves no clip through the object
store. Every actor gets the model on a thread of its own as it starts (:class:`_Predictor`);
actors without a GPU get it traced to TorchScript (:class:`TracedModel`: the same logits, and
it loads with torch alone, where the pickled model would import open_clip and, through it,
torchvision, timm and ``torch._dynamo`` — 2 CPU-seconds per actor).

So every result equals ``dferclip predict``'s for the same input and settings. Each row is
:data:`RESULT_SCHEMA`: ``path, ok, label, probability, error, face_fallback, frames`` and
``prediction``, the exact ``predict --json`` object (with ``timeline`` for a long video).

Resumable: a re-run skips inputs already in the shards (errors too, unless ``retry_errors``;
:func:`read_results` then keeps an input's successful row). A run with another checkpoint,
crop or timeline setting than the results were made with is refused unless ``overwrite``
(which clears the folder). Killed actors: Ray restarts an actor process that dies and tries
its batch ``cfg.worker_retries`` more times; the inputs of a batch that died on every try run
again one per batch (:mod:`pipeline.raydata`), and those that still kill their actor are error
rows naming that; the job completes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import posixpath
import time
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import BatchPredictConfig, PreprocessConfig, TimelineConfig
from pipeline.errors import UserError
from pipeline.logs import progress
from pipeline.storage import Storage, is_uri
from pipeline.typed import from_dict, to_dict

__all__ = [
    "run_batch_predict",
    "batch_predict_command",
    "list_inputs",
    "read_results",
    "RESULT_SCHEMA",
    "LoadActor",
    "ModelActor",
    "FusedActor",
    "TracedModel",
]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TIMELINES = "timelines"
RESULT_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("ok", pa.bool_()),
        ("label", pa.string()),
        ("probability", pa.float64()),
        ("error", pa.string()),
        ("face_fallback", pa.bool_()),
        ("frames", pa.int64()),
        ("prediction", pa.string()),  # the predict --json object of this input
    ]
)
_SUMMARY_SCHEMA = pa.schema([("path", pa.string()), ("ok", pa.bool_()), ("error", pa.string()), ("fatal", pa.string())])
_LOADED_SCHEMA = pa.schema([("path", pa.string()), ("error", pa.string()), ("loaded", pa.large_binary())])
_ERRORS_SHOWN = 5


# --- the listing ------------------------------------------------------------------------------


def _fs_of(location: str):
    import pyarrow.fs as pafs

    if is_uri(location):
        try:
            return pafs.FileSystem.from_uri(location)
        except (pa.ArrowInvalid, ValueError, OSError) as exc:
            raise UserError(f"{location}: cannot open ({exc})") from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))


def _joined(location: str, fs_path: str, rel: str) -> str:
    """A listed path as the loaders open it: URIs keep their scheme, local paths become absolute."""
    if is_uri(rel) or posixpath.isabs(rel):
        return rel
    if is_uri(location):
        scheme = location.split("://", 1)[0]
        return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(fs_path), rel))}"
    return os.path.normpath(os.path.join(os.path.dirname(fs_path), rel))


def list_inputs(listing: str) -> list[str]:
    """The inputs of a listing (module doc), in listing order (a folder tree: sorted naturally).
    A missing listing, a table without a ``path`` column or an empty listing is a UserError."""
    import pyarrow.fs as pafs

    from pipeline.data.video import FRAME_EXTENSIONS, natural_key
    from pipeline.predict import VIDEO_EXTENSIONS

    fs, path = _fs_of(listing)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"batch-predict: listing not found: {listing}")
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        videos = [i.path for i in infos if i.is_file and posixpath.splitext(i.base_name)[1].lower() in VIDEO_EXTENSIONS]
        frame_dirs = {
            posixpath.dirname(i.path)
            for i in infos
            if i.is_file and posixpath.splitext(i.base_name)[1].lower() in FRAME_EXTENSIONS
        }
        found = sorted(videos + sorted(frame_dirs), key=natural_key)
        if is_uri(listing):
            scheme = listing.split("://", 1)[0]
            found = [f"{scheme}://{p}" for p in found]
        if not found:
            raise UserError(f"batch-predict: {listing} holds no videos and no frame folders")
        return found
    ext = posixpath.splitext(path)[1].lower()
    try:
        if ext == ".csv":
            import pyarrow.csv as pacsv

            with fs.open_input_stream(path) as f:
                table = pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(column_types={"path": pa.string()}))
        elif ext in (".parquet", ".pq"):
            table = pq.read_table(path, filesystem=fs, columns=None)
        else:
            raise UserError(f"batch-predict: {listing}: a listing is a folder, a .csv or a .parquet file")
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"batch-predict: cannot read the listing {listing}: {exc}") from None
    if "path" not in table.column_names:
        raise UserError(f"batch-predict: {listing} has no 'path' column (it has {', '.join(table.column_names)})")
    paths = table.column("path").to_pylist()
    bad = [i for i, p in enumerate(paths) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise UserError(f"batch-predict: {listing}: row {bad[0] + 1} has an empty path")
    if not paths:
        raise UserError(f"batch-predict: {listing} lists no inputs")
    return [_joined(listing, path, p.strip()) for p in paths]


# --- the results folder -----------------------------------------------------------------------


def _shards(storage: Storage) -> list[str]:
    return [n for n in storage.list(suffix=".parquet") if n.startswith("part-")]


def read_results(out: str | Storage, columns: list[str] | None = None) -> pa.Table:
    """Every input's result row (RESULT_SCHEMA, or just ``columns`` — ``path`` and ``ok`` are
    always read), one per input: an input tried again after an error keeps its successful row."""
    storage = out if isinstance(out, Storage) else Storage(out)
    names = RESULT_SCHEMA.names if columns is None else ["path", "ok", *(c for c in columns if c not in ("path", "ok"))]
    schema = pa.schema([RESULT_SCHEMA.field(n) for n in names])
    tables = [
        pq.read_table(storage.path(n), filesystem=storage.fs, schema=RESULT_SCHEMA, columns=names)
        for n in _shards(storage)
    ]
    if not tables:
        return schema.empty_table()
    rows: dict[str, dict] = {}
    for row in pa.concat_tables(tables).to_pylist():
        if row["path"] not in rows or (row["ok"] and not rows[row["path"]]["ok"]):
            rows[row["path"]] = row
    return pa.Table.from_pylist(list(rows.values()), schema=schema)


def _shard_name(paths: list[str]) -> str:
    # Named by its inputs: a retried batch rewrites its own shard instead of adding a copy.
    return f"part-{hashlib.sha1(chr(0).join(paths).encode()).hexdigest()[:16]}.parquet"


def _write_shard(storage: Storage, rows: list[dict]) -> str:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA), buf)
    name = _shard_name([r["path"] for r in rows])
    storage.write_bytes(buf.getvalue(), name)
    return name


def _result_row(pred) -> dict:
    return {
        "path": pred.path,
        "ok": pred.ok,
        "label": pred.label,
        "probability": pred.probability,
        "error": pred.error,
        "face_fallback": pred.face_fallback,
        "frames": pred.frames,
        "prediction": json.dumps(pred.to_dict()),
    }


def _checkpoint_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# --- the actors -------------------------------------------------------------------------------


def _load(loader, timeline, path: str):
    """One input -> its LoadedClip / LoadedTimeline, or the reason it cannot be read (a str)."""
    from pipeline.predict import _reason

    try:
        return loader.load_input(path, timeline)
    except Exception as exc:  # noqa: BLE001 — one bad input is an error row, the rest go on
        return _reason(exc)


def _new_loader(num_frames: int, image_size: int, prep: dict, timeline: dict | None):
    import cv2

    from pipeline.predict import ClipLoader

    cv2.setNumThreads(1)  # parallelism comes from actors (and their threads); OpenCV's own pool would oversubscribe
    loader = ClipLoader(num_frames, image_size, from_dict(PreprocessConfig, prep, "preprocess"))
    return loader, None if timeline is None else from_dict(TimelineConfig, timeline, "timeline")


class _Predictor:
    """The model side of a batch: forward passes over its loaded inputs and one result shard.

    The model comes from the object store (the driver loaded it once; without GPUs, traced:
    :class:`TracedModel`). Getting it imports torch — seconds of CPU — so it starts on a thread of its own when
    the actor starts, and a fused actor decodes its first clips meanwhile (the import and the
    decoders' C code run side by side)."""

    def __init__(self, model_ref: list, device: str, batch_size: int, temperature: float, out: str, pngs: bool):
        import threading
        from concurrent.futures import Future

        self.batch_size, self.temperature = batch_size, temperature
        self.storage, self.pngs = Storage(out), pngs
        self._model: Future = Future()

        def get() -> None:
            try:
                self._model.set_result(self._get_model(model_ref[0], device))
            except BaseException as exc:  # noqa: BLE001 — raised by the first batch, which reports it
                self._model.set_exception(exc)

        # A daemon thread: an actor that Ray stops while it is still loading must not wait for it.
        threading.Thread(target=get, name="model-load", daemon=True).start()

    @staticmethod
    def _get_model(ref, device: str):
        import ray

        from pipeline.predict import resolve_device

        dev = resolve_device(device)
        model = ray.get(ref)
        if isinstance(model, TracedModel):
            return model.load(), dev
        return model.eval().to(dev), dev

    def __call__(self, items: list[tuple[str, object]]) -> pa.Table:
        """``items``: (path, loaded input or the reason it failed); returns the summary rows."""
        try:
            return self._predict(items)
        except Exception as exc:  # noqa: BLE001 — a storage failure goes to the driver, which stops
            import traceback

            fatal = "".join(traceback.format_exception_only(exc)).strip()
            return pa.Table.from_pylist(
                [{"path": p, "ok": False, "error": "", "fatal": fatal} for p, _ in items], schema=_SUMMARY_SCHEMA
            )

    def _predict(self, items: list[tuple[str, object]]) -> pa.Table:
        import numpy as np

        from pipeline.predict import LoadedClip, Prediction, forward_probabilities, make_prediction
        from pipeline.timeline import write_timeline_png

        model, device = self._model.result()
        names = list(model.class_names)
        ok = [c for _, c in items if not isinstance(c, str)]
        videos = [c.video[None] if isinstance(c, LoadedClip) else c.videos for c in ok]
        probs = (
            forward_probabilities(model, np.concatenate(videos), device, self.batch_size, self.temperature)
            if ok
            else None
        )
        preds, start = [], 0
        for path, clip in items:
            if isinstance(clip, str):
                preds.append(Prediction(path, error=clip))
                continue
            n = 1 if isinstance(clip, LoadedClip) else len(clip.videos)
            pred = make_prediction(path, clip, probs[start : start + n], names)
            start += n
            if pred.timeline is not None and self.pngs:
                write_timeline_png(pred, self.storage.uri(TIMELINES), names)
            preds.append(pred)
        _write_shard(self.storage, [_result_row(p) for p in preds])
        return pa.Table.from_pylist(
            [{"path": p.path, "ok": p.ok, "error": p.error, "fatal": None} for p in preds], schema=_SUMMARY_SCHEMA
        )


class TracedModel:
    """The model as CPU actors get it: its forward pass traced to TorchScript in the driver,
    plus its class names — ``model(video)`` gives the very same logits (checked when traced).

    Why: unpickling the model itself imports open_clip, which imports torchvision and timm and
    through them ``torch._dynamo`` — about 2 CPU-seconds in every actor before its first
    batch, more than torch's own import; a TorchScript module loads with torch alone (0.03 s).
    Only for CPUs: a traced graph keeps the device of any tensor its forward pass makes, so
    model actors with GPUs get the model itself. :func:`traced_for_actors` makes one."""

    def __init__(self, script: bytes, class_names: list[str]):
        self.script, self.class_names = script, list(class_names)
        self.module = None

    def __getstate__(self) -> dict:
        return {"script": self.script, "class_names": self.class_names}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["script"], state["class_names"])

    def load(self) -> TracedModel:
        import warnings

        import torch

        with warnings.catch_warnings():  # torch 2.14 marks TorchScript deprecated (the pinned torch has it)
            warnings.simplefilter("ignore", FutureWarning)
            self.module = torch.jit.load(io.BytesIO(self.script), map_location="cpu").eval()
        return self

    def __call__(self, video):
        return self.module(video)


def traced_for_actors(model) -> TracedModel | None:
    """``model`` (eval mode, on the CPU) as a :class:`TracedModel`, or None when its forward
    pass cannot be traced faithfully: traced on a batch of 2 clips, kept only if a batch of 1
    gives logits equal to the model's own (so no batch size or branch was baked in). Costs
    four clips' forward passes in the driver, once, against ~2 CPU-seconds saved per actor."""
    import warnings

    import torch

    gen = torch.Generator().manual_seed(0)
    shape = (model.num_frames, 3, model.image_size, model.image_size)
    two = torch.randint(0, 256, (2, *shape), dtype=torch.uint8, generator=gen)  # uint8, as actors feed it
    one = torch.randint(0, 256, (1, *shape), dtype=torch.uint8, generator=gen)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings from open_clip's shape checks, TorchScript's deprecation
            model.text_features()  # fills the model's cache of them: the trace keeps them as a constant
            module = torch.jit.trace(model, two, check_trace=False)
            buf = io.BytesIO()
            torch.jit.save(module, buf)
            traced = TracedModel(buf.getvalue(), model.class_names).load()
            same = torch.equal(traced(one), model(one))
    except Exception as exc:  # noqa: BLE001 — the actors then get the model itself
        logger.debug("batch-predict: the model does not trace (%s); actors unpickle it", exc)
        return None
    if not same:
        logger.debug("batch-predict: the traced model's logits differ from the model's; actors unpickle it")
        return None
    traced.module = None  # shipped as its bytes
    return traced


class LoadActor:
    """Ray Data actor: decode, detect, crop (and cut a long video into windows) — ClipLoader's work."""

    def __init__(self, num_frames: int, image_size: int, prep: dict, timeline: dict | None):
        self.loader, self.timeline = _new_loader(num_frames, image_size, prep, timeline)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for path in batch.column("path").to_pylist():
            loaded = _load(self.loader, self.timeline, path)
            if isinstance(loaded, str):
                out.append({"path": path, "error": loaded, "loaded": None})
            else:
                out.append({"path": path, "error": None, "loaded": pickle.dumps(loaded, protocol=5)})
        return pa.Table.from_pylist(out, schema=_LOADED_SCHEMA)


class ModelActor:
    """Ray Data actor (with GPUs): batched forward passes over LoadActor's output, one result
    shard per batch, written as it finishes."""

    def __init__(self, model_ref: list, device: str, batch_size: int, temperature: float, out: str, pngs: bool):
        self.predictor = _Predictor(model_ref, device, batch_size, temperature, out, pngs)

    def __call__(self, batch: pa.Table) -> pa.Table:
        # These bytes are pickle.dumps of this job's own loader actors (LoadActor above), passed
        # through Ray Data's blocks as Ray passes any object; no input file is ever unpickled.
        items = [
            (r["path"], r["error"] if r["loaded"] is None else pickle.loads(r["loaded"])) for r in batch.to_pylist()
        ]
        return self.predictor(items)


class FusedActor:
    """Ray Data actor (CPU-only clusters): LoadActor's and ModelActor's work in one process.

    Without a GPU the forward pass runs on the same CPUs as the decoding anyway, so one stage
    saves what two cost: a second set of actor processes to start, and every loaded clip's
    trip through the object store. ``threads`` decode a batch's inputs side by side (the GIL
    is free while PyAV, OpenCV and the JPEG codec work), then the batch runs in the model."""

    def __init__(self, num_frames: int, image_size: int, prep: dict, timeline: dict | None, threads: int, **model):
        from concurrent.futures import ThreadPoolExecutor

        self.predictor = _Predictor(**model)  # the model arrives while the first clips decode
        self.loader, self.timeline = _new_loader(num_frames, image_size, prep, timeline)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="load") if threads > 1 else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        paths = batch.column("path").to_pylist()
        load = lambda p: _load(self.loader, self.timeline, p)  # noqa: E731
        loaded = list(map(load, paths) if self.pool is None else self.pool.map(load, paths))
        return self.predictor(list(zip(paths, loaded)))


# --- the driver -------------------------------------------------------------------------------


def _settings(digest: str, prep: PreprocessConfig, timeline: TimelineConfig | None) -> dict:
    return {
        "checkpoint_sha256": digest,
        "crop": {k: getattr(prep, k) for k in PreprocessConfig.OUTPUT_FIELDS},
        "timeline": None if timeline is None else to_dict(timeline),
    }


def _resolve_gpus(cfg: BatchPredictConfig) -> float:
    """GPUs per model actor: ``device`` cuda asks for them, auto takes them when the cluster has them."""
    import ray

    if cfg.device == "cpu":
        return 0.0
    have = ray.cluster_resources().get("GPU", 0.0)
    if cfg.device == "cuda" or have >= cfg.gpus_per_model:
        return cfg.gpus_per_model
    return 0.0


def check_sizing(cfg: BatchPredictConfig, gpus: float) -> None:
    """Fail before any work when the actors can never all be placed (they would wait forever)."""
    from pipeline.raycluster import check_resources

    if _fused(cfg, gpus):  # the loaders run the model too
        check_resources(
            "batch-predict loader",
            cpus=cfg.cpus_per_loader,
            gpus=gpus,
            count=cfg.loaders,
            key="batch_predict.loaders / cpus_per_loader (fused with the model: batch_predict.fuse)",
        )
        return
    check_resources(
        "batch-predict model actor",
        cpus=cfg.cpus_per_model,
        gpus=gpus,
        count=cfg.models,
        key="batch_predict.models / cpus_per_model / gpus_per_model",
    )
    check_resources(
        "batch-predict loader",
        cpus=cfg.cpus_per_loader,
        count=cfg.loaders,
        key="batch_predict.loaders / cpus_per_loader",
        spare_cpus=cfg.models * cfg.cpus_per_model,
        spare_for="the model actors",
    )


def run_batch_predict(
    checkpoint: str,
    listing: str,
    out: str,
    cfg: BatchPredictConfig,
    prep: PreprocessConfig,
    *,
    timeline: TimelineConfig | None = None,
    retry_errors: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Predict every listed input not yet in ``out``'s results; returns the summary (module doc)."""
    from pipeline.locks import folder_lock
    from pipeline.model.checkpoint import calibration_temperature, load_checkpoint

    emit = logger.log if log is None else (lambda _level, message: log(message))
    problems = cfg.validate() + prep.validate() + ([] if timeline is None else timeline.validate())
    if problems:
        raise UserError("batch-predict: " + "; ".join(problems))
    model, extra = load_checkpoint(checkpoint)
    temperature = calibration_temperature(extra, str(checkpoint))  # dferclip calibrate's, as predict applies it
    inputs = list(dict.fromkeys(list_inputs(listing)))  # each input once, in listing order
    root = Storage(out)
    # One writer per results folder (its lock file sits next to it, as a shard folder's does).
    parent, base = posixpath.split(root.uri().rstrip("/"))
    with folder_lock(Storage(parent), base, what="batch-predict"):
        settings = _settings(_checkpoint_digest(checkpoint), prep, timeline)
        if overwrite:
            for name in _shards(root) + [MANIFEST]:
                root.delete(name)
            root.delete(TIMELINES)
        if _shards(root) and root.exists(MANIFEST):
            before = json.loads(root.read_text(MANIFEST)).get("settings")
            if before != settings:
                raise UserError(
                    f"{root.uri()} holds results made with another checkpoint or other crop/timeline "
                    "settings; re-run with --overwrite (or another --out) to predict them again"
                )
        results = read_results(root, ["path", "ok"]).to_pylist()
        done = {r["path"] for r in results if r["ok"]}
        failed = {r["path"] for r in results if not r["ok"]}
        todo = [p for p in inputs if p not in done and (retry_errors or p not in failed)]
        emit(
            logging.INFO,
            f"batch-predict: {len(inputs)} inputs, {len(done & set(inputs))} already predicted, "
            f"{len((failed & set(inputs)) - done)} failed before{'' if retry_errors else ' (retry with --retry-errors)'}, "
            f"{len(todo)} to do -> {root.uri()}",
        )
        gpus = 0.0
        if todo:  # the sizing is checked before anything is written or started
            from pipeline.raycluster import ensure_ray

            ensure_ray()
            gpus = _resolve_gpus(cfg)
            check_sizing(cfg, gpus)
        root.write_text(json.dumps({"settings": settings, "classes": list(model.class_names)}, indent=2), MANIFEST)
        started = time.perf_counter()
        errors, first = 0, None
        if todo:
            errors, first = _run_ray(model, root, todo, cfg, gpus, prep, timeline, temperature, emit)
        elapsed = time.perf_counter() - started
        listed = set(inputs)
        final = [r for r in read_results(root, ["path", "ok"]).to_pylist() if r["path"] in listed]
        summary = {
            "settings": settings,
            "classes": list(model.class_names),
            "inputs": len(inputs),
            "predicted": sum(1 for r in final if r["ok"]),
            "errors": sum(1 for r in final if not r["ok"]),
            # first_result: (seconds, inputs) of the first batch back — the actors' start-up shows here.
            "last_run": {
                "inputs": len(todo),
                "new_errors": errors,
                "seconds": round(elapsed, 3),
                "first_result": first,
            },
        }
        root.write_text(json.dumps(summary, indent=2), MANIFEST)
    rate = f" ({len(todo) / elapsed:.2f} inputs/s)" if todo and elapsed > 0 else ""
    emit(
        logging.WARNING if summary["errors"] else logging.INFO,
        f"batch-predict: {summary['predicted']} of {len(inputs)} predicted, {summary['errors']} errors{rate} "
        f"-> {root.uri()}",
    )
    return summary


def batch_predict_command(
    checkpoint: str,
    listing: str,
    out: str,
    cfg,
    *,
    crops_from_config: bool,
    timeline_mode: str | None = None,
    retry_errors: bool = False,
    overwrite: bool = False,
) -> int:
    """``dferclip batch-predict``: crops from ``cfg.preprocess`` when ``crops_from_config`` (a
    ``--config`` was given), else — as predict — the ones the checkpoint records, else the
    defaults; ``timeline_mode`` (on/off) overrides ``cfg.timeline.mode``. Returns the exit
    status: 0 every input predicted, 1 some failed."""
    import dataclasses

    from pipeline.model.checkpoint import load_checkpoint
    from pipeline.predict import recorded_preprocess

    prep = cfg.preprocess
    if not crops_from_config:
        _, extra = load_checkpoint(checkpoint)
        recorded = recorded_preprocess(extra, checkpoint)
        if recorded is not None:
            prep = dataclasses.replace(prep, **{k: getattr(recorded, k) for k in PreprocessConfig.OUTPUT_FIELDS})
    timeline = cfg.timeline if timeline_mode is None else dataclasses.replace(cfg.timeline, mode=timeline_mode)
    summary = run_batch_predict(
        checkpoint,
        listing,
        out,
        cfg.batch_predict,
        prep,
        timeline=timeline,
        retry_errors=retry_errors,
        overwrite=overwrite,
    )
    return 1 if summary["errors"] else 0


def _run_ray(model, root, todo, cfg, gpus, prep, timeline, temperature, emit) -> tuple[int, list | None]:
    """Run the pipeline over ``todo``; returns (new error rows, [seconds, inputs] of the first batch back).
    Inputs whose actor died on every try of their batch run again one per batch
    (:func:`pipeline.raydata.with_lone_retries`); those still lost then are error rows."""
    import ray

    from pipeline.raydata import lone_retry_notice, with_lone_retries

    model = model.cpu().eval()
    # CPU actors get the model as TorchScript when it traces (TracedModel: no open_clip import).
    model_ref = ray.put((None if gpus else traced_for_actors(model)) or model)
    fused = _fused(cfg, gpus)
    load_args = dict(
        num_frames=model.num_frames,
        image_size=model.image_size,
        prep=to_dict(prep),
        timeline=None if timeline is None else to_dict(timeline),
    )
    model_args = dict(
        model_ref=[model_ref],
        device="cuda" if gpus else "cpu",
        batch_size=cfg.batch_size,
        temperature=temperature,
        out=root.uri(),
        pngs=True,
    )
    errors = 0
    started, first = time.perf_counter(), None

    with progress(len(todo), "batch-predict", unit="clip", logger=logger) as bar:

        def one_pass(paths: list[str], alone: bool) -> set[str]:
            nonlocal errors, first
            ds = _pipeline(paths, alone, fused, cfg, gpus, load_args, model_args)
            answered: set[str] = set()
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                rows = batch.to_pylist()
                first = first or [round(time.perf_counter() - started, 3), len(rows)]
                fatal = next((r for r in rows if r["fatal"]), None)
                if fatal is not None:
                    raise RuntimeError(
                        f"batch-predict: an actor could not predict or write its results: {fatal['fatal']}"
                    )
                for r in rows:
                    answered.add(r["path"])
                    if not r["ok"]:
                        errors += 1
                        level = logging.WARNING if errors <= _ERRORS_SHOWN else logging.DEBUG
                        emit(level, f"batch-predict: {r['path']} failed: {r['error']}")
                bar.update(len(rows), postfix=f"{errors} errors" if errors else None)
            return answered

        def announce(lost: list[str]) -> None:
            emit(logging.WARNING, lone_retry_notice("batch-predict", "an actor process", len(lost), "input(s)"))

        lost = with_lone_retries(todo, lambda p: p, one_pass, announce=announce)
        if lost:
            tries = cfg.worker_retries + 1
            reason = (
                f"the batch-predict actor process died on this input {tries} time(s) when run alone (killed, "
                "e.g. for memory, or crashed; see the Ray worker logs); lower preprocess.max_pixels / "
                "max_clip_frames / max_clip_seconds, or re-run with --retry-errors to try it again"
            )
            _write_shard(root, [_result_row_error(p, reason) for p in lost])
            errors += len(lost)
            bar.update(len(lost))
            emit(logging.WARNING, f"batch-predict: {len(lost)} input(s) lost with their actor: {reason}")
    return errors, first


def _fused(cfg: BatchPredictConfig, gpus: float) -> bool:
    """One actor stage (FusedActor) or two (LoadActor -> ModelActor): ``cfg.fuse``, auto = fused
    when the model runs on CPUs."""
    return cfg.fuse == "on" or (cfg.fuse == "auto" and not gpus)


def _pipeline(paths: list[str], alone: bool, fused: bool, cfg: BatchPredictConfig, gpus: float, load_args, model_args):
    """The Ray Data pipeline over ``paths``; ``alone``: one input per batch (see raydata)."""
    import ray

    from pipeline.raydata import map_batches_retried

    if fused:
        per_batch = 1 if alone else cfg.batch_size
        blocks = max(1, -(-len(paths) // per_batch))
        ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
        return map_batches_retried(
            ds,
            FusedActor,
            retries=cfg.worker_retries,
            alone=alone,
            pool_size=min(cfg.loaders, blocks),
            fn_constructor_kwargs=dict(**load_args, threads=cfg.threads_per_loader, **model_args),
            batch_size=per_batch,
            batch_format="pyarrow",
            num_cpus=cfg.cpus_per_loader,
            num_gpus=gpus,
        )
    per_batch = 1 if alone else cfg.loader_batch
    blocks = max(1, -(-len(paths) // per_batch))
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
    ds = map_batches_retried(
        ds,
        LoadActor,
        retries=cfg.worker_retries,
        alone=alone,
        pool_size=min(cfg.loaders, blocks),
        fn_constructor_kwargs=load_args,
        batch_size=per_batch,
        batch_format="pyarrow",
        num_cpus=cfg.cpus_per_loader,
    )
    return map_batches_retried(
        ds,
        ModelActor,
        retries=cfg.worker_retries,
        alone=alone,
        pool_size=cfg.models,
        fn_constructor_kwargs=model_args,
        batch_size=1 if alone else cfg.batch_size,
        batch_format="pyarrow",
        num_cpus=cfg.cpus_per_model,
        num_gpus=gpus,
    )


def _result_row_error(path: str, reason: str) -> dict:
    from pipeline.predict import Prediction

    return _result_row(Prediction(path, error=reason))
