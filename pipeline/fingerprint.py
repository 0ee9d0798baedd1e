"""What a stage's outputs were made from, so a re-run can tell they are up to date.

A stage's *fingerprint* hashes its config section(s), the content of the files it read and the
fingerprints of the stages it depends on. After a stage finishes, `dferclip run` records the
fingerprint and its outputs in ``<root>/stages/<stage>.json``; the next run skips the stage when
the fingerprint is unchanged and the outputs still exist. A change anywhere upstream changes
every downstream fingerprint, so exactly the affected stages run again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.storage import Storage
from pipeline.typed import to_dict

__all__ = ["StageRecord", "fingerprint", "file_digest", "tree_digest", "read_record", "write_record"]


def _canonical(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return to_dict(obj)
    return obj


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (config sections, digests, upstream fingerprints)."""
    blob = json.dumps([_canonical(p) for p in parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def file_digest(path: str | Path | None) -> str | None:
    """Content hash of one local file; None when there is no such file."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:20]


def tree_digest(root: str | Path | None, suffixes: tuple[str, ...] = ()) -> str | None:
    """Cheap digest of a folder tree: relative names, sizes and modification times.

    Reading every byte of a video dataset would cost more than the check saves; a file that
    is replaced or edited changes its size or mtime.
    """
    if root is None or not Path(root).exists():
        return None
    base = Path(root)
    h = hashlib.sha256()
    for p in sorted(base.rglob("*")):
        if p.is_file() and (not suffixes or p.suffix.lower() in suffixes):
            st = p.stat()
            h.update(f"{p.relative_to(base)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


@dataclass
class StageRecord:
    stage: str
    fingerprint: str
    outputs: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    finished_at: float = field(default_factory=time.time)


def read_record(storage: Storage, stage: str) -> StageRecord | None:
    if not storage.exists("stages", f"{stage}.json"):
        return None
    try:
        return StageRecord(**json.loads(storage.read_text("stages", f"{stage}.json")))
    except (ValueError, TypeError):
        return None  # an unreadable record only means "run the stage again"


def write_record(storage: Storage, record: StageRecord) -> None:
    storage.write_text(json.dumps(asdict(record), indent=2, default=str), "stages", f"{record.stage}.json")
