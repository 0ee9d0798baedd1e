"""One resolver (pipeline.llm.selection) decides where the describe stage writes and which
description set train, evaluate, tune and `dferclip run`'s fingerprints use.

The LLM sets come from the real describe stage against the OpenAI-compatible test server
(tests/llm/openai_server.py) through the real client.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.llm import read_description_set, resolve_description_set
from pipeline.llm.describe_run import write_descriptions
from pipeline.orchestrate import STAGES
from pipeline.storage import Storage
from pipeline.train.experiment import run_descriptions

# A name the describe stage makes file-safe (the trailing "." goes): it writes my-run.yaml.
NAME = "my-run."


def _stage(name: str):
    return next(s for s in STAGES if s.name == name)


def test_describe_writes_the_set_that_train_and_tune_then_use(server, make_cfg):
    cfg = make_cfg(f"name={NAME}")
    location = write_descriptions(cfg)
    assert Path(location).name == "my-run.yaml"
    written = read_description_set(location)
    assert written.provenance["source"] == "llm"

    chosen = resolve_description_set(cfg)
    assert chosen.location == location and chosen.chosen_by == "describe.enabled"
    assert chosen.descriptions == written.classes  # dfew's classes, the ones described
    assert chosen.id == f"my-run@{written.id}"  # the id the describe stage wrote
    shipped = resolve_description_set(load_config(None, ["dataset.name=dfew"]))
    assert shipped.chosen_by == "default" and shipped.digest != chosen.digest

    # A training run copies the set into its folder and records its id there.
    storage = Storage(cfg.storage.root)
    assert run_descriptions(cfg, storage, "run1").id == chosen.id
    copy = read_description_set(storage.path("train", "run1", "descriptions.yaml"))
    assert copy.id == written.id and copy.provenance["copied_from"] == location

    # The describe stage's set changes (a new prompt): new runs take it, a resumed run keeps its own.
    edited = yaml.safe_load(Path(location).read_text())
    edited["classes"][0]["descriptions"] = ["a face with raised cheeks and pulled lip corners"]
    Path(location).write_text(yaml.safe_dump(edited))
    now = resolve_description_set(cfg)
    assert now.id != chosen.id and now.id.startswith("my-run@")
    assert run_descriptions(cfg, storage, "run1").id == chosen.id
    assert run_descriptions(cfg, storage, "run2").id == now.id


def test_a_set_asked_for_but_missing_is_an_error_in_every_stage(make_cfg, tmp_path):
    from pipeline.evaluate import run_evaluate
    from pipeline.tune.experiment import run_tune

    # describe.enabled with nothing written yet: no silent fall back to the shipped set.
    cfg = make_cfg(f"name={NAME}", "tune.metric=test_uar", "model.clip_model=dferclip-micro", "model.pretrained=null")
    looked_up = str(tmp_path / "root" / "descriptions" / "my-run.yaml")
    for stage in (
        lambda: resolve_description_set(cfg),
        lambda: run_tune(cfg),
        lambda: run_evaluate(cfg, zero_shot=True),
        lambda: _stage("train").fingerprint(cfg, {"describe": "d", "preprocess": "p"}),
    ):
        with pytest.raises(UserError) as err:
            stage()
        assert str(err.value).startswith("describe.enabled: ") and looked_up in str(err.value)
        assert "dferclip describe" in str(err.value)

    given = load_config(None, ["describe.description_set=/nonexistent/set.yaml"])
    with pytest.raises(UserError, match="^describe.description_set: description set not found: /nonexistent/set.yaml"):
        resolve_description_set(given)
    with pytest.raises(UserError, match="^describe.description_set: description set not found: /nonexistent/set.yaml"):
        write_descriptions(given)  # the describe stage's offline copy names the key too


def test_a_given_set_wins_and_class_names_need_none(tmp_path):
    cfg = load_config(None, ["describe.enabled=true", "describe.description_set=default-11", "dataset.name=dfew"])
    chosen = resolve_description_set(cfg)
    assert chosen.chosen_by == "describe.description_set" and chosen.location.endswith("default-11.yaml")
    assert chosen.name == "default-11" and list(chosen.descriptions) == cfg.dataset.class_names
    assert chosen.record()["id"] == chosen.id == f"default-11@{chosen.digest}"
    assert resolve_description_set(load_config(None, ["model.text_source=class_names"])) is None


def test_fingerprints_follow_the_set_and_where_describe_writes_it(server, make_cfg):
    cfg = make_cfg(f"name={NAME}")
    location = write_descriptions(cfg)
    upstream = {"describe": "d", "preprocess": "p"}
    train, tune, describe = _stage("train"), _stage("tune"), _stage("describe")
    before = (train.fingerprint(cfg, upstream), tune.fingerprint(cfg, upstream))

    # The set's file is edited by hand: train and tune are out of date, though describe's inputs are not.
    edited = yaml.safe_load(Path(location).read_text())
    edited["classes"][1]["descriptions"] = ["drooping eyelids and lowered lip corners"]
    Path(location).write_text(yaml.safe_dump(edited))
    assert (train.fingerprint(cfg, upstream), tune.fingerprint(cfg, upstream)) != before

    # A new experiment name is a new describe output: describe runs again.
    renamed = make_cfg("name=other-run")
    assert describe.fingerprint(renamed, {}) != describe.fingerprint(cfg, {})
