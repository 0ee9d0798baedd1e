"""`dferclip pretrain` end to end on a tiny config: Ray Train job, loss falls, weights load in open_clip."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import open_clip
import pytest
import torch

from pipeline.cli import main
from pipeline.model.backbone import load_clip

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "synth.yaml"


@pytest.mark.slow
def test_short_pretraining_through_the_command(ray_local, tmp_path):
    out = tmp_path / "w" / "tiny-synth.pt"
    sets = {
        "images": 480,
        "held_out": 64,
        "batch_size": 64,
        "steps": 16,
        "log_every": 4,
        "lr": 0.003,
        "warmup_steps": 2,
        "cpus_per_worker": 1,
        "eval_faces_per_class": 2,
        "output": str(out),
        "storage": str(tmp_path / "ray"),
    }
    argv = ["pretrain", "--config", str(CONFIG)]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 0

    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest["architecture"] == "dferclip-rn-micro" and manifest["data"]["images"] == 480
    assert manifest["command"] == "dferclip pretrain " + " ".join(argv[1:])
    curve = [row["loss"] for row in manifest["curve"]]
    assert len(curve) == 4 and curve[-1] < curve[0] - 0.1, curve  # the contrastive loss falls
    assert set(manifest["zero_shot_apex"]) >= {"uar_shipped_descriptions", "uar_class_names"}

    # A plain open_clip state dict of the full architecture (77-token text context, every key).
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert state["positional_embedding"].shape[0] == 77
    model = open_clip.create_model("dferclip-rn-micro", pretrained=str(out))
    backbone = load_clip("dferclip-rn-micro", weights=str(out))
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    assert torch.equal(backbone.model.logit_scale.half(), state["logit_scale"])


def test_bad_settings_are_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "x.pt"
    assert main(["pretrain", "--set", "tag=Bad-Tag", "--set", "steps=0", "--set", f"output={out}"]) == 2
    err = capsys.readouterr().err
    assert "tag:" in err and "steps:" in err
    assert not out.exists()
