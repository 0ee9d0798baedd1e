"""The on-disk answer cache: one ``<key>.json`` per answer under ``<root>/llm_cache/``, read back
only when it is intact and really the record of that key (anything else is redone)."""

from __future__ import annotations

import json

from pipeline.llm.cache import CACHE_DIR, AnswerCache
from pipeline.storage import Storage

KEY = "ab" * 32


def test_a_record_is_one_json_file_named_by_its_key(tmp_path):
    cache = AnswerCache(Storage(tmp_path))
    assert CACHE_DIR == "llm_cache"
    cache.put(KEY, {"content": "wide smile", "descriptions": ["wide smile"]})
    path = tmp_path / "llm_cache" / f"{KEY}.json"
    # indented one space per level, the key first: a record people can read
    assert path.read_text() == (
        f'{{\n "key": "{KEY}",\n "content": "wide smile",\n "descriptions": [\n  "wide smile"\n ]\n}}'
    )
    assert cache.get(KEY) == {"key": KEY, "content": "wide smile", "descriptions": ["wide smile"]}
    assert cache.keys() == [KEY]


def test_non_ascii_text_is_stored_as_written(tmp_path):
    cache = AnswerCache(Storage(tmp_path))
    cache.put(KEY, {"content": "sourcils froncés"})
    assert "sourcils froncés" in (tmp_path / "llm_cache" / f"{KEY}.json").read_text(encoding="utf-8")


def test_missing_damaged_or_foreign_records_are_misses(tmp_path):
    cache = AnswerCache(Storage(tmp_path), folder="answers")
    assert cache.get(KEY) is None  # absent
    folder = tmp_path / "answers"
    folder.mkdir()
    (folder / f"{KEY}.json").write_text('{"key": "')  # cut short by a crash
    assert cache.get(KEY) is None
    (folder / f"{KEY}.json").write_text(json.dumps(["not", "a", "record"]))
    assert cache.get(KEY) is None
    (folder / f"{KEY}.json").write_text(json.dumps({"key": "cd" * 32, "content": "x"}))  # another key's record
    assert cache.get(KEY) is None
    (folder / f"{KEY}.json").write_text(json.dumps({"content": "x"}))  # no key at all
    assert cache.get(KEY) is None


def test_keys_lists_records_only(tmp_path):
    cache = AnswerCache(Storage(tmp_path))
    cache.put(KEY, {"content": "a"})
    cache.put("cd" * 32, {"content": "b"})
    (tmp_path / "llm_cache" / ".partial.json").write_text("{}")  # a hidden temporary file
    (tmp_path / "llm_cache" / "notes.txt").write_text("x")
    assert sorted(cache.keys()) == sorted([KEY, "cd" * 32])
