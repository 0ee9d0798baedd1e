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


def test_crop_options_are_the_crop_settings_and_the_caps_by_name():
    prep = PreprocessConfig(crop_size=40, margin=0.1, max_frames=12, max_clip_frames=500, num_workers=7)
    assert crop_options(prep) == {
        "detector": "haar",
        "yunet_model": None,
        "detect_every": 5,
        "detect_max_side": 320,
        "margin": 0.1,
        "crop_size": 40,
        "jpeg_quality": 90,
        "max_frames": 12,
        "max_pixels": 3840 * 2160,
        "max_clip_frames": 500,
        "max_clip_seconds": 300.0,
    }  # not the shard size or worker counts: they change no crop


def test_a_record_of_another_shape_is_no_record():
    assert recorded_preprocess(None, "ckpt.pt") is None  # an old checkpoint's extra
    assert recorded_preprocess({"preprocess": "haar"}, "ckpt.pt") is None
    assert recorded_preprocess({"preprocess": None}, "ckpt.pt") is None
    # the caps are not crop settings: a recorded one is ignored (they come from --config or the defaults)
    prep = recorded_preprocess({"preprocess": {"crop_size": 48, "max_clip_frames": 1}}, "ckpt.pt")
    assert (prep.crop_size, prep.max_clip_frames) == (48, PreprocessConfig().max_clip_frames)


def test_the_whole_message_lists_every_bad_setting():
    with pytest.raises(UserError) as err:
        recorded_preprocess({"preprocess": {"crop_size": 4096, "margin": -1.0}})
    assert str(err.value) == (
        "<checkpoint>: the crop settings it records are not valid (crop_size: must be in 8..1024, got 4096; "
        "margin: must be in [0, 2], got -1.0); give the ones its training data was preprocessed with "
        "(predict --config)"
    )
