"""On-disk cache of validated LLM answers, one JSON file per answer under the storage root.

The key is the SHA-256 of everything that determines an answer: the model name, the rendered
messages, the sampling parameters and the sample index. The endpoint URL and the API key are
deliberately not part of it — the same model behind another URL (or another key) gives an
equivalent answer, and a secret must never shape a file name or a file. Each answer is written
atomically as soon as it is validated, so a run killed half-way keeps every finished answer.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pipeline.storage import Storage

__all__ = ["AnswerCache", "cache_key", "CACHE_DIR"]

CACHE_DIR = "llm_cache"
# Bump when the meaning of a cached record changes; old entries then simply miss.
_KEY_VERSION = 1


def cache_key(model: str, messages: list[dict[str, str]], params: dict[str, Any], sample: int) -> str:
    material = {"v": _KEY_VERSION, "model": model, "messages": messages, "params": params, "sample": sample}
    blob = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AnswerCache:
    """``get``/``put`` of answer records by key, below ``<root>/llm_cache/``."""

    def __init__(self, storage: Storage, folder: str = CACHE_DIR):
        self.storage = storage
        self.folder = folder

    def _name(self, key: str) -> str:
        return f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The stored record, or None when absent or unreadable (then it is simply redone)."""
        if not self.storage.exists(self.folder, self._name(key)):
            return None
        try:
            record = json.loads(self.storage.read_bytes(self.folder, self._name(key)))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("key") == key else None

    def put(self, key: str, record: dict) -> str:
        record = {"key": key, **record}
        return self.storage.write_text(json.dumps(record, indent=1, ensure_ascii=False), self.folder, self._name(key))

    def keys(self) -> list[str]:
        return [
            name[: -len(".json")] for name in self.storage.list(self.folder, suffix=".json") if not name.startswith(".")
        ]
