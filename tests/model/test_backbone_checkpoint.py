"""CLIP loading (tags, QuickGELU, local files, offline errors) and the checkpoint format."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from pipeline.errors import UserError
from pipeline.model import build_model, list_architectures, load_checkpoint, load_clip, save_checkpoint
from pipeline.model.backbone import _resolve_quick_gelu
from tests.micro import micro_model


def test_tiny_architectures_are_registered():
    names = list_architectures()
    assert {"dferclip-tiny", "dferclip-micro", "ViT-B-32"} <= set(names)


def test_openai_tag_selects_quick_gelu():
    assert _resolve_quick_gelu("ViT-B-32", "openai", None, None) is True
    assert _resolve_quick_gelu("ViT-B-32", "laion2b_s34b_b79k", None, None) is False
    assert _resolve_quick_gelu("ViT-B-32", None, "w.pt", None) is False
    assert _resolve_quick_gelu("ViT-B-32", None, "w.pt", True) is True


def test_quick_gelu_architecture_is_built():
    bb = load_clip("dferclip-micro", quick_gelu=True)
    acts = {type(m).__name__ for m in bb.model.modules()}
    assert "QuickGELU" in acts and bb.quick_gelu


def test_local_weights_file_round_trip(tmp_path):
    src = load_clip("dferclip-micro")
    path = tmp_path / "clip.pt"
    torch.save(src.model.state_dict(), path)
    loaded = load_clip("dferclip-micro", weights=str(path))
    for (k, a), (_, b) in zip(src.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_bad_names_and_missing_files_are_clear():
    with pytest.raises(UserError, match="unknown architecture"):
        load_clip("ViT-Q-99")
    with pytest.raises(UserError, match="no pretrained tag"):
        load_clip("dferclip-micro", pretrained="openai")
    with pytest.raises(UserError, match="file not found"):
        load_clip("dferclip-micro", weights="/nonexistent/w.pt")


@pytest.mark.timeout(120)
def test_offline_pretrained_download_fails_with_a_clear_message():
    code = (
        "from pipeline.model.backbone import load_clip\n"
        "from pipeline.errors import UserError\n"
        "try:\n    load_clip('ViT-B-32', pretrained='openai')\n"
        "except UserError as e:\n    print('USERERROR', e)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", XDG_CACHE_HOME="/nonexistent-cache")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=110)
    assert "USERERROR" in out.stdout, out.stderr[-2000:]
    assert "model.weights" in out.stdout


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    descriptions = {"happiness": ["a broad smile"], "fear": ["eyes wide, brows up and together"]}
    model = build_model(micro_model(), ["happiness", "fear"], descriptions).eval()
    with torch.no_grad():
        model.prompt_learner.ctx.normal_()  # not the initial values
    path = save_checkpoint(model, tmp_path / "ckpt" / "model.pt", extra={"epoch": 3, "uar": 0.5})
    loaded, extra = load_checkpoint(path)
    assert extra == {"epoch": 3, "uar": 0.5}
    assert loaded.class_names == ["happiness", "fear"]
    assert loaded.spec["descriptions"] == descriptions
    video = torch.rand(2, 8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), model(video), rtol=0, atol=0)
    assert not list(tmp_path.glob("ckpt/.*.tmp"))


def test_mismatched_or_foreign_checkpoint_is_rejected(tmp_path):
    model = build_model(micro_model(text_source="class_names"), ["a", "b"])
    path = save_checkpoint(model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["temporal.pos_embedding"] = torch.zeros(1, 3, 64)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="bad.pt.*do not match"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not a DFER-CLIP checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="garbage.pt"):
        load_checkpoint(tmp_path / "garbage.pt")
