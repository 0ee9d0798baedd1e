"""Values that used to load and then fail later (or never): refused when the config is read."""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.typed import ConfigError


def problems(*overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(None, list(overrides))
    return err.value.problems


@pytest.mark.parametrize("value, shown", [(".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf")])
def test_non_finite_numbers_are_refused(value, shown):
    assert problems(f"train.lr_prompt={value}") == [f"train.lr_prompt: expected a finite number, got {shown}"]
    # also in an optional float, a list of floats and a sweep candidate
    assert problems(f"model.logit_scale={value}")[0].startswith("model.logit_scale: expected a finite number")
    assert problems(f"train.augment.random_resized_crop_scale=[0.2, {value}]")[0].startswith(
        "train.augment.random_resized_crop_scale[1]: expected a finite number"
    )
    (problem,) = problems(f"tune.space={{train.lr_prompt: [0.001, {value}]}}")
    assert problem.startswith("tune.space.train.lr_prompt[1]: lr_prompt expected a finite number")


def test_nan_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  lr_image_encoder: .nan\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.source == str(path)
    assert err.value.problems == ["train.lr_image_encoder: expected a finite number, got nan"]


def test_checkpoint_and_restart_counts():
    assert problems("train.keep_checkpoints=0") == ["train.keep_checkpoints: must be >= 1, got 0"]
    assert problems("train.max_failures=-1") == ["train.max_failures: must be >= 0, got -1"]
    cfg = load_config(None, ["train.keep_checkpoints=1", "train.max_failures=0"])
    assert (cfg.train.keep_checkpoints, cfg.train.max_failures) == (1, 0)


def test_dataset_classes_are_unique_and_named():
    assert problems("dataset.name=csv", "dataset.classes=[happy, sad, happy]") == [
        "dataset.classes[2]: 'happy' is listed more than once"
    ]
    assert problems("dataset.name=csv", "dataset.classes=[happy, ' ']") == [
        "dataset.classes[1]: a class name must not be empty"
    ]
    assert load_config(None, ["dataset.name=csv", "dataset.classes=[happy, sad]"]).dataset.class_names == [
        "happy",
        "sad",
    ]


def test_crop_size_and_num_frames_have_upper_bounds():
    assert problems("preprocess.crop_size=4096") == ["preprocess.crop_size: must be in 8..1024, got 4096"]
    assert problems("preprocess.crop_size=4") == ["preprocess.crop_size: must be in 8..1024, got 4"]
    assert problems("model.num_frames=1000") == ["model.num_frames: must be <= 256, got 1000"]
    cfg = load_config(None, ["preprocess.crop_size=1024", "model.num_frames=256"])
    assert (cfg.preprocess.crop_size, cfg.model.num_frames) == (1024, 256)


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("describe:\n  model: modèle\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert err.value.problems == ["not UTF-8 text: byte 0xe8 at offset 22; save the file as UTF-8"]
    # UTF-8, with or without a byte-order mark, loads
    path.write_bytes("\ufeffdescribe:\n  model: modèle\n".encode())
    assert load_config(path).describe.model == "modèle"
