"""The shipped pretrained weights: the file matches its manifest, loads as an open_clip tag and as a
local file, and classifies apex faces zero-shot from the class descriptions alone."""

from __future__ import annotations

import hashlib

import open_clip
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.model.backbone import WEIGHTS_DIR, list_architectures, load_clip, shipped_weights
from pipeline.pretrain.evaluate import apex_faces, zero_shot_uar
from pipeline.train.zeroshot import ZeroShotClip

SHIPPED = {(w["architecture"], w["tag"]): w for w in shipped_weights()}


def _entry() -> dict:
    return SHIPPED[("dferclip-rn-micro", "synth")]


def test_the_shipped_file_matches_its_manifest():
    entry = _entry()
    data = (WEIGHTS_DIR / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert len(data) == entry["bytes"] < 20_000_000
    assert entry["command"].startswith("dferclip pretrain")
    assert entry["training_seconds"] <= 30 * 60
    for key in ("seed", "config", "data", "final_loss", "final_retrieval_acc", "zero_shot_apex"):
        assert key in entry, key


def test_the_weights_are_an_open_clip_tag_and_a_local_file():
    list_architectures()  # registers the project's configs and weights
    assert "synth" in open_clip.list_pretrained_tags_by_model("dferclip-rn-micro")
    by_tag = load_clip("dferclip-rn-micro", pretrained="synth").model.state_dict()
    by_file = load_clip("dferclip-rn-micro", weights=_entry()["path"]).model.state_dict()
    random = load_clip("dferclip-rn-micro").model.state_dict()
    assert all(torch.equal(by_tag[k], by_file[k]) for k in by_tag)
    assert not torch.equal(by_tag["visual.conv1.weight"], random["visual.conv1.weight"])
    # Through the experiment config's model section, as the demo and evaluate would use it.
    cfg = ModelConfig(clip_model="dferclip-rn-micro", pretrained="synth", num_frames=1)
    assert ZeroShotClip(cfg, ["happiness", "sadness"], {"happiness": ["a smile"], "sadness": ["a frown"]})


@pytest.fixture(scope="module")
def faces():
    return apex_faces(12, seed=20261201)  # people and intensities the pretraining never drew


def test_zero_shot_from_the_descriptions_beats_chance_and_class_names(faces):
    images, labels = faces
    described = zero_shot_uar("dferclip-rn-micro", None, images, labels, "default-7", pretrained="synth")
    names = zero_shot_uar("dferclip-rn-micro", None, images, labels, None, pretrained="synth")
    assert described >= 0.45, described  # chance is 1/7
    assert described >= names + 0.2, (described, names)
