"""A checkpoint's recorded crop settings go through the same checks as a config's preprocess section."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import PreprocessConfig
from pipeline.datasets import CLASSES_7
from pipeline.errors import UserError
from pipeline.model import build_model, save_checkpoint
from pipeline.predict import crop_options, recorded_preprocess
from pipeline.predict_output import predict_command
from tests.micro import micro_model

MICRO = micro_model(num_frames=4, temporal_head_dim=16, temporal_mlp_dim=32, n_ctx=2, text_source="class_names")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(MICRO, list(CLASSES_7))


def test_an_invalid_record_names_the_checkpoint_and_each_setting(model, tmp_path):
    bad = {**crop_options(PreprocessConfig()), "crop_size": "224px", "detector": "mtcnn", "margin": -1.0}
    path = save_checkpoint(model, tmp_path / "bad.pt", {"preprocess": bad})
    with pytest.raises(UserError) as err:
        predict_command(str(path), [str(tmp_path / "clip.mp4")])
    message = str(err.value)
    assert message.startswith(f"{path}: the crop settings it records are not valid")
    assert "crop_size: expected int, got '224px'" in message
    assert "detector: expected one of 'haar', 'yunet', 'none', got 'mtcnn'" in message
    assert "predict --config" in message


def test_range_checks_apply_to_the_record():
    with pytest.raises(UserError, match=r"ckpt.pt: .*crop_size: must be in 8..1024, got 4096"):
        recorded_preprocess({"preprocess": {"crop_size": 4096}}, "ckpt.pt")


def test_a_valid_record_loads_and_other_keys_are_ignored():
    recorded = {**crop_options(PreprocessConfig(crop_size=40, margin=0.0)), "num_workers": 7, "future_key": 1}
    prep = recorded_preprocess({"preprocess": recorded}, "ckpt.pt")
    assert crop_options(prep) == crop_options(PreprocessConfig(crop_size=40, margin=0.0))
    assert recorded_preprocess({}, "ckpt.pt") is None
