"""``train.init_checkpoint`` (``dferclip train --init-from``): a new run whose model is a project
checkpoint — an imported released one (frames without CLIP's mean/std, QuickGELU, logit scale
100) or one of this project's runs — with all its weights, trained with the config's recipe.

The first forward pass is compared with the checkpoint loaded independently (``load_checkpoint``,
as evaluate does); a training step must move the weights away from it; a config whose model
section, or class list, does not describe the checkpoint is refused naming each key; the run
records the file's sha256, and ``dferclip run``'s fingerprint follows the file's content."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
import torch

from pipeline.config import ConfigError, DatasetConfig, ExperimentConfig, StorageConfig, TrainConfig
from pipeline.datasets import CLASSES_7
from pipeline.errors import UserError
from pipeline.model.build import build_model
from pipeline.model.checkpoint import load_checkpoint, save_checkpoint
from pipeline.storage import Storage
from pipeline.train.init_checkpoint import RECORD_FILE, run_init_record
from pipeline.train.recipe import Recipe, RunSpec, build_run_model
from tests.micro import micro_model
from tests.model.test_import_official import DESCRIPTIONS, GenerateModel, save_published

CLASSES_3 = ["happiness", "sadness", "anger"]
# The model section that describes the imported checkpoint (what import-official recorded).
IMPORTED_MODEL = dict(
    clip_model="dferclip-micro",
    pretrained="openai",  # ignored: the weights come from the checkpoint (and nothing is downloaded)
    num_frames=8,
    temporal_heads=8,
    temporal_head_dim=8,
    temporal_mlp_dim=128,
    n_ctx=4,
    input_normalization="none",
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{"imported": a released-layout file put through import-official, "own": a project run's
    checkpoint (random micro CLIP, its logit scale resolved to CLIP's 1/0.07)}, plus the published .pth."""
    from pipeline.model.official import import_official

    base = tmp_path_factory.mktemp("init_ckpt")
    published = GenerateModel(DESCRIPTIONS, True, seed=5).eval()
    with pytest.MonkeyPatch.context() as mp:
        save_published(published, base / "DFEW-set1-model_best.pth", mp)
    import_official(base / "DFEW-set1-model_best.pth", base / "dfew-set1.pt")
    torch.manual_seed(1)
    own = build_model(micro_model(text_source="class_names"), CLASSES_3)
    save_checkpoint(own, base / "own.pt", {"run_name": "tiny-fold1-own", "epoch": 3})
    return {"imported": base / "dfew-set1.pt", "own": base / "own.pt", "published": base / "DFEW-set1-model_best.pth"}


def _cfg(tmp_path, init, model: dict, classes=CLASSES_7, **train) -> ExperimentConfig:
    return ExperimentConfig(
        name="init",
        storage=StorageConfig(root=str(tmp_path / "store")),
        dataset=DatasetConfig(name="dfew", classes=list(classes)),
        model=micro_model(**model),
        train=TrainConfig(
            init_checkpoint=str(init),
            epochs=2,
            optimizer="adamw",
            lr_image_encoder=1e-3,
            lr_temporal=1e-2,
            lr_prompt=1e-2,
            milestones=[],
            seed=4,
            **train,
        ),
    )


def _clips(n_classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(4, 8, 3, 32, 32, generator=g), torch.arange(4) % n_classes


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("which", ["imported", "own"])
def test_a_run_starts_from_the_checkpoint_and_trains_it(tmp_path, checkpoints, which):
    path = checkpoints[which]
    if which == "imported":
        cfg = _cfg(tmp_path, path, IMPORTED_MODEL)
    else:  # the config leaves logit_scale and quick_gelu null: the checkpoint's resolved values are taken
        cfg = _cfg(tmp_path, path, dict(text_source="class_names"), classes=CLASSES_3)
    spec = RunSpec.for_experiment(cfg, "init-fold1-x", None)
    assert spec.init_checkpoint == {"location": str(path)}  # absolute: workers and trials run elsewhere

    model = build_run_model(spec)
    reference, _ = load_checkpoint(path)  # as evaluate and predict load it
    clips, labels = _clips(len(cfg.dataset.class_names))
    model.eval()
    with torch.no_grad():
        first, want = model(clips), reference(clips)
    assert torch.equal(first, want) and want.abs().max() > 0.5
    assert model.logit_scale == reference.logit_scale == (100.0 if which == "imported" else pytest.approx(1 / 0.07))
    assert model.spec == reference.spec  # its final checkpoint records the model it really is

    before = _params(model)
    recipe = Recipe(spec, model, device=torch.device("cpu"))
    assert recipe.state.epoch == 0 and list(recipe.epochs()) == [1, 2]  # a fresh schedule, not a resume
    row = recipe.train_epoch([(clips, labels)])
    assert row["lr"] == pytest.approx(1e-2)  # the config's recipe
    after = _params(model)
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert "prompt_learner.ctx" in moved
    assert any(n.startswith("temporal") for n in moved) and any(n.startswith("image_encoder") for n in moved)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not (moved & frozen)  # the text tower stays as the checkpoint has it


def test_a_config_that_does_not_describe_the_checkpoint_is_refused(tmp_path, checkpoints):
    imported = checkpoints["imported"]
    bad = {**IMPORTED_MODEL, "n_ctx": 8, "clip_model": "dferclip-rn-micro", "input_normalization": "clip"}
    spec = RunSpec.for_experiment(_cfg(tmp_path, imported, bad), "r", None)
    with pytest.raises(UserError) as info:
        build_run_model(spec)
    text = str(info.value)
    assert text.startswith(f"train.init_checkpoint: {imported} does not fit the config's model section")
    assert "model.clip_model: the config has 'dferclip-rn-micro', the checkpoint 'dferclip-micro'" in text
    assert "model.n_ctx: the config has 8, the checkpoint 4" in text
    assert "model.input_normalization: the config has 'clip', the checkpoint 'none'" in text
    # Explicit resolved values must agree too; null accepts the checkpoint's.
    with pytest.raises(UserError, match=r"model\.logit_scale: the config has 50\.0, the checkpoint 100\.0"):
        build_run_model(
            RunSpec.for_experiment(_cfg(tmp_path, imported, {**IMPORTED_MODEL, "logit_scale": 50.0}), "r", None)
        )
    # The classes are the checkpoint's outputs: the same names in the same order.
    swapped = [CLASSES_7[1], CLASSES_7[0], *CLASSES_7[2:]]
    with pytest.raises(UserError, match=r"dataset\.classes: the config's classes are \['sadness', 'happiness'"):
        build_run_model(RunSpec.for_experiment(_cfg(tmp_path, imported, IMPORTED_MODEL, classes=swapped), "r", None))
    # The driver checks before any worker starts, and writes nothing for a refused file.
    storage = Storage(str(tmp_path / "store"))
    with pytest.raises(UserError, match=r"model\.n_ctx"):
        run_init_record(_cfg(tmp_path, imported, bad), storage, ("train", "r"))
    assert not storage.exists("train", "r", RECORD_FILE)


def test_files_that_are_not_project_checkpoints_are_refused(tmp_path, checkpoints):
    def build(path):
        return build_run_model(RunSpec.for_experiment(_cfg(tmp_path, path, IMPORTED_MODEL), "r", None))

    with pytest.raises(UserError, match=r"^train\.init_checkpoint: checkpoint not found: .*missing\.pt$"):
        build(tmp_path / "missing.pt")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(UserError, match=rf"^train\.init_checkpoint: {text} cannot be read as a checkpoint"):
        build(text)
    other = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    with pytest.raises(UserError, match=rf"^train\.init_checkpoint: {other} is not a DFER-CLIP checkpoint"):
        build(other)
    # A released .pth (its recorder is a pickled class) is not loaded as one: convert it first.
    with pytest.raises(UserError, match=r"cannot be read as a checkpoint.*dferclip import-official"):
        build(checkpoints["published"])


def test_the_run_records_the_file_and_its_texts_and_a_changed_file_is_noticed(tmp_path, checkpoints):
    from pipeline.train.experiment import run_descriptions

    path = tmp_path / "start.pt"
    path.write_bytes(checkpoints["imported"].read_bytes())
    cfg = _cfg(tmp_path, path, IMPORTED_MODEL)
    storage = Storage(cfg.storage.root)
    record, init_spec = run_init_record(cfg, storage, ("train", "run1"))
    assert record["location"] == str(path) and record["run_name"] == "dfew-set1"
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["imported_from"].endswith("DFEW-set1-model_best.pth")
    assert json.loads(storage.read_text("train", "run1", RECORD_FILE)) == record
    # The model's class texts are the checkpoint's (its context was fitted to them), copied to the run.
    chosen = run_descriptions(cfg, storage, "run1", init_spec)
    payload = torch.load(path, weights_only=True)
    assert chosen.chosen_by == "train.init_checkpoint" and chosen.descriptions == payload["spec"]["descriptions"]
    assert chosen.descriptions["happiness"][0].replace(" ", "") == DESCRIPTIONS[0].replace(" ", "")
    assert storage.exists("train", "run1", "descriptions.yaml")

    spec = RunSpec.for_experiment(cfg, "run1", chosen.descriptions, init_checkpoint=record)
    assert RunSpec.from_dict(spec.to_dict()).init_checkpoint == record  # travels to the workers
    payload["extra"]["note"] = "edited"
    torch.save(payload, path)
    with pytest.raises(UserError, match=r"start\.pt changed since this run started"):
        build_run_model(spec)
    # --resume keeps the record the run started with (its weights come from its own checkpoints).
    assert run_init_record(cfg, storage, ("train", "run1")) == (record, None)


def test_dferclip_run_trains_again_when_the_file_changes(tmp_path, checkpoints):
    from pipeline.orchestrate import STAGES

    train = next(s for s in STAGES if s.name == "train")
    path = tmp_path / "start.pt"
    path.write_bytes(checkpoints["own"].read_bytes())
    cfg = _cfg(tmp_path, path, dict(text_source="class_names"), classes=CLASSES_3)
    upstream = {"describe": "d", "preprocess": "p"}
    first = train.fingerprint(cfg, upstream)
    assert train.fingerprint(cfg, upstream) == first
    path.write_bytes(checkpoints["own"].read_bytes() + b"\0")  # same path, other content
    assert train.fingerprint(cfg, upstream) != first


def test_cli_and_tune_refusals(tmp_path, checkpoints, capsys):
    from pipeline.config import load_config
    from pipeline.tune.experiment import validate_tune
    from stages.train import cli

    config = tmp_path / "exp.yaml"
    config.write_text(f"storage: {{root: {tmp_path / 'store'}}}\n")
    assert cli(["--config", str(config), "--resume", "some-run", "--init-from", str(checkpoints["own"])]) == 2
    assert (
        "--init-from starts a new run: it needs --config and cannot be combined with --resume"
        in capsys.readouterr().err
    )
    with pytest.raises(ConfigError, match=r"train\.init_checkpoint: must be a checkpoint path or null"):
        load_config(config, ["train.init_checkpoint=' '"])
    cfg = _cfg(tmp_path, checkpoints["own"], dict(text_source="class_names"), classes=CLASSES_3)
    with pytest.raises(UserError, match=r"^train\.init_checkpoint: dferclip tune does not start trials"):
        validate_tune(dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, metric="test_uar")))


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_dferclip_train_init_from_runs_on_ray_and_records_the_file(train_store, tmp_path):
    """The whole stage: Ray Train's worker builds the model from the checkpoint, trains it, and the
    run's summary and exported checkpoint name the file it started from."""
    from stages.train import cli
    from tests.train.conftest import CLASSES, tiny_config

    torch.manual_seed(2)
    start = build_model(
        micro_model(num_frames=16, temporal_heads=2, temporal_head_dim=32, text_source="class_names"), CLASSES
    )
    init = tmp_path / "start.pt"
    save_checkpoint(start, init, {"run_name": "earlier-run"})
    cfg = tiny_config(train_store, tmp_path / "tiny.yaml", epochs=1, num_workers=1, optimizer="adamw")
    args = ["--config", str(cfg), "--init-from", str(init), "--set", "model.text_source=class_names"]
    assert cli(args) == 0
    latest = json.loads((train_store / "train" / "latest.json").read_text())
    summary = json.loads(open(latest["summary"]).read())
    want = {"location": str(init), "sha256": hashlib.sha256(init.read_bytes()).hexdigest(), "run_name": "earlier-run"}
    assert {k: summary["init_checkpoint"][k] for k in want} == want
    trained, extra = load_checkpoint(summary["paths"]["final_checkpoint"])
    assert extra["init_checkpoint"] == summary["init_checkpoint"]
    reference, _ = load_checkpoint(init)
    assert trained.spec == reference.spec
    before, after = _params(reference), _params(trained)
    assert not torch.equal(before["prompt_learner.ctx"], after["prompt_learner.ctx"])
    # Trained from the checkpoint, not from a fresh initialisation: the frozen text tower is its own.
    frozen = [n for n, p in reference.named_parameters() if not p.requires_grad]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)

    # --resume continues from the run's own checkpoint: the init file is not needed any more.
    # (This is also the suite's end-to-end check of --resume on a finished run.)
    from pipeline.train.experiment import resume_run

    run = Path(summary["paths"]["run_dir"])
    before = pl.read_csv(run / "metrics.csv")
    init.unlink()
    assert resume_run(str(run))["epochs"] == 1  # already complete: nothing to do
    assert pl.read_csv(run / "metrics.csv").equals(before) and not (run / "checkpoint_epoch0002").exists()
    assert cli(["--resume", str(run), "--set", "train.epochs=2"]) == 0
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["resumed_from"] == [1] and resumed["init_checkpoint"] == summary["init_checkpoint"]
    assert resumed["epochs"] == 2 and resumed["run_name"] == summary["run_name"]
    after = pl.read_csv(run / "metrics.csv")
    assert after["epoch"].to_list() == [1, 2]
    assert after.head(1)["train_loss"].to_list() == before["train_loss"].to_list()  # kept, not re-run
    assert resumed["description_set"] == summary["description_set"]  # its own copy, read back
    assert sorted(p.name for p in run.glob("checkpoint_epoch*")) == ["checkpoint_epoch0001", "checkpoint_epoch0002"]
    assert json.loads((train_store / "train" / "latest.json").read_text())["run_name"] == summary["run_name"]
