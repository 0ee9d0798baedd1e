"""Checking one LLM answer: JSON with exactly the number of usable descriptions asked for.

Models wrap JSON in prose or Markdown fences more often than they break it, so the parser
looks for the first JSON object or list in the text; everything after that is strict: the
item count must equal what was asked, and every item must be a non-empty string within the
word bounds (CLIP reads at most 77 tokens, and learnable context tokens take some of them).
"""

from __future__ import annotations

import json
import re

__all__ = ["InvalidAnswer", "parse_answer", "excerpt"]

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)


class InvalidAnswer(ValueError):
    """The answer text does not satisfy the contract; the message says which rule failed."""


def excerpt(text: str | None, limit: int = 240) -> str:
    text = "" if text is None else " ".join(str(text).split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _load_json(text: str):
    candidates = [text]
    candidates += _FENCE.findall(text)
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if starts:
        candidates.append(text[min(starts) :])
    decoder = json.JSONDecoder()
    for candidate in candidates:
        candidate = candidate.strip()
        try:
            value, _ = decoder.raw_decode(candidate)
            return value
        except json.JSONDecodeError:
            continue
    raise InvalidAnswer("the answer is not JSON")


def parse_answer(
    text: str | None, n: int, *, min_words: int, max_words: int, finish_reason: str | None = None
) -> list[str]:
    """Return the ``n`` descriptions in ``text`` or raise :class:`InvalidAnswer`."""
    if finish_reason == "length":
        raise InvalidAnswer("the answer was cut off at max_tokens (finish_reason=length); raise describe.max_tokens")
    if text is None or not text.strip():
        raise InvalidAnswer("the answer is empty")
    value = _load_json(text)
    if isinstance(value, dict):
        if "descriptions" in value:
            value = value["descriptions"]
        else:
            lists = [v for v in value.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise InvalidAnswer('expected a JSON object with a "descriptions" list')
            value = lists[0]
    if not isinstance(value, list):
        raise InvalidAnswer(f'"descriptions" must be a list, got {type(value).__name__}')
    if len(value) != n:
        raise InvalidAnswer(f"asked for exactly {n} description(s), got {len(value)}")
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidAnswer(f"description {i} is not a string: {item!r}")
        item = " ".join(item.split())
        words = len(item.split())
        if not item:
            raise InvalidAnswer(f"description {i} is empty")
        if words < min_words or words > max_words:
            raise InvalidAnswer(f"description {i} has {words} words (allowed {min_words}..{max_words})")
        if item.lower() in (o.lower() for o in out):
            raise InvalidAnswer(f"description {i} repeats an earlier one")
        out.append(item)
    return out
