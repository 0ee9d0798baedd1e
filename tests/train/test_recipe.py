"""The training recipe without Ray: the step, the metric row, best-epoch selection, the final
test evaluation and checkpointed state. The frozen-encoder path (cached frame embeddings) keeps
these fast; the Ray Train worker drives the same code in tests/train/test_train_stage.py."""

from __future__ import annotations

import io
import math

import pytest
import torch

from pipeline.config import ModelConfig, TrainConfig
from pipeline.metrics import EvalMetrics
from pipeline.train.recipe import METRIC_KEYS, Recipe, RunSpec, RunState, reported_metrics, selection_split
from pipeline.tune.fast import build_frozen_model

CLASSES = ("happiness", "sadness", "anger")
T, E = 4, 64  # frames per clip; dferclip-micro's embedding width


def _spec(**train) -> RunSpec:
    model = ModelConfig(
        clip_model="dferclip-micro", pretrained=None, num_frames=T, n_ctx=2, temporal_depth=1, text_source="class_names"
    )
    base = dict(
        epochs=3,
        optimizer="adamw",
        lr_temporal=1e-2,
        lr_prompt=1e-2,
        lr_schedule="cosine",
        milestones=[],
        warmup_epochs=0,
        batch_size=8,
        eval_batch_size=8,
        selection="test",
        best_metric="uar",
        seed=3,
    )
    return RunSpec(
        model=model, train=TrainConfig(**{**base, **train}), class_names=CLASSES, descriptions=None, run_name="unit"
    )


def _data(seed: int = 0, n: int = 24):
    """Frame embeddings whose class is visible (a class-dependent offset) and labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(CLASSES)
    centres = torch.randn(len(CLASSES), E, generator=g) * 3
    x = centres[labels][:, None, :] + torch.randn(n, T, E, generator=g)  # (n, T, E)
    return x, labels


def _batches(x, labels, size=8):
    return [(x[i : i + size], labels[i : i + size]) for i in range(0, len(labels), size)]


def _recipe(spec: RunSpec, **kw) -> Recipe:
    model = build_frozen_model(spec)
    return Recipe(
        spec, model, device=torch.device("cpu"), forward=model.logits_from_frames, train_image_encoder=False, **kw
    )


def _metrics(uar: float, loss: float) -> EvalMetrics:
    return EvalMetrics(loss=loss, uar=uar, war=uar, recall=[uar] * len(CLASSES), confusion=[[1, 0, 0]] * 3, count=3)


def _train_row():
    return {"train_loss": 1.0, "train_acc": 0.5, "lr": 0.01}


def test_selection_split_and_reported_metrics_follow_the_protocol():
    assert selection_split("test") == "test" and selection_split("validation") == "val"
    assert reported_metrics("validation", "loss") == [
        "val_uar",
        "val_war",
        "val_loss",
        "train_loss",
        "train_acc",
        "best_loss",
    ]
    assert _spec(selection="validation").eval_splits == ("test", "val")
    assert _spec().eval_splits == ("test",)


def test_epochs_train_and_the_row_has_the_documented_keys():
    spec = _spec()
    recipe = _recipe(spec)
    x, y = _data()
    first = None
    for _epoch in recipe.epochs():
        train = recipe.train_epoch(_batches(x, y))
        first = first or train["train_loss"]
        row, _ = recipe.end_epoch(train, {"test": recipe.evaluate(_batches(x, y))}, seconds=0.5)
    assert [r["epoch"] for r in recipe.state.history] == [1, 2, 3] and recipe.last_epoch
    assert row["train_loss"] < 0.7 * first  # separable data: the step learns
    expected = {
        "epoch",
        "train_loss",
        "train_acc",
        "lr",
        "lr_prompt",
        "test_loss",
        "test_uar",
        "test_war",
        "best_uar",
        "best_epoch",
        "seconds",
    } | {f"test_recall_{c}" for c in CLASSES}
    assert set(row) == expected
    # every key is one of METRIC_KEYS' patterns
    patterns = [k.replace("{split}", "test").replace("<class>", "").replace("<metric>", "") for k in METRIC_KEYS]
    assert all(
        any(key == p or (p.endswith("_") and key.startswith(p)) or key.startswith("lr_") for p in patterns)
        for key in row
    )
    # the row's learning rate is the temporal group's, before the schedule stepped (cosine, epoch 3 of 3)
    assert row["lr"] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))


def test_best_epoch_is_the_highest_uar_or_the_lowest_loss():
    recipe = _recipe(_spec(epochs=4))
    for uar in (0.2, 0.5, 0.4, 0.5):  # a tie does not replace the earlier best
        row, improved = recipe.end_epoch(_train_row(), {"test": _metrics(uar, 1.0)}, 0.1)
    assert recipe.state.best_epoch == 2 and recipe.state.best_value == 0.5 and row["best_uar"] == 0.5
    assert [r["best_epoch"] for r in recipe.state.history] == [1, 2, 2, 2] and not improved

    recipe = _recipe(_spec(epochs=3, best_metric="loss"))
    flags = [recipe.end_epoch(_train_row(), {"test": _metrics(0.9, loss)}, 0.1)[1] for loss in (1.0, 0.8, 0.9)]
    assert flags == [True, True, False] and recipe.state.best_epoch == 2 and recipe.state.best_value == 0.8

    recipe = _recipe(_spec(epochs=2))
    recipe.end_epoch(_train_row(), {"test": _metrics(float("nan"), 1.0)}, 0.1)  # nothing to compare yet
    _, improved = recipe.end_epoch(_train_row(), {"test": _metrics(0.3, 1.0)}, 0.1)
    assert improved and recipe.state.best_epoch == 2


def test_finish_in_validation_mode_evaluates_test_once_with_the_selected_weights():
    spec = _spec(epochs=2, selection="validation")
    recipe = _recipe(spec)
    x, y = _data()
    loaded, evaluated = [], []
    recipe.end_epoch(_train_row(), {"val": _metrics(0.6, 1.0)}, 0.1)
    recipe.end_epoch(_train_row(), {"val": _metrics(0.4, 1.0)}, 0.1)

    def test_batches():
        evaluated.append(True)
        return _batches(x, y)

    test = recipe.finish(lambda: loaded.append(recipe.state.best_epoch), test_batches)
    assert loaded == [1] and evaluated == [True]
    expected = recipe.evaluate(_batches(x, y))
    assert test["uar"] == expected.uar and test["confusion"] == expected.confusion and test["loss"] == expected.loss
    assert recipe.state.history[-1]["test_uar"] == expected.uar  # joins the last epoch's row
    assert "test_uar" not in recipe.state.history[0]


def test_finish_in_the_papers_protocol_returns_the_selected_epochs_test_metrics():
    recipe = _recipe(_spec(epochs=2))
    recipe.end_epoch(_train_row(), {"test": _metrics(0.3, 2.0)}, 0.1)
    recipe.end_epoch(_train_row(), {"test": _metrics(0.7, 1.5)}, 0.1)
    test = recipe.finish(lambda: None, lambda: pytest.fail("test must not be evaluated again"))
    assert test["uar"] == 0.7 and test["loss"] == 1.5 and test["recall"] == dict.fromkeys(CLASSES, 0.7)


def test_reduce_sums_over_workers():
    """Two identical workers: every sum doubles, so means stay and counts double."""
    x, y = _data()
    one = _recipe(_spec()).evaluate(_batches(x, y))
    two = _recipe(_spec(), reduce=lambda t: t.mul_(2)).evaluate(_batches(x, y))
    assert two.count == 2 * one.count == 2 * len(y)
    assert two.loss == pytest.approx(one.loss) and two.uar == pytest.approx(one.uar)


def test_checkpointed_state_resumes_to_the_same_run():
    """Train 3 epochs straight, or 1 epoch, checkpoint (weights_only), restore into a fresh
    recipe, 2 more: identical weights, history and best epoch."""
    x, y = _data()
    spec = _spec(epochs=3)

    def epoch(recipe: Recipe) -> None:
        shuffled = torch.randperm(len(y))  # the recipe's RNG state must be restored too
        train = recipe.train_epoch(_batches(x[shuffled], y[shuffled]))
        row, _ = recipe.end_epoch(train, {"test": recipe.evaluate(_batches(x, y))}, 0.0)
        row["seconds"] = 0.0

    straight = _recipe(spec)
    for _ in straight.epochs():
        epoch(straight)

    first = _recipe(spec)
    epoch(first)
    buf = io.BytesIO()
    torch.save({"weights": first.model.state_dict(), "recipe": first.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = _recipe(spec)
    resumed.model.load_state_dict(saved["weights"])
    resumed.load_state_dict(saved["recipe"])
    assert list(resumed.epochs()) == [2, 3] and resumed.state.resumed_from == [1]
    for _ in resumed.epochs():
        epoch(resumed)

    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.state.history == straight.state.history
    assert resumed.state.best_epoch == straight.state.best_epoch


def test_run_state_and_spec_travel_as_plain_data():
    spec = _spec(selection="validation")
    assert RunSpec.from_dict(spec.to_dict()) == spec
    state = RunState(epoch=2, best_epoch=1, best_value=0.5, history=[{"epoch": 1}], resumed_from=[1])
    recipe = _recipe(spec)
    recipe.state = state
    copy = _recipe(spec)
    copy.load_state_dict(recipe.state_dict())
    assert copy.state.epoch == 2 and copy.state.best_value == 0.5 and copy.state.resumed_from == [1, 2]
