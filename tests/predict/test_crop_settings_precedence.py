"""Which crop settings predict uses: ``--config``'s preprocess section, else the checkpoint's
recorded ones, else the preprocess defaults; single flags apply on top of whichever won
(docs/predict.md). Each level is given a different crop size so that the winner is unambiguous.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.config import PreprocessConfig
from pipeline.datasets import CLASSES_7
from pipeline.errors import UserError
from pipeline.model import build_model, save_checkpoint
from pipeline.predict import crop_options
from pipeline.predict_output import _crop_settings
from stages import predict as predict_stage
from tests.micro import micro_model

RECORDED = {"preprocess": crop_options(PreprocessConfig(crop_size=64, margin=0.5, detect_every=3))}


def test_the_config_section_beats_the_checkpoints_record():
    prep = _crop_settings(PreprocessConfig(crop_size=96), RECORDED, None, None)
    assert (prep.crop_size, prep.margin, prep.detect_every) == (96, 0.25, 5)  # all from the config


def test_the_record_beats_the_defaults():
    prep = _crop_settings(None, RECORDED, None, None)
    assert (prep.crop_size, prep.margin, prep.detect_every) == (64, 0.5, 3)
    assert _crop_settings(None, {}, None, None) == PreprocessConfig()  # nothing recorded: the defaults


@pytest.mark.parametrize("prep", [PreprocessConfig(crop_size=96), None], ids=["config", "record"])
def test_single_flags_override_whichever_won(prep):
    out = _crop_settings(prep, RECORDED, {"crop_size": 128, "detector": "none"}, None)
    assert (out.crop_size, out.detector) == (128, "none")
    assert out.margin == (0.25 if prep else 0.5)  # the rest stays with the winner


def test_the_result_is_validated_and_top_checked():
    with pytest.raises(UserError, match=r"^predict: crop_size: must be in 8..1024, got 4$"):
        _crop_settings(None, RECORDED, {"crop_size": 4}, None)
    with pytest.raises(UserError, match=r"^predict: --top: must be >= 1, got 0$"):
        _crop_settings(None, RECORDED, None, 0)
    assert _crop_settings(None, RECORDED, None, 1).crop_size == 64


def test_the_cli_passes_config_over_an_unusable_record(tmp_path):
    # A checkpoint whose record is invalid: without --config predict stops with exit 2 naming it;
    # with --config the record is never consulted, so the run goes on (the missing input then
    # makes it exit 1 with an ERROR row, not 2).
    torch.manual_seed(0)
    model = build_model(micro_model(num_frames=4, n_ctx=2, text_source="class_names"), list(CLASSES_7))
    ckpt = save_checkpoint(model, tmp_path / "model.pt", {"preprocess": {"crop_size": 4096}})
    missing = str(tmp_path / "no-such-clip.mp4")
    assert predict_stage.cli([missing, "--checkpoint", str(ckpt), "--device", "cpu"]) == 2
    config = tmp_path / "exp.yaml"
    config.write_text("preprocess:\n  crop_size: 96\n")
    assert predict_stage.cli([missing, "--checkpoint", str(ckpt), "--config", str(config), "--device", "cpu"]) == 1


def test_every_problem_is_listed_and_an_unnamed_record_is_the_checkpoints():
    with pytest.raises(UserError, match=r"^predict: crop_size: must be in 8..1024, got 4; --top: must be >= 1, got 0$"):
        _crop_settings(None, RECORDED, {"crop_size": 4}, 0)
    # no source given: the record's errors name "<checkpoint>" (predict passes the file's path)
    with pytest.raises(UserError, match=r"^<checkpoint>: the crop settings it records are not valid"):
        _crop_settings(None, {"preprocess": {"crop_size": 4096}}, None, None)
