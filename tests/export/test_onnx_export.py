"""dferclip export --format onnx: a real checkpoint exported by PyTorch and run by onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pipeline.config import PreprocessConfig
from pipeline.datasets import CLASSES_7
from pipeline.errors import UserError
from pipeline.export import OnnxModel, export_onnx, relative_diff, sidecar_path
from pipeline.model import build_model, save_checkpoint
from pipeline.predict import crop_options
from stages import export as export_stage
from tests.micro import micro_model

T, S = 4, 32


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A micro checkpoint (recording crop settings, as training does) and its export via the CLI."""
    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = build_model(micro_model(num_frames=T, n_ctx=2, text_source="class_names"), list(CLASSES_7))
    ckpt = save_checkpoint(model, tmp / "model.pt", {"preprocess": crop_options(PreprocessConfig(crop_size=64))})
    out = tmp / "model.onnx"
    assert export_stage.cli(["--format", "onnx", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    return model.eval(), ckpt, out


def test_onnxruntime_logits_equal_pytorch_for_any_batch(exported):
    model, _, out = exported
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "video" and inp.shape[1:] == [T, 3, S, S]  # batch symbolic, the rest fixed
    assert isinstance(inp.shape[0], str)
    gen = torch.Generator().manual_seed(7)
    for batch in (1, 3, 5):  # 3 and 5 were never seen by the exporter
        x = torch.rand(batch, T, 3, S, S, generator=gen)
        with torch.no_grad():
            ref = model(x).numpy()
        got = session.run(None, {"video": x.numpy()})[0]
        assert got.shape == (batch, len(CLASSES_7))
        assert relative_diff(got, ref) <= 1e-4
        # Not trivially equal: the clips of a batch get different logits.
        assert np.abs(got[0] - got[-1]).max() > 1e-3 or batch == 1


def test_the_text_features_are_a_constant_of_the_graph(exported):
    # No text tower in the graph: the only input is the video, and the folded (E, C) matrix
    # equals the model's text features times its logit scale.
    model, _, out = exported
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ["video"]
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    with torch.no_grad():
        text = (model.text_features().t() * model.logit_scale).numpy()
    matches = [k for k, v in consts.items() if v.shape == text.shape and np.allclose(v, text, atol=1e-6)]
    assert matches, "the class text features are not folded into the graph"
    assert not any("token_embedding" in k for k in consts)


def test_metadata_and_sidecar_tell_a_consumer_how_to_preprocess(exported):
    model, ckpt, out = exported
    side = json.loads(sidecar_path(out).read_text())
    assert sidecar_path(out).name == "model.onnx.json"
    inside = OnnxModel(out).meta
    assert {k: v for k, v in inside.items() if k != "check"} == {k: v for k, v in side.items() if k != "check"}
    assert side["class_names"] == list(CLASSES_7)
    assert (side["num_frames"], side["image_size"]) == (T, S)
    assert side["input"]["shape"] == ["batch", T, 3, S, S] and side["input"]["value_range"] == [0.0, 1.0]
    assert side["input"]["normalization"]["in_graph"] is True
    assert side["input"]["normalization"]["mean"] == pytest.approx(model.pixel_mean.flatten().tolist())
    assert side["preprocess"]["crop_size"] == 64  # the checkpoint's recorded crop settings
    assert side["checkpoint"] == str(ckpt)
    assert 0 <= side["check"]["max_rel_diff"] <= 1e-4


def test_onnx_model_takes_predicts_uint8_frames(exported):
    # OnnxModel.logits takes ClipLoader's (B, T, S, S, 3) uint8 frames, as the model does after
    # predict's permute: same logits.
    model, _, out = exported
    frames = np.random.default_rng(3).integers(0, 256, (2, T, S, S, 3), dtype=np.uint8)
    with torch.no_grad():
        ref = model(torch.from_numpy(frames).permute(0, 1, 4, 2, 3)).numpy()
    assert relative_diff(OnnxModel(out).logits(frames), ref) <= 1e-4


def test_a_failed_check_writes_nothing(exported, tmp_path):
    model, ckpt, _ = exported
    out = tmp_path / "strict.onnx"
    with pytest.raises(UserError, match=r"differ from PyTorch's by .* over the tolerance 0; nothing written"):
        export_onnx(model, out, tolerance=0.0, check_batches=(2,))
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_user_errors(exported, tmp_path):
    _, ckpt, _ = exported
    assert export_stage.cli(["--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    with pytest.raises(UserError, match=r"the folder of --out does not exist: .*missing"):
        export_onnx(ckpt, tmp_path / "missing" / "m.onnx")
    with pytest.raises(UserError, match=r"is a folder"):
        export_onnx(ckpt, tmp_path)
    (tmp_path / "plain.onnx").write_bytes(b"not onnx")
    with pytest.raises(UserError, match=r"plain.onnx: cannot be loaded by onnxruntime"):
        OnnxModel(tmp_path / "plain.onnx")
