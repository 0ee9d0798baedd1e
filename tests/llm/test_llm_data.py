"""Prompt templates, class sets, answer validation and description sets (no endpoint needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.datasets import CLASSES_7, CLASSES_11, get_dataset
from pipeline.errors import UserError
from pipeline.llm import (
    DescriptionSet,
    InvalidAnswer,
    default_description_set_path,
    diff_description_sets,
    dump_description_set,
    list_class_sets,
    list_templates,
    load_class_set,
    load_description_set,
    load_template,
    parse_answer,
    read_description_set,
    render_messages,
)
from pipeline.llm.cache import cache_key
from pipeline.llm.client import endpoint_host, is_loopback

# --- class sets and templates -------------------------------------------------------------


@pytest.mark.parametrize("name", ["dfew", "ferv39k", "mafw"])
def test_class_sets_follow_the_registry_label_order(name):
    assert load_class_set(name).classes == get_dataset(name).classes


def test_shipped_templates_load_and_render():
    assert {"visual_features", "action_units"} <= set(list_templates())
    assert {"dfew", "ferv39k", "mafw"} <= set(list_class_sets())
    paper = render_messages(load_template("visual_features"), "anger", 1)
    assert [m["role"] for m in paper] == ["system", "user"]
    assert "distinguishing a anger facial expression" in paper[-1]["content"]
    assert '{"descriptions"' in paper[0]["content"]  # JSON braces are not placeholders

    au = load_template("action_units")
    msgs = render_messages(au, "fear", 2)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert "boredom" in msgs[1]["content"] and "exactly 2" in msgs[1]["content"]
    assert len(json.loads(msgs[2]["content"])["descriptions"]) == 2
    assert "fear" in msgs[-1]["content"] and "exactly 2" in msgs[-1]["content"]
    # The example is never shown for the class it answers.
    assert [m["role"] for m in render_messages(au, "boredom", 2)] == ["system", "user"]


def test_a_template_is_data(tmp_path):
    path = tmp_path / "terse.yaml"
    path.write_text(yaml.safe_dump({"system": "Answer in JSON.", "user": "Describe {class_name} in {n} ways."}))
    t = load_template(str(path))
    assert t.name == "terse" and len(t.sha256) == 64
    assert render_messages(t, "joy", 3)[-1]["content"] == "Describe joy in 3 ways."


@pytest.mark.parametrize(
    "doc, problem",
    [
        ({"system": "JSON please", "user": "Describe {class_name} as {colour}"}, "unknown placeholder {colour}"),
        ({"system": "JSON please", "user": "Describe a face"}, "must contain the placeholder {class_name}"),
        ({"system": "text please", "user": "Describe {class_name}"}, "must ask for a JSON answer"),
        ({"user": "JSON {class_name}"}, "system: a non-empty string is required"),
        ({"system": "JSON", "user": "{class_name}", "extra": 1}, "unknown keys ['extra']"),
        ({"system": "JSON", "user": "{class_name}", "examples": [{"class_name": "x"}]}, "examples[0]"),
    ],
)
def test_bad_templates_name_the_file_and_the_problem(tmp_path, doc, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError) as err:
        load_template(str(path))
    assert str(path) in str(err.value) and problem in str(err.value)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UserError, match="known: .*visual_features"):
        load_template("no_such_template")
    with pytest.raises(UserError, match="known: .*mafw"):
        load_class_set("no_such_set")


# --- answers ------------------------------------------------------------------------------


def _parse(text, n=2, **kw):
    return parse_answer(text, n, min_words=kw.pop("min_words", 2), max_words=kw.pop("max_words", 10), **kw)


@pytest.mark.parametrize(
    "text",
    [
        '{"descriptions": ["raised cheeks", "pulled lip corners"]}',
        '["raised cheeks", "pulled lip corners"]',
        'Here you go:\n```json\n{"descriptions": ["raised cheeks", "pulled lip corners"]}\n```',
        '{"items": ["raised  cheeks", "pulled lip corners"]}',
    ],
)
def test_valid_answers_in_the_forms_models_produce(text):
    assert _parse(text) == ["raised cheeks", "pulled lip corners"]


@pytest.mark.parametrize(
    "text, kw, problem",
    [
        ("Sure, here are some features.", {}, "not JSON"),
        ("", {}, "empty"),
        ('{"descriptions": ["raised cheeks"]}', {}, "exactly 2 description(s), got 1"),
        ('{"descriptions": ["a b", "c d", "e f"]}', {}, "got 3"),
        ('{"descriptions": ["raised cheeks", ""]}', {}, "is empty"),
        ('{"descriptions": ["raised cheeks", 3]}', {}, "not a string"),
        ('{"descriptions": ["raised cheeks", "one two three four"]}', {"max_words": 3}, "has 4 words"),
        ('{"descriptions": ["raised cheeks", "Raised  cheeks"]}', {}, "repeats"),
        ('{"descriptions": "raised cheeks"}', {}, "must be a list"),
        ('{"descriptions": ["raised cheeks", "pulled corners"]}', {"finish_reason": "length"}, "cut off"),
    ],
)
def test_invalid_answers_say_what_is_wrong(text, kw, problem):
    with pytest.raises(InvalidAnswer) as err:
        _parse(text, **kw)
    assert problem in str(err.value)


# --- cache keys and endpoints -------------------------------------------------------------


def test_cache_key_depends_on_what_shapes_the_answer_only():
    msgs = [{"role": "user", "content": "describe anger"}]
    params = {"temperature": 0.7, "seed": 0}
    key = cache_key("m", msgs, params, 0)
    assert len(key) == 64 and key == cache_key("m", [dict(m) for m in msgs], dict(params), 0)
    assert key != cache_key("m2", msgs, params, 0)
    assert key != cache_key("m", [{"role": "user", "content": "describe fear"}], params, 0)
    assert key != cache_key("m", msgs, {**params, "temperature": 0.2}, 0)
    assert key != cache_key("m", msgs, params, 1)


def test_endpoint_host_hides_credentials():
    assert endpoint_host("https://user:pw@api.example.com/v1") == "api.example.com"
    assert endpoint_host("http://127.0.0.1:11434/v1") == "127.0.0.1:11434"
    assert is_loopback("http://localhost:8000/v1") and is_loopback("http://[::1]:8000/v1")
    assert not is_loopback("https://api.openai.com/v1")
    with pytest.raises(UserError, match="base_url"):
        endpoint_host("api.openai.com")


# --- description sets ---------------------------------------------------------------------


def test_shipped_sets_cover_7_and_11_classes_and_fit_clip():
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    seven, eleven = load_description_set(None, list(CLASSES_7)), load_description_set(None, list(CLASSES_11))
    assert list(seven) == list(CLASSES_7) and list(eleven) == list(CLASSES_11)
    assert default_description_set_path(CLASSES_7).name == "default-7.yaml"
    assert default_description_set_path(CLASSES_11).name == "default-11.yaml"
    assert {c: eleven[c] for c in CLASSES_7} == seven  # one wording per class across both sets
    for name, descriptions in eleven.items():
        assert len(descriptions) >= 2, name
        assert len(set(descriptions)) == len(descriptions), name
        for text in descriptions:
            # [SOS] + text + [EOS] must leave room for 16 learnable context tokens in 77.
            assert len(tokenizer.encode(text)) + 2 <= 60, (name, text)
            assert name not in text.lower(), (name, text)  # behaviour, not the label


def test_load_follows_the_requested_order_and_subsets():
    order = ["fear", "happiness", "contempt"]
    got = load_description_set(None, order)
    assert list(got) == order
    assert default_description_set_path(["happiness", "fear"]).name == "default-7.yaml"


def test_a_class_without_a_shipped_set_is_named():
    with pytest.raises(UserError, match=r"\['boredom'\]"):
        load_description_set(None, ["happiness", "boredom"])


def test_user_sets_in_every_accepted_form(tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"happiness": "a smile", "sadness": ["a frown", "drooping lids"]}))
    assert load_description_set(plain, ["sadness", "happiness"]) == {
        "sadness": ["a frown", "drooping lids"],
        "happiness": ["a smile"],
    }
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(yaml.safe_dump({"classes": {"happiness": ["a smile"]}}))
    assert load_description_set(str(mapping), ["happiness"]) == {"happiness": ["a smile"]}
    with pytest.raises(UserError) as err:
        load_description_set(mapping, ["happiness", "anger"])
    assert str(mapping) in str(err.value) and "['anger']" in str(err.value)


@pytest.mark.parametrize(
    "doc, problem",
    [
        ({"classes": [{"name": "a", "descriptions": []}]}, "non-empty list"),
        ({"classes": [{"name": "a", "descriptions": ["x"]}, {"name": "a", "descriptions": ["y"]}]}, "appears twice"),
        ({"classes": [{"descriptions": ["x"]}]}, "classes[0]"),
        ({"format": 9, "classes": {"a": "x"}}, "format 9"),
        ({"classes": {"a": [""]}}, "non-empty string"),
    ],
)
def test_bad_sets_name_the_file_and_entry(tmp_path, doc, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError) as err:
        load_description_set(path, ["a"])
    assert str(path) in str(err.value) and problem in str(err.value)


def test_missing_set_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_description_set(tmp_path / "nope.yaml", ["happiness"])


def test_round_trip_and_diff(tmp_path):
    a = DescriptionSet(
        "a", {"happiness": ["a smile"], "fear": ["wide eyes"]}, {"source": "shipped"}, {"happiness": "AU6 + AU12"}
    )
    path = tmp_path / "a.yaml"
    path.write_text(dump_description_set(a))
    back = read_description_set(path)
    assert back.classes == a.classes and back.action_units == a.action_units and back.id == a.id
    b = DescriptionSet(
        "b",
        {"happiness": ["a smile"], "fear": ["raised brows and stretched lips"], "anger": ["lowered brows"]},
        {"source": "llm", "model": "m"},
    )
    text = diff_description_sets(a, b, "left.yaml", "right.yaml", width=80)
    assert "== happiness (same)" in text and "== fear (changed)" in text and "== anger (only in B)" in text
    fear_line = next(line for line in text.splitlines() if line.startswith("- wide eyes"))
    assert "| - raised brows and stretched lips" in fear_line
    assert text.splitlines()[-1] == "classes: 1 same, 1 changed, 1 only in B"
    assert Path(path).read_text().startswith("format: 1\nname: a\nid: ")
