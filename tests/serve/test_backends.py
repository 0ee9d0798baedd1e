"""The model step of serve on both backends: the ONNX export on onnxruntime gives the PyTorch
checkpoint's probabilities (within the export's tolerance) and the same metadata."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import PreprocessConfig
from pipeline.datasets import CLASSES_7
from pipeline.errors import UserError
from pipeline.export import export_onnx, relative_diff
from pipeline.model import build_model, save_checkpoint
from pipeline.predict import crop_options, forward_probabilities
from pipeline.serve.backends import describe_source, load_backend
from tests.micro import micro_model


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backends")
    torch.manual_seed(1)
    model = build_model(micro_model(num_frames=4, n_ctx=2, text_source="class_names"), list(CLASSES_7))
    ckpt = save_checkpoint(model, tmp / "model.pt", {"preprocess": crop_options(PreprocessConfig(margin=0.5))})
    onnx = export_onnx(ckpt, tmp / "model.onnx").path
    return model.eval(), ckpt, onnx


def test_both_backends_describe_the_same_model(sources):
    _, ckpt, onnx = sources
    a, b = describe_source(str(ckpt), None), describe_source(None, str(onnx))
    assert (a.backend, b.backend) == ("torch", "onnx")
    assert a.class_names == b.class_names == tuple(CLASSES_7)
    assert (a.num_frames, a.image_size, a.temperature) == (b.num_frames, b.image_size, b.temperature) == (4, 32, 1.0)
    assert a.extra["preprocess"]["margin"] == b.extra["preprocess"]["margin"] == 0.5  # the recorded crops
    with pytest.raises(UserError, match="give --checkpoint, or --onnx"):
        describe_source(None, None)


def test_onnx_probabilities_equal_pytorchs(sources):
    model, ckpt, onnx = sources
    videos = np.random.default_rng(0).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
    # chunk 2: three clips take two forward passes, as a batch of long timelines would.
    torch_p = load_backend(describe_source(str(ckpt), None), "cpu", 1, chunk=2).probabilities(videos)
    onnx_p = load_backend(describe_source(None, str(onnx)), "cpu", 1, chunk=2).probabilities(videos)
    want = forward_probabilities(model, videos, torch.device("cpu"), 3)  # predict's own computation
    assert torch_p.shape == onnx_p.shape == (3, len(CLASSES_7))
    np.testing.assert_allclose(torch_p, want, atol=1e-6)
    assert relative_diff(onnx_p, want) <= 1e-4
    assert (onnx_p.argmax(1) == want.argmax(1)).all()
    assert np.abs(want[0] - want[1]).max() > 1e-3  # different clips, different answers


def test_a_calibrated_checkpoint_keeps_its_temperature_in_both_backends(sources, tmp_path):
    # dferclip calibrate's temperature divides the logits, as predict divides them.
    model, _, _ = sources
    ckpt = save_checkpoint(model, tmp_path / "calibrated.pt", {"calibration": {"temperature": 2.5}})
    onnx = export_onnx(ckpt, tmp_path / "calibrated.onnx").path
    videos = np.random.default_rng(5).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    want = forward_probabilities(model, videos, torch.device("cpu"), 2, temperature=2.5)
    for info in (describe_source(str(ckpt), None), describe_source(None, str(onnx))):
        assert info.temperature == 2.5
        got = load_backend(info, "cpu", 1).probabilities(videos)
        assert relative_diff(got, want) <= 1e-4
    plain = forward_probabilities(model, videos, torch.device("cpu"), 2)
    assert np.abs(plain - want).max() > 1e-3  # the temperature changes the answer
