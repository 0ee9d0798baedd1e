"""`dferclip run`: stages run once, a second run skips them all, a template edit re-runs only what depends on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.config import dump_config, load_config
from pipeline.demo import generate_demo_data
from pipeline.fingerprint import read_record
from pipeline.llm.prompts import PROMPTS_DIR
from pipeline.orchestrate import run_pipeline
from pipeline.storage import Storage
from stages import run
from tests.llm.openai_server import ChatServer

TINY = [
    "model.clip_model=dferclip-micro",
    "model.pretrained=null",
    "model.num_frames=8",
    "model.temporal_heads=2",
    "model.temporal_head_dim=32",
    "model.temporal_mlp_dim=128",
    "model.n_ctx=4",
    "preprocess.crop_size=48",
    "preprocess.num_workers=1",
    "train.epochs=1",
    "train.batch_size=8",
    "train.eval_batch_size=16",
    "train.milestones=[1]",
    "train.num_workers=1",
    "train.cpus_per_worker=1",
]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_run_skips_up_to_date_stages_and_reruns_downstream_of_a_template_edit(ray_local, tmp_path, monkeypatch):
    data = tmp_path / "data"
    generate_demo_data(data, clips_per_class=2, seed=3, num_frames=12)
    template = tmp_path / "template.yaml"
    shutil.copyfile(PROMPTS_DIR / "templates" / "visual_features.yaml", template)
    monkeypatch.setenv("DFERCLIP_TEST_LLM_KEY", "sk-test-not-a-real-key")
    with ChatServer() as server:
        cfg = load_config(
            None,
            [
                "name=runtest",
                f"storage.root={tmp_path / 'root'}",
                "dataset.name=demo",
                f"dataset.root={data}",
                f"dataset.annotations={data / 'labels.csv'}",
                "describe.enabled=true",
                f"describe.base_url={server.base_url}",
                "describe.model=test-model",
                "describe.api_key_env=DFERCLIP_TEST_LLM_KEY",
                f"describe.template={template}",
                *TINY,
            ],
        )
        first = run_pipeline(cfg)
        assert first.ran == ["describe", "preprocess", "train"] and not first.skipped
        requests_after_first = len(server.chat_requests())
        assert requests_after_first == 7  # one answer per class
        assert Path(first.records["train"].outputs["checkpoint"]).is_file()

        second = run_pipeline(cfg)
        assert second.ran == [] and second.skipped == ["describe", "preprocess", "train"]
        assert len(server.chat_requests()) == requests_after_first  # nothing asked again
        # The stage's entry (`dferclip run --config FILE`) on the same config: all up to date too.
        config = tmp_path / "run.yaml"
        config.write_text(dump_config(cfg))
        assert run.cli(["--config", str(config)]) == 0
        assert len(server.chat_requests()) == requests_after_first
        assert read_record(Storage(cfg.storage.root), "train") == second.records["train"]

        template.write_text(template.read_text().replace("in a video?", "in a short video clip?"))
        third = run_pipeline(cfg)
        assert third.ran == ["describe", "train"] and third.skipped == ["preprocess"]
        assert len(server.chat_requests()) == requests_after_first + 7
        assert third.records["train"].outputs["run_dir"] != first.records["train"].outputs["run_dir"]
