"""The reproduction card: a model's per-fold results next to the paper's, how they were
measured, and what the published annotation lists say about the data (``dferclip evaluate --folds``).

    run_card(cfg, checkpoint, folds, storage=None) -> dict

``checkpoint`` names one checkpoint per fold: a path containing ``{fold}``
(``models/DFEW-set{fold}.pt``; after the substitution it may be a glob such as
``runs/dfew/train/dfew-fold{fold}-*/final/model.pt``, which must match exactly one file), or a
plain path when only one fold is asked for. Each fold's test split is evaluated by
:func:`pipeline.evaluate.run_evaluate` (its own folder, metrics, confusion and reliability
diagram), then ``<storage.root>/evaluate/<model>-<dataset>-card-<time>/`` gets ``card.md`` and
``card.json``:

- **Results**: UAR, WAR and ECE (15 bins) per fold, mean and standard deviation over the folds
  (population, as the train stage's k-fold table), and the paper's numbers (:data:`PAPER`).
- **Protocol**: how each checkpoint's epoch was chosen (on the test split, as the published
  script does, or on a validation hold-out: ``extra["selection"]``), frames per clip, the crop
  settings of the shards, the temperature applied.
- **Data check** against the published lists the shards were made from (the manifest's
  ``annotation_files``; lines ``<path> <num_frames> <label>``): per list, clips listed and found
  in the shards, those missing (with the preprocess error when there is one), and clips whose
  stored frame count differs from the list's (a clip folder holding 2 frames where the list
  says 66 trains and evaluates without complaint otherwise). And the face-fallback rate per
  class (clips where no face was found and the frame centre was used).
"""

from __future__ import annotations

import glob
import json
import logging
import math
import posixpath
import re
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.config import ExperimentConfig
from pipeline.errors import UserError
from pipeline.names import to_name
from pipeline.storage import Storage

__all__ = [
    "PAPER",
    "run_card",
    "fold_checkpoints",
    "data_check",
    "is_published_list",
    "read_published_list",
    "card_markdown",
]

logger = logging.getLogger(__name__)

# Zhao & Liu, "Prompting Visual-Language Models for Dynamic Facial Expression Recognition"
# (BMVC 2023), DFER-CLIP's reported results in %: DFEW and MAFW averaged over their 5 folds,
# FERV39k on its one split.
PAPER = {
    "dfew": {"uar": 59.61, "war": 71.25},
    "ferv39k": {"uar": 41.27, "war": 51.65},
    "mafw": {"uar": 39.89, "war": 52.55},
}
_LIST_NAME = re.compile(r"(?:set_(\d+)_)?(train|test)\.txt$", re.IGNORECASE)
# A published list's line: path, frame count, label. MAFW's own split files are also train.txt /
# test.txt, with lines "03747.mp4 anger": the first line's shape tells the two apart.
_LIST_LINE = re.compile(r"^\S.*\s\d+\s+\d+$")
_EXAMPLES = 10  # mismatching / missing clips named in the card; the JSON holds them all


def fold_checkpoints(pattern: str, folds: list[int]) -> dict[int, str]:
    """One checkpoint per fold from ``pattern`` (see the module doc); UserError when a fold has
    none or several."""
    if "{fold}" not in pattern and len(folds) > 1:
        raise UserError(
            f"--checkpoint {pattern!r}: with --folds naming {len(folds)} folds, put {{fold}} in the path "
            "where the fold number goes (e.g. models/DFEW-set{fold}.pt or runs/train/dfew-fold{fold}-*/final/model.pt)"
        )
    out: dict[int, str] = {}
    for k in folds:
        path = pattern.replace("{fold}", str(k))
        if glob.has_magic(path):
            matches = sorted(glob.glob(path))
            if len(matches) != 1:
                raise UserError(
                    f"--checkpoint: fold {k}: {path!r} matches {len(matches)} files"
                    + (f" ({', '.join(matches[:3])})" if matches else "")
                    + "; it must match exactly one"
                )
            path = matches[0]
        if not Path(path).is_file():
            raise UserError(f"--checkpoint: fold {k}: checkpoint not found: {path}")
        out[k] = path
    return out


def is_published_list(text: str) -> bool:
    """Whether ``text`` is in the published lists' format (its first line ``<path> <int> <int>``)."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return bool(_LIST_LINE.match(first))


def read_published_list(text: str, where: str, id_parts: int) -> dict[str, int]:
    """A published list's ``<path> <num_frames> <label>`` lines -> {clip id: listed frames}.

    The clip id is the path's last ``id_parts`` components, as the importer names the clip."""
    listed: dict[str, int] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3 or not parts[-2].isdigit():
            raise UserError(f"{where}, line {line_no}: expected '<path> <num_frames> <label>', got {line!r}")
        names = [p for p in " ".join(parts[:-2]).replace("\\", "/").split("/") if p]
        listed["/".join(names[-id_parts:])] = int(parts[-2])
    return listed


def _shard_table(shards) -> dict[str, dict]:
    columns = ["clip_id", "label", "num_frames", "face_fallback"]
    rows: dict[str, dict] = {}
    for p in shards.paths:
        for r in pq.read_table(p, columns=columns, filesystem=shards.filesystem).to_pylist():
            rows[r["clip_id"]] = r
    return rows


def data_check(cfg: ExperimentConfig, storage: Storage) -> dict:
    """The card's data section: the published lists against the shards, and face fallbacks."""
    from pipeline.data import shards as sh
    from pipeline.data.sources import read_location
    from pipeline.datasets import get_dataset
    from pipeline.train.data import open_shards

    shards = open_shards(storage, cfg.dataset.name)
    rows = _shard_table(shards)
    manifest = shards.manifest
    errors = {
        r["clip_id"]: r["reason"] for r in sh.read_errors(storage, sh.shard_dir(storage, cfg.dataset.name)).to_pylist()
    }
    max_frames = (manifest.get("preprocess") or {}).get("max_frames")
    id_parts = get_dataset(cfg.dataset.name).clip_id_parts
    lists = []
    for f in manifest.get("annotation_files") or []:
        name = posixpath.basename(str(f).replace("\\", "/"))
        if not _LIST_NAME.search(name):
            continue
        data = read_location(f)
        if data is None:
            lists.append({"file": name, "location": f, "error": "not readable any more"})
            continue
        text = data.decode("utf-8-sig", errors="replace")
        if not is_published_list(text):
            continue  # a dataset's own split file: no frame counts to compare
        listed = read_published_list(text, f, id_parts)
        missing = sorted(c for c in listed if c not in rows)
        mismatch = []
        for c, n in listed.items():
            if c not in rows:
                continue
            stored = rows[c]["num_frames"]
            # preprocess.max_frames keeps N evenly spaced frames of a longer clip: then fewer
            # stored frames than listed is expected, and only a shortfall below N is a mismatch.
            expected = n if max_frames is None else min(n, max_frames)
            if stored != expected:
                mismatch.append({"clip_id": c, "listed": n, "stored": stored})
        lists.append(
            {
                "file": name,
                "location": f,
                "listed": len(listed),
                "found": len(listed) - len(missing),
                "missing": len(missing),
                "missing_clips": [{"clip_id": c, "preprocess_error": errors.get(c)} for c in missing],
                "frame_mismatches": len(mismatch),
                "frame_mismatch_clips": mismatch,
            }
        )
    classes = list(shards.class_names or cfg.dataset.class_names)
    fallback = []
    for i, c in enumerate(classes):
        of_class = [r for r in rows.values() if r["label"] == i]
        n_fb = sum(bool(r["face_fallback"]) for r in of_class)
        fallback.append(
            {"class": c, "clips": len(of_class), "fallback": n_fb, "rate": n_fb / len(of_class) if of_class else None}
        )
    return {
        "shards": shards.uri,
        "clips_in_shards": len(rows),
        "preprocess_errors": len(errors),
        "max_frames": max_frames,
        "published_lists": lists,
        "face_fallback": fallback,
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _protocol(cfg: ExperimentConfig, runs: list[dict], manifest: dict) -> dict:
    selection = sorted({str(r["selection"]) for r in runs})
    prep = manifest.get("preprocess") or {}
    return {
        "epoch_selection": {
            "test": "test-selected (the epoch with the best test accuracy, as the published script)",
            "validation": "validation-selected (the epoch chosen on a hold-out of the training clips)",
        }.get(selection[0], "not recorded in the checkpoint")
        if len(selection) == 1
        else "differs between folds: " + ", ".join(selection),
        "frames": sorted({r["num_frames"] for r in runs}),
        "frame_sampling": "one clip per video: the middle frame of each of T equal segments",
        "views": "1 (the whole face crop resized to the model's input; no multi-crop)",
        "image_size": sorted({r["image_size"] for r in runs}),
        "crops": {k: prep.get(k) for k in ("detector", "crop_size", "margin", "detect_every", "max_frames")},
        "temperature": sorted({r["temperature"] for r in runs}),
        "precision": cfg.train.precision,
    }


def card_markdown(card: dict) -> str:
    """The card as Markdown (the same content as card.json, the long lists shortened)."""
    ds, res = card["dataset"], card["results"]
    pct = lambda v: "" if v is None else f"{100 * v:.2f}"  # noqa: E731
    lines = [f"# Reproduction card: {card['model']} on {ds}", "", f"Made {card['made_at']}.", "", "## Results", ""]
    lines += ["| fold | checkpoint | clips | UAR % | WAR % | ECE % |", "|---|---|---:|---:|---:|---:|"]
    for r in res["folds"]:
        lines.append(
            f"| {r['fold']} | `{r['checkpoint']}` | {r['clips']} | {pct(r['uar'])} | {pct(r['war'])} | {pct(r['ece'])} |"
        )
    m, s = res["mean"], res["std"]
    lines.append(
        f"| mean ± std | | | {pct(m['uar'])} ± {pct(s['uar'])} | {pct(m['war'])} ± {pct(s['war'])} "
        f"| {pct(m['ece'])} ± {pct(s['ece'])} |"
    )
    paper = res["paper"]
    if paper:
        lines.append(f"| paper | | | {paper['uar']:.2f} | {paper['war']:.2f} | |")
        lines.append(
            f"| difference | | | {100 * m['uar'] - paper['uar']:+.2f} | {100 * m['war'] - paper['war']:+.2f} | |"
        )
    else:
        lines.append(f"| paper | no reported numbers for {ds} | | | | |")
    folds_note = res.get("folds_note")
    lines += [""] + ([folds_note, ""] if folds_note else [])
    p = card["protocol"]
    lines += ["## Protocol", ""]
    lines += [
        f"- Epoch selection: {p['epoch_selection']}.",
        f"- Frames per clip: {', '.join(map(str, p['frames']))} ({p['frame_sampling']}); "
        f"input {', '.join(map(str, p['image_size']))} px; views: {p['views']}.",
        "- Face crops (the shards' preprocess settings): " + ", ".join(f"{k} {v}" for k, v in p["crops"].items()) + ".",
        f"- Temperature applied: {', '.join(f'{t:.4g}' for t in p['temperature'])} (1 = uncalibrated); "
        f"precision {p['precision']}.",
        "",
    ]
    d = card["data"]
    lines += ["## Data check", "", f"Shards: `{d['shards']}`: {d['clips_in_shards']} clips, "]
    lines[-1] += f"{d['preprocess_errors']} preprocess errors."
    lines.append("")
    if d["published_lists"]:
        lines += ["| list | listed | found | missing | frame count ≠ list |", "|---|---:|---:|---:|---:|"]
        for li in d["published_lists"]:
            if "error" in li:
                lines.append(f"| {li['file']} | {li['error']} | | | |")
                continue
            lines.append(
                f"| {li['file']} | {li['listed']} | {li['found']} | {li['missing']} | {li['frame_mismatches']} |"
            )
        lines.append("")
        for li in d["published_lists"]:
            for c in li.get("frame_mismatch_clips", [])[:_EXAMPLES]:
                lines.append(
                    f"- {li['file']}: clip `{c['clip_id']}` has {c['stored']} frames, the list says {c['listed']}"
                )
            for c in li.get("missing_clips", [])[:_EXAMPLES]:
                why = (
                    f" (preprocess error: {c['preprocess_error']})" if c["preprocess_error"] else " (not preprocessed)"
                )
                lines.append(f"- {li['file']}: clip `{c['clip_id']}` is missing{why}")
        if d["max_frames"] is not None:
            lines.append(f"- preprocess.max_frames = {d['max_frames']}: a clip is expected to hold min(listed, that).")
    else:
        lines.append(
            "No published annotation lists (`<path> <num_frames> <label>` lines) among the files the shards "
            "were made from, so listed clips and frame counts are not checked."
        )
    lines += ["", "Face fallback (no face found: the frame centre was cropped), per class:", ""]
    lines += ["| class | clips | fallback | rate % |", "|---|---:|---:|---:|"]
    for f in d["face_fallback"]:
        lines.append(f"| {f['class']} | {f['clips']} | {f['fallback']} | {pct(f['rate'])} |")
    return "\n".join(lines) + "\n"


def run_card(cfg: ExperimentConfig, checkpoint: str, folds: list[int], *, storage: Storage | None = None) -> dict:
    """Evaluate each fold's checkpoint on its test split and write the card (module doc)."""
    from pipeline.datasets import get_dataset
    from pipeline.evaluate import EVALUATE_DIR, run_evaluate
    from pipeline.model.checkpoint import load_checkpoint
    from pipeline.train.outputs import clean_json

    storage = storage or Storage(cfg.storage.root)
    paths = fold_checkpoints(checkpoint, folds)
    data = data_check(cfg, storage)  # before the long part: a data problem shows at once
    runs = []
    for k, path in paths.items():
        model, extra = load_checkpoint(path)
        metrics = run_evaluate(cfg, checkpoint=path, split="test", fold=k, storage=storage)
        runs.append(
            {
                "fold": k,
                "checkpoint": path,
                "model": metrics["model"],
                "clips": metrics["clips"],
                "uar": metrics["uar"],
                "war": metrics["war"],
                "ece": metrics["ece"],
                "ece_uncalibrated": metrics["calibration"]["uncalibrated"]["ece"],
                "temperature": metrics["temperature"],
                # The published script keeps the epoch with the best test accuracy: an imported
                # checkpoint (dferclip import-official) is test-selected.
                "selection": extra.get("selection") or ("test" if "imported" in extra else None),
                "num_frames": model.num_frames,
                "image_size": model.image_size,
                "evaluation": metrics["output_dir"],
            }
        )
    mean, std = {}, {}
    for key in ("uar", "war", "ece"):
        mean[key], std[key] = _mean_std([r[key] for r in runs])
    known = list(get_dataset(cfg.dataset.name).folds)
    note = None
    if sorted(folds) != known:
        note = f"Folds {sorted(folds)} of {known}: the paper's numbers average all of them."
    from pipeline.train.data import open_shards

    # one model name for all folds, or the checkpoint pattern's (dfew-set{fold}.pt -> dfew-setK)
    label = runs[0]["model"] if len({r["model"] for r in runs}) == 1 else Path(checkpoint).stem.replace("{fold}", "K")
    card = {
        "model": label,
        "dataset": cfg.dataset.name,
        "made_at": datetime.now().isoformat(timespec="seconds"),
        "results": {
            "folds": runs,
            "mean": mean,
            "std": std,
            "std_kind": "population (divide by the number of folds)",
            "paper": PAPER.get(cfg.dataset.name),
            "folds_note": note,
        },
        "protocol": _protocol(cfg, runs, open_shards(storage, cfg.dataset.name).manifest),
        "data": data,
    }
    name = f"{to_name(label, 'model')}-{cfg.dataset.name}-card-{datetime.now():%Y%m%d-%H%M%S-%f}"
    out = (EVALUATE_DIR, name)
    storage.write_text(json.dumps(clean_json(card), indent=2) + "\n", *out, "card.json")
    text = card_markdown(card)
    storage.write_text(text, *out, "card.md")
    logger.info("reproduction card -> %s\n%s", storage.uri(*out, "card.md"), text.split("## Protocol")[0].rstrip())
    card["output_dir"] = storage.uri(*out)
    return card
