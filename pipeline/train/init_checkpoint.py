"""Start a new training run from a checkpoint's weights: ``train.init_checkpoint``.

``--resume`` continues a run where it stopped (its optimizer, schedule, epoch count). This is
different: a *new* run whose model is a project checkpoint — one ``dferclip train`` exported, or a
released DFER-CLIP file converted by ``dferclip import-official`` — trained further with the
config's recipe (a fresh optimizer and schedule, epoch 1 onwards).

The model is rebuilt from what the checkpoint records (architecture, class texts, input
normalisation, activation, logit scale, context layout, temporal model) and gets all its
weights, so the run's first forward pass is the checkpoint's. The config's ``model`` section
must describe that same model: a setting that differs is refused, naming each key, rather than
silently trained as something the config does not say. Only the keys that choose where
*initial* weights come from (``model.pretrained``, ``model.weights``) are ignored, and the
resolved-at-build keys (``model.quick_gelu``, ``model.logit_scale``) accept the checkpoint's
value when the config leaves them null. The classes, in order, must be the checkpoint's outputs.

The run records the file (absolute location, sha256, the run or import it came from) in its
folder (``init_checkpoint.json``, read back on ``--resume``) and in ``summary.json``;
``dferclip run`` hashes the file into the train stage's fingerprint, so a changed file trains again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import pickle
from typing import Any

from pipeline.config import ModelConfig
from pipeline.errors import UserError

__all__ = [
    "INIT_KEY",
    "RECORD_FILE",
    "resolve_location",
    "read_init_checkpoint",
    "model_conflicts",
    "check_fits",
    "init_record",
    "run_init_record",
    "build_init_model",
    "init_digest",
]

INIT_KEY = "train.init_checkpoint"
RECORD_FILE = "init_checkpoint.json"  # in the run folder: the file the run started from

# Where the *initial* weights come from: the checkpoint's weights replace them.
_WEIGHT_SOURCES = ("pretrained", "weights")
# Resolved when a model is built; null in the config takes whatever the checkpoint resolved.
_RESOLVED = ("quick_gelu", "logit_scale")


def resolve_location(location: str) -> str:
    """A URI as it is; a local path made absolute (Ray workers and Tune trials run elsewhere)."""
    from pipeline.storage import is_uri

    return location if is_uri(location) else os.path.abspath(os.path.expanduser(location))


def _read_bytes(location: str) -> bytes:
    from pipeline.storage import Storage, is_uri

    try:
        if is_uri(location):
            parent, name = location.rstrip("/").rsplit("/", 1)
            return Storage(parent).read_bytes(name)
        with open(location, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"{INIT_KEY}: checkpoint not found: {location}") from None
    except OSError as exc:
        raise UserError(f"{INIT_KEY}: cannot read {location}: {exc.strerror or exc}") from None


def read_init_checkpoint(location: str) -> tuple[dict[str, Any], str]:
    """(payload, sha256 of the file) of the project checkpoint at ``location``; loaded with
    ``weights_only=True`` (no pickled code runs). Anything else is a UserError naming the key."""
    import torch

    from pipeline.model.checkpoint import FORMAT

    data = _read_bytes(location)
    sha = hashlib.sha256(data).hexdigest()
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own text is a page of advice on unsafe loading
        raise UserError(
            f"{INIT_KEY}: {location} cannot be read as a checkpoint: it holds pickled objects other than tensors "
            "and plain data; a released DFER-CLIP .pth must first be converted with `dferclip import-official`"
        ) from None
    except Exception as exc:  # noqa: BLE001 — any unreadable file becomes one clear message
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(
            f"{INIT_KEY}: {location} cannot be read as a checkpoint ({type(exc).__name__}: {first}); "
            "a released DFER-CLIP .pth must first be converted with `dferclip import-official`"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or not isinstance(payload.get("spec"), dict):
        raise UserError(
            f"{INIT_KEY}: {location} is not a DFER-CLIP checkpoint of this project (no format marker {FORMAT!r}); "
            "a released DFER-CLIP .pth must first be converted with `dferclip import-official`"
        )
    return payload, sha


def _same(mine: Any, theirs: Any) -> bool:
    if isinstance(mine, float) and isinstance(theirs, (int, float)):
        return math.isclose(mine, float(theirs), rel_tol=1e-6)
    return mine == theirs


def model_conflicts(payload: dict[str, Any], model: ModelConfig, class_names: list[str] | tuple[str, ...]) -> list[str]:
    """Each config key whose value differs from the checkpoint's model, as ``key: config X,
    checkpoint Y`` (empty when the config describes the checkpoint's model)."""
    from pipeline.model.dferclip import PAPER_LOGIT_SCALE

    spec = payload["spec"]
    recorded = dict(spec.get("model") or {})
    recorded.setdefault("logit_scale", PAPER_LOGIT_SCALE)  # as pipeline.model.checkpoint reads old files
    problems = []
    for f in dataclasses.fields(ModelConfig):
        if f.name in _WEIGHT_SOURCES:
            continue
        mine = getattr(model, f.name)
        if f.name in _RESOLVED and mine is None:
            continue
        if f.name not in recorded:
            problems.append(f"model.{f.name}: the checkpoint does not record it (the config has {mine!r})")
        elif not _same(mine, recorded[f.name]):
            problems.append(f"model.{f.name}: the config has {mine!r}, the checkpoint {recorded[f.name]!r}")
    theirs = list(spec.get("class_names") or [])
    if list(class_names) != theirs:
        problems.append(
            f"dataset.classes: the config's classes are {list(class_names)}, the checkpoint's outputs are "
            f"{theirs} (names and order must match)"
        )
    return problems


def check_fits(payload: dict[str, Any], model: ModelConfig, class_names, location: str) -> None:
    """UserError listing every conflict between ``payload``'s model and the config (see module)."""
    problems = model_conflicts(payload, model, class_names)
    if problems:
        raise UserError(
            f"{INIT_KEY}: {location} does not fit the config's model section:\n  - "
            + "\n  - ".join(problems)
            + "\nset those keys to the checkpoint's values (e.g. --set model.input_normalization=none for an "
            "imported released checkpoint), or start from a checkpoint of this model"
        )


def init_record(location: str, payload: dict[str, Any], sha: str) -> dict[str, Any]:
    """What a run records about the checkpoint it started from (JSON-able)."""
    extra = payload.get("extra") or {}
    imported = extra.get("imported") if isinstance(extra.get("imported"), dict) else {}
    return {
        "location": location,
        "sha256": sha,
        "run_name": str(extra.get("run_name") or ""),
        "epoch": extra.get("epoch"),
        "imported_from": str(imported.get("source") or ""),
    }


def run_init_record(cfg, storage, run_folder: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The init checkpoint of run ``run_folder`` (below ``storage``) for the driver, checked
    against ``cfg``: (record, the checkpoint's spec). A run that already has a record (``--resume``)
    keeps it and reads nothing (its weights come from its own checkpoints); a new run reads the
    file, checks it fits the config and writes the record into its folder."""
    if storage.exists(*run_folder, RECORD_FILE):
        return json.loads(storage.read_text(*run_folder, RECORD_FILE)), None
    location = resolve_location(cfg.train.init_checkpoint)
    payload, sha = read_init_checkpoint(location)
    check_fits(payload, cfg.model, cfg.dataset.class_names, location)
    record = init_record(location, payload, sha)
    storage.write_text(json.dumps(record, indent=2) + "\n", *run_folder, RECORD_FILE)
    return record, payload["spec"]


def build_init_model(location: str, model: ModelConfig, class_names, sha256: str | None = None):
    """The model of the checkpoint at ``location``, all its weights loaded, in train mode; checked
    against the config (``model``, ``class_names``) and, given ``sha256``, against the file the
    run was started with."""
    from pipeline.model.checkpoint import model_from_payload

    payload, sha = read_init_checkpoint(location)
    if sha256 is not None and sha != sha256:
        raise UserError(
            f"{INIT_KEY}: {location} changed since this run started (sha256 {sha[:16]}..., the run recorded "
            f"{sha256[:16]}...); start a new run to train from the new file"
        )
    check_fits(payload, model, class_names, location)
    built = model_from_payload(payload, f"{INIT_KEY} {location}")
    return built.train()


def init_digest(location: str | None) -> str | None:
    """The sha256 of the init checkpoint for ``dferclip run``'s fingerprint (None: no key, or no file)."""
    from pipeline.fingerprint import file_digest
    from pipeline.storage import is_uri

    if not location:
        return None
    location = resolve_location(location)
    if not is_uri(location):
        return file_digest(location)  # streamed: a ViT-B/32 checkpoint is ~600 MB
    try:
        return hashlib.sha256(_read_bytes(location)).hexdigest()
    except UserError:
        return None  # the train stage itself reports the missing file
