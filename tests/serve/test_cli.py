"""dferclip serve's command line: what it refuses before any Ray or Serve starts."""

from __future__ import annotations

import pytest

from pipeline.cli import main
from stages.serve import cli


def test_it_needs_a_model(capsys):
    with pytest.raises(SystemExit) as info:
        cli([])
    assert info.value.code == 2
    assert "give --checkpoint, or --onnx" in capsys.readouterr().err


def test_set_needs_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli(["--checkpoint", str(tmp_path / "m.pt"), "--set", "serve.port=9000"])
    assert info.value.code == 2
    assert "--set needs --config" in capsys.readouterr().err


def test_bad_files_and_settings_exit_2_naming_them(tmp_path, capsys):
    assert main(["serve", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert f"checkpoint not found: {tmp_path / 'missing.pt'}" in capsys.readouterr().err
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    assert cli(["--onnx", str(tmp_path / "model.onnx")]) == 2
    assert "model.onnx: cannot be loaded by onnxruntime" in capsys.readouterr().err
    config = tmp_path / "exp.yaml"
    config.write_text("serve:\n  max_queued_requests: -1\n")
    assert cli(["--config", str(config), "--checkpoint", str(tmp_path / "missing.pt"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "serve.max_queued_requests: must be >= 1 (a bounded queue), got -1" in err
    assert "serve.port: must be in 1..65535, got 0" in err


def test_a_gpu_device_needs_gpus_for_the_replicas(tmp_path, capsys):

    from pipeline.datasets import CLASSES_7
    from pipeline.model import build_model, save_checkpoint
    from tests.micro import micro_model

    model = build_model(micro_model(num_frames=4, n_ctx=2, text_source="class_names"), list(CLASSES_7))
    ckpt = str(save_checkpoint(model, tmp_path / "model.pt"))
    assert cli(["--checkpoint", ckpt, "--device", "cuda"]) == 2
    assert "--device cuda needs serve.gpus_per_model > 0" in capsys.readouterr().err
    assert cli(["--checkpoint", ckpt, "--device", "tpu"]) == 2
    assert "--device must be auto, cpu or cuda[:N], got 'tpu'" in capsys.readouterr().err
