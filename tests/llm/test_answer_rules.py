"""The answer contract at its bounds, and exactly what an answer's cache key depends on.

Word bounds are inclusive (docs/describe.md: "min_words..max_words words"): a description of
exactly min_words or max_words words is kept, one word fewer or more is refused. The cache key
must change with everything that shapes an answer (model, rendered messages, each sampling
parameter, the sample index) and with nothing else (the endpoint, the key's variable, retry and
concurrency settings, the word bounds, which are re-checked on every cached answer).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from pipeline.config import DescribeConfig
from pipeline.llm import InvalidAnswer, load_template, parse_answer
from pipeline.llm.cache import cache_key
from pipeline.llm.runner import _plan, request_params
from pipeline.llm.validation import excerpt


def _answer(*descriptions: str) -> str:
    return json.dumps({"descriptions": list(descriptions)})


@pytest.mark.parametrize("words", [3, 4, 5])
def test_descriptions_at_and_inside_the_word_bounds_are_kept(words):
    text = " ".join(["lip"] * (words - 1) + ["corners"])
    assert parse_answer(_answer(text), 1, min_words=3, max_words=5) == [text]


@pytest.mark.parametrize("words", [2, 6])
def test_one_word_outside_the_bounds_is_refused(words):
    text = " ".join(["brow"] * words)
    with pytest.raises(InvalidAnswer) as err:
        parse_answer(_answer(text), 1, min_words=3, max_words=5)
    assert str(err.value) == f"description 0 has {words} words (allowed 3..5)"


def test_the_item_count_must_be_exact_and_whitespace_is_collapsed():
    assert parse_answer(_answer(" raised \n cheeks ", "wide  smile"), 2, min_words=1, max_words=3) == [
        "raised cheeks",
        "wide smile",
    ]
    with pytest.raises(InvalidAnswer, match=r"^asked for exactly 3 description\(s\), got 2$"):
        parse_answer(_answer("raised cheeks", "wide smile"), 3, min_words=1, max_words=3)
    with pytest.raises(InvalidAnswer, match=r"^description 1 is empty$"):
        parse_answer(_answer("raised cheeks", "  \n "), 2, min_words=0, max_words=3)
    with pytest.raises(InvalidAnswer, match=r"^description 1 repeats an earlier one$"):
        parse_answer(_answer("Wide smile", "wide   SMILE"), 2, min_words=1, max_words=3)


def test_an_object_with_one_list_under_another_name_is_read_two_lists_are_not():
    assert parse_answer('{"features": ["wide smile"], "n": 1}', 1, min_words=1, max_words=3) == ["wide smile"]
    with pytest.raises(InvalidAnswer, match='"descriptions" list'):
        parse_answer('{"a": ["wide smile"], "b": ["raised cheeks"]}', 1, min_words=1, max_words=3)


# --- the cache key ------------------------------------------------------------------------------

TEMPLATE = load_template("visual_features")


def _key(**changes) -> str:
    jobs = _plan(dataclasses.replace(DescribeConfig(samples=1), **changes), ["anger"], TEMPLATE)
    return jobs[0].key  # sample 0 of the one class


def test_non_ascii_messages_are_hashed_as_utf8_text():
    # ensure_ascii=False: "é" is hashed as its UTF-8 bytes, not as the escape "\\u00e9"
    msgs = [{"role": "user", "content": "sourcils froncés"}]
    blob = '{"messages":[{"content":"sourcils froncés","role":"user"}],"model":"m","params":{},"sample":0,"v":1}'
    assert cache_key("m", msgs, {}, 0) == hashlib.sha256(blob.encode("utf-8")).hexdigest()


def test_the_key_is_the_sha256_of_the_documented_material():
    # Re-derived from the module's contract: SHA-256 of the canonical JSON of
    # {v, model, messages, params, sample} (sorted keys, no spaces, UTF-8).
    cfg = DescribeConfig(samples=2)
    jobs = _plan(cfg, ["anger"], TEMPLATE)
    params = {"temperature": 0.7, "seed": 0, "max_tokens": 300, "n": 1, "response_format": "json_object"}
    assert request_params(cfg) == params
    for sample, job in enumerate(jobs):
        material = {"v": 1, "model": "gpt-4o-mini", "messages": job.messages, "params": params, "sample": sample}
        blob = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        assert job.key == hashlib.sha256(blob).hexdigest()
    assert jobs[0].key != jobs[1].key


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o"},
        {"temperature": 0.2},
        {"seed": 1},
        {"seed": None},
        {"max_tokens": 200},
        {"descriptions_per_answer": 2},  # also changes the rendered request
        {"response_format": "json_schema"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_what_shapes_an_answer_changes_the_key(change):
    assert _key(**change) != _key()


def test_the_rendered_messages_are_in_the_key():
    other = load_template("action_units")
    assert _plan(DescribeConfig(samples=1), ["anger"], other)[0].key != _key()
    assert _plan(DescribeConfig(samples=1), ["fear"], TEMPLATE)[0].key != _key()


@pytest.mark.parametrize(
    "change",
    [
        {"base_url": "https://api.example.org/v1"},
        {"api_key_env": "OTHER_KEY"},
        {"allow_insecure_http": True},
        {"min_words": 5, "max_words": 20},
        {"concurrency": 2},
        {"max_attempts": 9},
        {"max_invalid_answers": 1},
        {"backoff_s": 0.0, "max_backoff_s": 2.0, "timeout_s": 5.0},
        {"output_name": "elsewhere"},
        {"samples": 3},  # more samples: the first sample's key is the same
    ],
    ids=lambda c: next(iter(c)),
)
def test_what_does_not_shape_an_answer_leaves_the_key(change):
    assert _key(**change) == _key()


# --- how an answer is found in the text ----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # prose with a brace first, then the fenced JSON: the fence is read
        'Sure {here it is}:\n```json\n{"descriptions": ["raised cheeks", "wide smile"]}\n```',
        # a fence without a language tag
        '```\n["raised cheeks", "wide smile"]\n```',
        # a bare list after prose, followed by an unrelated object: the first JSON value wins
        'The list: ["raised cheeks", "wide smile"] and {"note": 1}',
        # an object after prose
        'Answer: {"descriptions": ["raised cheeks", "wide smile"]} -- done',
    ],
)
def test_the_first_json_value_in_the_text_is_read(text):
    assert parse_answer(text, 2, min_words=1, max_words=3) == ["raised cheeks", "wide smile"]


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "the answer is empty"),
        ("  \n ", "the answer is empty"),
        ("no json here", "the answer is not JSON"),
        ('{"descriptions": 3}', '"descriptions" must be a list, got int'),
        ('{"n": 2}', 'expected a JSON object with a "descriptions" list'),
        ('{"descriptions": ["raised cheeks", null]}', "description 1 is not a string: None"),
    ],
)
def test_unusable_answers_have_exact_reasons(text, message):
    with pytest.raises(InvalidAnswer) as err:
        parse_answer(text, 2, min_words=1, max_words=3)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "text, message",
    [
        # the first JSON value decides, even when it is the wrong kind
        ("42", '"descriptions" must be a list, got int'),
        ('Answer: {"descriptions": "raised cheeks"} {"other": 1}', '"descriptions" must be a list, got str'),
        (
            'Answer: ["raised cheeks", "wide smile", "wrinkled eyes"] and [1]',
            "asked for exactly 2 description(s), got 3",
        ),
    ],
)
def test_the_first_json_value_decides(text, message):
    with pytest.raises(InvalidAnswer) as err:
        parse_answer(text, 2, min_words=1, max_words=3)
    assert str(err.value) == message


def test_a_cut_off_answer_is_refused_even_when_it_parses():
    with pytest.raises(InvalidAnswer) as err:
        parse_answer(_answer("wide smile"), 1, min_words=1, max_words=3, finish_reason="length")
    assert str(err.value) == ("the answer was cut off at max_tokens (finish_reason=length); raise describe.max_tokens")
    assert parse_answer(_answer("wide smile"), 1, min_words=1, max_words=3, finish_reason="stop") == ["wide smile"]


def test_excerpt_is_one_line_and_bounded():
    assert excerpt(None) == "''"
    assert excerpt(" a\n b\t c ") == "'a b c'"
    assert excerpt("x" * 240) == repr("x" * 240)  # at the limit: whole
    assert excerpt("x" * 241) == repr("x" * 237 + "...")  # past it: cut to the limit
    assert excerpt("abcdef", limit=5) == repr("ab...")
