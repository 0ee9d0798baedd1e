"""`dferclip run`: stages run once, a second run skips them all, a template edit re-runs only what depends on it;
`--tune` sweeps on the describe stage's set. One end-to-end run serves both tests."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.config import dump_config, load_config
from pipeline.demo import generate_demo_data
from pipeline.fingerprint import read_record
from pipeline.llm import read_description_set
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


@pytest.fixture(scope="module")
def first_run(ray_local, tmp_path_factory):
    """One `dferclip run --tune` from nothing (describe on the test LLM server, preprocess, train,
    a one-trial sweep), shared by both tests: the end-to-end run is the expensive part, and the
    second test only reads what it made. What the first test changes later (the template, the
    description set file) is read here, right after the run."""
    from pipeline.llm import read_description_set

    tmp = tmp_path_factory.mktemp("run")
    data = tmp / "data"
    generate_demo_data(data, clips_per_class=2, seed=3, num_frames=12)
    template = tmp / "template.yaml"
    shutil.copyfile(PROMPTS_DIR / "templates" / "visual_features.yaml", template)
    with pytest.MonkeyPatch.context() as mp, ChatServer() as server:
        mp.setenv("DFERCLIP_TEST_LLM_KEY", "sk-test-not-a-real-key")
        cfg = load_config(
            None,
            [
                "name=llm-run.",  # written as descriptions/llm-run.yaml
                f"storage.root={tmp / 'root'}",
                "dataset.name=demo",
                f"dataset.root={data}",
                f"dataset.annotations={data / 'labels.csv'}",
                "describe.enabled=true",
                f"describe.base_url={server.base_url}",
                "describe.model=test-model",
                "describe.api_key_env=DFERCLIP_TEST_LLM_KEY",
                f"describe.template={template}",
                *TINY,
                "tune.space={model.n_ctx: [4]}",
                "tune.frozen_encoder=true",
                "tune.metric=test_uar",
                "tune.scheduler=none",
                "tune.max_concurrent_trials=1",
            ],
        )
        summary = run_pipeline(cfg, include=("tune",))
        yield SimpleNamespace(
            cfg=cfg,
            server=server,
            template=template,
            tmp=tmp,
            summary=summary,
            requests=len(server.chat_requests()),
            llm_set=read_description_set(summary.records["describe"].outputs["description_set"]),
        )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_run_skips_up_to_date_stages_and_reruns_downstream_of_a_template_edit(first_run):
    cfg, server, first = first_run.cfg, first_run.server, first_run.summary
    assert first.ran == ["describe", "preprocess", "train", "tune"] and not first.skipped
    requests_after_first = first_run.requests
    assert requests_after_first == 7  # one answer per class
    assert Path(first.records["train"].outputs["checkpoint"]).is_file()

    second = run_pipeline(cfg, include=("tune",))
    assert second.ran == [] and second.skipped == ["describe", "preprocess", "train", "tune"]
    assert len(server.chat_requests()) == requests_after_first  # nothing asked again
    # The stage's entry (`dferclip run --config FILE`, no --tune) on the same config: all up to date too.
    config = first_run.tmp / "run.yaml"
    config.write_text(dump_config(cfg))
    assert run.cli(["--config", str(config)]) == 0
    assert len(server.chat_requests()) == requests_after_first
    assert read_record(Storage(cfg.storage.root), "train") == second.records["train"]

    template = first_run.template
    template.write_text(template.read_text().replace("in a video?", "in a short video clip?"))
    third = run_pipeline(cfg)
    assert third.ran == ["describe", "train"] and third.skipped == ["preprocess"]
    assert len(server.chat_requests()) == requests_after_first + 7
    assert third.records["train"].outputs["run_dir"] != first.records["train"].outputs["run_dir"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_run_with_tune_trains_and_sweeps_on_the_describe_stage_set(first_run):
    """`dferclip run --tune` with describe.enabled: train and the sweep both use the LLM's set,
    found under the name the describe stage wrote it (the experiment name made file-safe)."""
    import json

    from pipeline.model.checkpoint import load_checkpoint

    summary, llm_set = first_run.summary, first_run.llm_set
    assert summary.ran == ["describe", "preprocess", "train", "tune"]
    location = summary.records["describe"].outputs["description_set"]
    assert Path(location).name == "llm-run.yaml"
    assert llm_set.provenance["source"] == "llm"
    # Trained on the LLM's descriptions (the model carries its class texts), and swept on them.
    model, _extra = load_checkpoint(summary.records["train"].outputs["checkpoint"])
    assert model.spec["descriptions"] == llm_set.classes
    sweep = json.loads((Path(summary.records["tune"].outputs["sweep"]) / "sweep.json").read_text())
    assert sweep["signature"]["descriptions"] == llm_set.classes
    # The stage records, the run folder and the sweep folder name the set they used.
    set_id = f"llm-run@{llm_set.id}"
    assert summary.records["train"].outputs["description_set"] == set_id
    assert summary.records["tune"].outputs["description_set"] == set_id
    run_dir = Path(summary.records["train"].outputs["run_dir"])
    assert json.loads((run_dir / "summary.json").read_text())["description_set"]["id"] == set_id
    assert read_description_set(run_dir / "descriptions.yaml").classes == llm_set.classes
    assert sweep["description_set"]["id"] == set_id
