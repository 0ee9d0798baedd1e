"""Official label and split files of each benchmark -> one clip table.

Every importer returns :class:`ClipTable`: one :class:`ClipEntry` per clip (id, source path,
label index in the configured class order, and its membership in *every* official fold, e.g.
``("1:train", "2:test", ...)``) plus the annotation files it read (hashed into the manifest).

Layouts read (``dataset.root`` is the dataset folder; ``dataset.annotations`` optional). Both may
be local paths or URIs that ``pyarrow.fs`` opens (``s3://bucket/DFEW``, ``gs://...``,
``file:///data/DFEW``): every file is read and every folder listed through
:class:`pipeline.data.sources.DataRoot`, and below a URI root the clip sources are URIs too, which
the preprocess workers decode from there (:func:`pipeline.data.sources.open_uri_frames`). Clip
folders are listed once each, not probed clip by clip.

- ``dfew``: ``EmoLabel_DataSplit/{train,test}(single-labeled)/set_{1..5}.csv`` (header
  ``video_name,label``; labels 1..7 = Happy, Sad, Neutral, Angry, Surprise, Disgust, Fear).
  Sources: face frames ``Clip/clip_224x224/<id>/`` (ids zero-padded to 5 digits as released),
  else the video ``Clip/original/<id>.mp4``.
- ``ferv39k``: ``4_setups/All_scenes/{train_All,test_All}.csv`` with lines
  ``Scene/Emotion/0063 Angry``; sources ``2_ClipsforFaceCrop/<Scene>/<Emotion>/<id>/``.
  One official split (fold 1).
- ``mafw``: ``Train & Test Set/single/no_caption/set_{1..5}/{train,test}.txt`` (lines
  ``03747.mp4 anger``); the ``with_caption`` variant (tab-separated, GBK-encoded captions) is
  read when ``no_caption`` is absent. Compound labels (``anger_disgust``) belong to MAFW's
  compound task: they are skipped (and counted) unless the configured classes list them.
  Sources: ``data/clips/<name>`` (or ``clips/<name>``, ``<name>``).
- The published DFER-CLIP annotation lists (``dataset.annotations`` = their folder, or one
  file): lines ``<path> <num_frames> <label>`` with 0-indexed labels in the paper's class order
  (0 = happiness ... 6 = fear, then MAFW's 7..10; the authors made DFEW's from its 1..7 CSV
  labels minus one);
  ``..._set_<k>_{train,test}.txt`` names give the fold. Their absolute paths are from the
  authors' machine, so a path that does not exist is looked up below ``dataset.root`` by its
  trailing components. A clip's id is the one its dataset's importer above gives it: the
  folder name (DFEW, MAFW), or ``<Scene>/<Emotion>/<id>`` for FERV39k, whose ids repeat across
  folders (``DatasetSpec.clip_id_parts``).
- ``csv`` / ``demo``: a CSV with header ``path,label[,split]`` (``dataset.annotations``, or
  ``<root>/labels.csv``); labels are class names; relative paths are relative to the CSV's
  folder; ``split`` is ``train`` or ``test`` (fold 1). Without a split column (or with an empty
  cell) a clip's split is fixed by a hash of its path: about 20 % test, stable across runs.

Labels map onto the configured class order (``DatasetConfig.class_names``, docs/design.md §1); with
a subset of classes configured, clips of the other classes are dropped (and counted).
"""

from __future__ import annotations

import csv
import hashlib
import io
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import DatasetConfig
from pipeline.data.schema import membership
from pipeline.data.sources import DataRoot, FileType, read_location
from pipeline.datasets import CLASSES_7, CLASSES_11, get_dataset
from pipeline.errors import UserError
from pipeline.storage import is_uri

__all__ = ["ClipEntry", "ClipTable", "load_clip_table", "clips_from_records", "DFEW_LABELS", "FERV39K_LABELS"]

# Each benchmark's own label words -> the canonical class names of pipeline.datasets.
DFEW_LABELS = dict(zip(range(1, 8), CLASSES_7))  # the release's 1..7 follow the paper's order
FERV39K_LABELS = {
    "happy": "happiness",
    "sad": "sadness",
    "neutral": "neutral",
    "angry": "anger",
    "surprise": "surprise",
    "disgust": "disgust",
    "fear": "fear",
}
_SYNONYMS = {
    **FERV39K_LABELS,
    "sadness": "sadness",
    "anger": "anger",
    "happiness": "happiness",
    "surprised": "surprise",
    "disgusted": "disgust",
    "fearful": "fear",
}


@dataclass(frozen=True)
class ClipEntry:
    clip_id: str
    # Video file or frame folder: an absolute path, a URI below a URI dataset.root, or as given
    # when it does not exist.
    source: str
    label: int
    label_name: str
    splits: tuple[str, ...]


@dataclass
class ClipTable:
    dataset: str
    classes: list[str]
    clips: list[ClipEntry]
    annotation_files: list[str] = field(default_factory=list)  # paths or URIs
    notes: list[str] = field(default_factory=list)  # e.g. "skipped 12 compound-label clips"

    def inputs_hash(self) -> str:
        """Hash of the annotation files' bytes and the clip list (what `run` compares)."""
        h = hashlib.sha256()
        for f in sorted(self.annotation_files):
            h.update(f.encode())
            data = read_location(f)
            h.update(b"<missing>" if data is None else data)
        for c in sorted(self.clips, key=lambda c: c.clip_id):
            h.update(repr((c.clip_id, c.source, c.label, c.label_name, c.splits)).encode())
        h.update(repr(self.classes).encode())
        return h.hexdigest()[:16]


class _Collector:
    """Accumulates (clip id -> source, label, memberships) across the files of all folds."""

    def __init__(self, dataset: str, classes: list[str], strict: bool):
        self.dataset, self.classes, self.strict = dataset, classes, strict
        self.index = {c: i for i, c in enumerate(classes)}
        self.rows: dict[str, list] = {}
        self.files: list[str] = []
        self.dropped: dict[str, int] = {}

    def add(self, clip_id: str, source: str, label_name: str, split: str | None, where: str) -> None:
        if label_name not in self.index:
            if self.strict:
                raise UserError(f"{where}: unknown label {label_name!r} (classes: {', '.join(self.classes)})")
            self.dropped[label_name] = self.dropped.get(label_name, 0) + 1
            return
        row = self.rows.setdefault(clip_id, [source, label_name, []])
        if row[1] != label_name:
            raise UserError(f"{where}: clip {clip_id!r} is labelled {label_name!r} here but {row[1]!r} elsewhere")
        if split is not None and split not in row[2]:
            row[2].append(split)

    def table(self) -> ClipTable:
        clips = [
            ClipEntry(cid, src, self.index[name], name, tuple(sorted(splits, key=_split_key)))
            for cid, (src, name, splits) in self.rows.items()
        ]
        clips.sort(key=lambda c: c.clip_id)
        notes = [
            f"skipped {n} clip(s) labelled {name!r} (not in the configured classes)"
            for name, n in sorted(self.dropped.items())
        ]
        return ClipTable(self.dataset, self.classes, clips, self.files, notes)


def _split_key(entry: str) -> tuple[int, str]:
    fold, _, split = entry.partition(":")
    return int(fold), split


def _read_text(root: DataRoot, *parts: str) -> str:
    data = root.read_bytes(*parts)
    for encoding in ("utf-8-sig", "gbk"):  # MAFW's caption files are GBK
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _root(dataset: DatasetConfig) -> DataRoot:
    if not dataset.root:
        raise UserError(f"dataset.root: set it to the {dataset.name} dataset folder")
    root = DataRoot(dataset.root, "dataset.root")
    root.require(what="dataset.root")
    return root


def load_clip_table(dataset: DatasetConfig) -> ClipTable:
    """Read the labels and splits of ``dataset`` into a clip table (see the module doc)."""
    name = dataset.name
    classes = dataset.class_names
    if name in ("csv", "demo"):
        return _read_csv_dataset(dataset, classes)
    if dataset.annotations:
        return _read_published_lists(dataset, classes)
    if name == "dfew":
        return _read_dfew(dataset, classes)
    if name == "ferv39k":
        return _read_ferv39k(dataset, classes)
    if name == "mafw":
        return _read_mafw(dataset, classes)
    raise UserError(f"dataset.name: no importer for {name!r}")


# --- DFEW -----------------------------------------------------------------------------------


def _read_dfew(dataset: DatasetConfig, classes: list[str]) -> ClipTable:
    root = _root(dataset)
    root.require("EmoLabel_DataSplit", what="DFEW split folder")
    col = _Collector("dfew", classes, strict=False)
    for split in ("train", "test"):
        for fold in range(1, 6):
            parts = ("EmoLabel_DataSplit", f"{split}(single-labeled)", f"set_{fold}.csv")
            if not root.has(*parts, kind=FileType.File):
                continue
            f = root.location(*parts)
            col.files.append(f)
            reader = csv.DictReader(io.StringIO(_read_text(root, *parts)))
            if not reader.fieldnames or not {"video_name", "label"} <= set(reader.fieldnames):
                raise UserError(f"{f}: expected header video_name,label, got {reader.fieldnames}")
            for row_no, row in enumerate(reader, start=2):
                where = f"{f}, row {row_no}"
                vid, label = (row["video_name"] or "").strip(), (row["label"] or "").strip()
                try:
                    label_name = DFEW_LABELS[int(label)]
                except (ValueError, KeyError):
                    raise UserError(f"{where}: label must be 1..7, got {label!r}") from None
                clip_id = vid.zfill(5) if vid.isdigit() else vid
                col.add(clip_id, _dfew_source(root, vid), label_name, membership(fold, split), where)
    if not col.files:
        raise UserError(f"{root.location('EmoLabel_DataSplit')}: no '{{train,test}}(single-labeled)/set_N.csv' files")
    return col.table()


def _dfew_source(root: DataRoot, vid: str) -> str:
    for name in dict.fromkeys([vid.zfill(5) if vid.isdigit() else vid, vid]):
        if root.has("Clip", "clip_224x224", name, kind=FileType.Directory):
            return root.location("Clip", "clip_224x224", name)
        for ext in (".mp4", ".avi"):
            if root.has("Clip", "original", f"{name}{ext}"):
                return root.location("Clip", "original", f"{name}{ext}")
    return root.location("Clip", "clip_224x224", vid.zfill(5) if vid.isdigit() else vid)


# --- FERV39k --------------------------------------------------------------------------------


def _read_ferv39k(dataset: DatasetConfig, classes: list[str]) -> ClipTable:
    root = _root(dataset)
    setup = ("4_setups", "All_scenes")
    root.require(*setup, what="FERV39k setup folder")
    col = _Collector("ferv39k", classes, strict=False)
    for split, fname in (("train", "train_All.csv"), ("test", "test_All.csv")):
        root.require(*setup, fname, what="FERV39k split file")
        f = root.location(*setup, fname)
        col.files.append(f)
        for line_no, line in enumerate(_read_text(root, *setup, fname).splitlines(), start=1):
            parts = line.replace(",", " ").split()
            if not parts:
                continue
            where = f"{f}, line {line_no}"
            if len(parts) < 2:
                raise UserError(f"{where}: expected '<Scene>/<Emotion>/<id> <Emotion>', got {line!r}")
            rel, word = parts[0], parts[-1]
            label_name = FERV39K_LABELS.get(word.lower())
            if label_name is None:
                if line_no == 1 and "/" not in rel:
                    continue  # a header line
                raise UserError(
                    f"{where}: unknown emotion {word!r} (expected one of "
                    f"{', '.join(sorted(w.capitalize() for w in FERV39K_LABELS))})"
                )
            col.add(rel, root.location("2_ClipsforFaceCrop", rel), label_name, membership(1, split), where)
    return col.table()


# --- MAFW -----------------------------------------------------------------------------------


def _read_mafw(dataset: DatasetConfig, classes: list[str]) -> ClipTable:
    root = _root(dataset)
    base = ("Train & Test Set", "single")
    root.require(*base, what="MAFW split folder")
    variant = (*base, "no_caption" if root.has(*base, "no_caption", kind=FileType.Directory) else "with_caption")
    col = _Collector("mafw", classes, strict=False)
    compound = 0
    for fold in range(1, 6):
        for split in ("train", "test"):
            parts = (*variant, f"set_{fold}", f"{split}.txt")
            if not root.has(*parts, kind=FileType.File):
                continue
            f = root.location(*parts)
            col.files.append(f)
            for line_no, line in enumerate(_read_text(root, *parts).splitlines(), start=1):
                if not line.strip():
                    continue
                where = f"{f}, line {line_no}"
                head = line.split("\t")
                fields = head[0].split() if len(head[0].split()) >= 2 else [head[0].strip(), *head[1:2]]
                if len(fields) < 2:
                    raise UserError(f"{where}: expected '<clip>.mp4 <label>', got {line!r}")
                name, word = fields[0].strip(), fields[1].strip().lower()
                label_name = _SYNONYMS.get(word, word)
                if "_" in word and label_name not in col.index:
                    compound += 1  # the compound-expression task, not the 11-class one
                    continue
                if label_name not in CLASSES_11 and label_name not in col.index:
                    raise UserError(f"{where}: unknown label {word!r} (classes: {', '.join(CLASSES_11)})")
                col.add(Path(name).stem, _mafw_source(root, name), label_name, membership(fold, split), where)
    if not col.files:
        raise UserError(f"{root.location(*variant)}: no set_N/{{train,test}}.txt files")
    table = col.table()
    if compound:
        table.notes.append(f"skipped {compound} compound-label line(s) (MAFW's compound task)")
    return table


def _mafw_source(root: DataRoot, name: str) -> str:
    for folder in (("data", "clips"), ("clips",), ()):
        if root.has(*folder, name):
            return root.location(*folder, name)
    return root.location("data", "clips", name)


# --- the published DFER-CLIP annotation lists ------------------------------------------------

_FOLD_RE = re.compile(r"set_(\d+)_(train|test)", re.IGNORECASE)
_SPLIT_RE = re.compile(r"(train|test)", re.IGNORECASE)


def _read_published_lists(dataset: DatasetConfig, classes: list[str]) -> ClipTable:
    ann = DataRoot(dataset.annotations, "dataset.annotations")
    kind = ann.kind()
    if kind == FileType.NotFound:
        raise UserError(f"dataset.annotations not found: {ann.location()}")
    if kind == FileType.Directory:
        names = sorted(n for n, t in ann.children().items() if t == FileType.File and n.endswith(".txt"))
    else:  # one list: read it as the folder's only file
        names, ann = [posixpath.basename(ann.fs_path())], ann.parent()
    root = _root(dataset) if dataset.root else None
    # The lists index the paper's class order from 0 (0 = happiness ... 6 = fear, then MAFW's
    # four): the published files hold labels 0..6 (FERV39K's Happy clips are 0), not DFEW's 1..7.
    order = CLASSES_11 if dataset.name == "mafw" else CLASSES_7
    prefix = dataset.name.lower()
    id_parts = get_dataset(dataset.name).clip_id_parts
    names = [n for n in names if n.lower().startswith(prefix)] or names
    col = _Collector(dataset.name, classes, strict=False)
    for name in names:
        f = ann.location(name)
        m = _FOLD_RE.search(name)
        if m:
            split = membership(int(m.group(1)), m.group(2).lower())
        elif (s := _SPLIT_RE.search(name)) is not None:
            split = membership(1, s.group(1).lower())
        else:
            raise UserError(
                f"{f}: cannot tell the split from the file name (expected ..._set_N_train.txt or ..._train.txt)"
            )
        col.files.append(f)
        for line_no, line in enumerate(_read_text(ann, name).splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            where = f"{f}, line {line_no}"
            if len(parts) < 3 or not parts[-1].lstrip("-").isdigit():
                raise UserError(f"{where}: expected '<path> <num_frames> <label>', got {line!r}")
            path, label = " ".join(parts[:-2]), int(parts[-1])
            if not 0 <= label < len(order):
                raise UserError(f"{where}: label must be 0..{len(order) - 1} (0-indexed, paper order), got {label}")
            source = _resolve_published(path, root)
            col.add(_published_id(path, id_parts, where), source, order[label], split, where)
    if not col.files:
        raise UserError(f"dataset.annotations: no .txt lists in {ann.location()}")
    return col.table()


def _published_id(path: str, id_parts: int, where: str) -> str:
    """The clip id the dataset's own importer gives the clip at ``path`` (its trailing components)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if len(parts) < id_parts:
        raise UserError(f"{where}: the clip id is the path's last {id_parts} components, got {path!r}")
    return "/".join(parts[-id_parts:])


def _resolve_published(path: str, root: DataRoot | None) -> str:
    if root is None or (not root.is_uri and Path(path).exists()):
        return path
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    for k in range(1, min(len(parts), 5) + 1):
        if root.has(*parts[-k:]):
            return root.location(*parts[-k:])
    return root.location(parts[-1]) if parts else path


# --- plain CSV (csv, demo) ------------------------------------------------------------------


def _hash_split(key: str) -> str:
    return "test" if int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 5 == 0 else "train"


def _read_csv_dataset(dataset: DatasetConfig, classes: list[str]) -> ClipTable:
    if dataset.annotations:
        csv_file = DataRoot(dataset.annotations, "dataset.annotations")
        folder, csv_name = csv_file.parent(), posixpath.basename(csv_file.fs_path())
    elif dataset.root:
        folder, csv_name = DataRoot(dataset.root, "dataset.root"), "labels.csv"
    else:
        raise UserError("dataset.annotations: set it to the CSV listing path,label[,split]")
    folder.require(csv_name, what="dataset.annotations CSV")
    f = folder.location(csv_name)
    reader = csv.DictReader(io.StringIO(_read_text(folder, csv_name)))
    fields = [x.strip().lower() for x in (reader.fieldnames or [])]
    if "path" not in fields or "label" not in fields:
        raise UserError(f"{f}: the first row must be a header with columns path,label[,split]; got {reader.fieldnames}")
    reader.fieldnames = fields
    col = _Collector(dataset.name, classes, strict=True)
    col.files.append(f)
    seen: dict[str, int] = {}
    for row_no, row in enumerate(reader, start=2):
        path = (row.get("path") or "").strip()
        label = (row.get("label") or "").strip()
        split = (row.get("split") or "").strip().lower()
        where = f"{f}, row {row_no}"
        if not path:
            raise UserError(f"{where}: empty path")
        if path in seen:
            raise UserError(f"{where}: {path!r} is listed twice (also row {seen[path]})")
        seen[path] = row_no
        if split not in ("", "train", "test"):
            raise UserError(f"{where}: split must be train or test, got {split!r}")
        name = _class_name(label, classes)
        if name is None:
            raise UserError(f"{where}: unknown label {label!r} (classes: {', '.join(classes)})")
        col.add(path, _csv_source(folder, path), name, membership(1, split or _hash_split(path)), where)
    return col.table()


def _csv_source(folder: DataRoot, path: str) -> str:
    """A CSV row's clip: a URI or an absolute path as given, a relative path below the CSV's folder."""
    if is_uri(path):
        return path
    local = Path(path).expanduser()
    return str(local) if local.is_absolute() else folder.location(path)


def _class_name(label: str, classes: list[str]) -> str | None:
    lowered = {c.lower(): c for c in classes}
    key = label.lower()
    return lowered.get(key) or lowered.get(_SYNONYMS.get(key, ""))


def clips_from_records(records: Iterable, dataset: str, classes: list[str]) -> ClipTable:
    """A clip table from an in-memory list (tests, demo): ClipEntry objects or dicts with
    ``path``, ``label`` (class name or index) and optional ``split``/``splits``/``clip_id``."""
    col = _Collector(dataset, classes, strict=True)
    entries: list[ClipEntry] = []
    for i, rec in enumerate(records):
        if isinstance(rec, ClipEntry):
            entries.append(rec)
            continue
        where = f"clips[{i}]"
        path = str(rec["path"])
        if not is_uri(path):  # Ray workers may run in another directory
            path = str(Path(path).expanduser().resolve())
        label = rec["label"]
        name = (
            classes[label] if isinstance(label, int) and 0 <= label < len(classes) else _class_name(str(label), classes)
        )
        if name is None:
            raise UserError(f"{where}: unknown label {label!r} (classes: {', '.join(classes)})")
        clip_id = str(rec.get("clip_id") or path)
        splits = rec.get("splits") or [membership(1, rec.get("split") or _hash_split(clip_id))]
        for s in splits:
            col.add(clip_id, path, name, s, where)
    table = col.table()
    table.clips = sorted(table.clips + entries, key=lambda c: c.clip_id)
    return table
