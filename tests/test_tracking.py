"""MLflow tracking against a real local store (SQLite database and artifact folder under tmp),
read back with MLflow's own client (the train and tune stages' own tests go through Ray)."""

from __future__ import annotations

import json
import math
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch

from pipeline.config import ExperimentConfig, TrackingConfig, load_config
from pipeline.errors import UserError
from pipeline.tracking import (
    INSTALL_HINT,
    RunTracker,
    close_open_runs,
    flatten_params,
    metric_name,
    open_tracker,
    tracking_settings,
)
from pipeline.typed import ConfigError, to_dict

mlflow = pytest.importorskip("mlflow", reason=f"the tracking extra is not installed: {INSTALL_HINT}")
from mlflow.tracking import MlflowClient  # noqa: E402


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory):
    """An MLflow SQLite database with its tables made (MLflow's migrations take seconds)."""
    path = tmp_path_factory.mktemp("mlflow") / "empty.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(empty_db, tmp_path, monkeypatch):
    """A fresh SQLite tracking store of this test's own (a copy of the empty database);
    MLFLOW_TRACKING_URI unset, so only what a test sets counts."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(empty_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for info in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, info.path) if info.is_dir else [info.path]
    return sorted(out)


# ---------------------------------------------------------------- config and settings


def test_config_section_defaults_and_validation():
    cfg = ExperimentConfig()
    assert cfg.tracking == TrackingConfig() and cfg.tracking.mlflow_uri is None
    cfg = load_config(None, ["tracking.mlflow_uri=http://mlflow.example.com:5000", "tracking.tags={team: vision}"])
    assert cfg.tracking.mlflow_uri == "http://mlflow.example.com:5000" and cfg.tracking.tags == {"team": "vision"}
    assert to_dict(cfg)["tracking"]["mlflow_experiment"] is None
    for uri in (
        "sqlite:///rel/mlflow.db",
        "sqlite:////abs/mlflow.db",
        "https://h",
        "file:///tmp/m",
        "postgresql+psycopg2://u@h/db",
        "databricks",
    ):
        assert TrackingConfig(mlflow_uri=uri).validate() == [], uri
    with pytest.raises(ConfigError) as err:
        load_config(
            None,
            ["tracking.mlflow_uri=/tmp/mlruns", "tracking.mlflow_experiment=''", "tracking.tags={mlflow.user: me}"],
        )
    text = str(err.value)
    assert "tracking.mlflow_uri: '/tmp/mlruns' has no scheme" in text and "sqlite:///" in text
    assert "tracking.mlflow_experiment:" in text and "tracking.tags: 'mlflow.user'" in text
    for bad, why in (
        ("foo://x", "unsupported scheme 'foo'"),
        ("sqlite://", "not in memory"),
        ("http://", "no host name"),
        ("  ", "is empty"),
    ):
        (problem,) = TrackingConfig(mlflow_uri=bad).validate()
        assert why in problem, (bad, problem)


def test_off_without_a_uri(store, monkeypatch):
    assert tracking_settings(TrackingConfig(), "exp") is None
    assert tracking_settings(None, "exp", environ={"MLFLOW_TRACKING_URI": ""}) is None
    assert open_tracker(None) is None


def test_environment_variable_is_honoured_and_config_wins(store, empty_db, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    settings = tracking_settings(TrackingConfig(), "from-env")
    assert settings.uri == store and settings.experiment_name == "from-env"
    shutil.copy(empty_db, tmp_path / "other.db")
    other = f"sqlite:///{tmp_path}/other.db"
    assert tracking_settings(TrackingConfig(mlflow_uri=other), "x").uri == other
    # the experiment exists in the store now, with its artifacts beside the database
    exp = MlflowClient(store).get_experiment(settings.experiment_id)
    assert exp.name == "from-env" and exp.artifact_location == str(tmp_path / "mlartifacts")


def test_relative_sqlite_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = tracking_settings({"mlflow_uri": "sqlite:///sub/m.db"}, "exp")
    assert settings.uri == f"sqlite:///{tmp_path}/sub/m.db" and (tmp_path / "sub" / "m.db").is_file()


def test_bad_uris_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match=r"MLFLOW_TRACKING_URI: '\./mlruns' has no scheme"):
        tracking_settings(None, "exp", environ={"MLFLOW_TRACKING_URI": "./mlruns"})
    with pytest.raises(UserError, match="MLFLOW_TRACKING_URI: 'ftp://h/x': unsupported scheme"):
        tracking_settings(None, "exp", environ={"MLFLOW_TRACKING_URI": "ftp://h/x"})
    (tmp_path / "a-file").write_text("x")  # a database folder that cannot exist: fails at once
    with pytest.raises(UserError, match="cannot create the database folder"):
        tracking_settings({"mlflow_uri": f"sqlite:///{tmp_path}/a-file/sub/m.db"}, "exp")


def test_missing_mlflow_says_how_to_install(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError, as when absent
    with pytest.raises(UserError) as err:
        tracking_settings({"mlflow_uri": store}, "exp")
    assert INSTALL_HINT in str(err.value) and "mlflow is not installed" in str(err.value)
    # tracking off never imports mlflow
    assert tracking_settings(None, "exp", environ={}) is None


def test_deleted_experiment_is_an_error(store):
    settings = tracking_settings({"mlflow_uri": store}, "gone")
    MlflowClient(store).delete_experiment(settings.experiment_id)
    with pytest.raises(UserError, match="'gone' .* is deleted"):
        tracking_settings({"mlflow_uri": store}, "gone")


# ---------------------------------------------------------------- names and params


def test_metric_names_and_flat_params():
    assert metric_name("test_recall_happy") == "test_recall_happy"
    assert metric_name("recall[fear]/ä") == "recall_fear_/_"
    assert metric_name("a//b/./c/../") == "a/b/_/c/_"
    assert metric_name("/x") == "x" and metric_name("") == "_" and len(metric_name("k" * 400)) == 250
    cfg = to_dict(ExperimentConfig())
    flat = flatten_params(cfg)
    assert flat["model.n_ctx"] == "8" and flat["train.milestones"] == "[30, 40]"
    assert flat["model.weights"] == "null" and flat["train.augment.hflip"] == "true"
    assert flat["model.clip_model"] == "ViT-B-32" and flat["train.lr_prompt"] == "0.001"
    assert not any(k.startswith("tracking.") for k in flat)  # where logs go is not a param


# ---------------------------------------------------------------- one run


def test_a_run_params_epochs_artifacts_and_status(store, tmp_path):
    cfg = load_config(
        None,
        [
            "name=dfew-base",
            f"tracking.mlflow_uri={store}",
            "tracking.tags={team: vision}",
            "describe.base_url=http://127.0.0.1:8000/" + "u" * 7000,  # longer than MLflow keeps
        ],
    )
    settings = tracking_settings(cfg.tracking, cfg.name)
    tracker = open_tracker(settings.to_dict())  # what a worker receives: plain data
    run_id = tracker.start("dfew-base-fold1", params=to_dict(cfg), tags={"dferclip.fold": 1})
    rows = [
        {
            "epoch": 1,
            "train_loss": 2.0,
            "test_uar": np.float32(0.25),
            "lr": torch.tensor(0.5),
            "test_recall_happy": 0.5,
            "best_epoch": 1,
            "note": "text",
            "improved": True,
            "best_uar": None,
        },
        {
            "epoch": 2,
            "train_loss": 1.5,
            "test_uar": 0.4,
            "lr": 0.01,
            "test_recall_happy": math.nan,
            "val loss (x)": 3.0,
        },
    ]
    assert tracker.log_epoch(rows[0], step=1) == {
        "epoch": 1.0,
        "train_loss": 2.0,
        "test_uar": 0.25,
        "lr": 0.5,
        "test_recall_happy": 0.5,
        "best_epoch": 1.0,
    }
    logged = tracker.log_epoch(rows[1], step=2)
    assert "test_recall_happy" not in logged and logged["val loss _x_"] == 3.0

    run_dir = tmp_path / "run"
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "final" / "model.pt").write_bytes(b"weights")
    (run_dir / "tensorboard").mkdir()
    (run_dir / "tensorboard" / "events.out").write_bytes(b"tb")
    for name in ("curves.png", "confusion_test.png", "metrics.csv", "summary.json", "other.txt"):
        (run_dir / name).write_text(name)
    assert tracker.log_files(run_dir, ["*.png", "metrics.csv", "summary.json"]) == [
        "confusion_test.png",
        "curves.png",
        "metrics.csv",
        "summary.json",
    ]
    assert tracker.log_checkpoint(run_dir / "final") == ["model.pt"]
    tracker.log_artifacts(run_dir / "tensorboard", "tensorboard")
    tracker.log_artifact(run_dir / "other.txt")
    with pytest.raises(FileNotFoundError):
        tracker.log_artifact(run_dir / "missing.txt")
    tracker.finish("FINISHED")
    with pytest.raises(RuntimeError, match="already finished"):
        tracker.log_epoch({"x": 1}, step=3)

    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "dfew-base-fold1"
    assert client.get_experiment(run.info.experiment_id).name == "dfew-base"
    assert run.info.artifact_uri.startswith(str(tmp_path / "mlartifacts"))
    params = run.data.params
    assert params["model.n_ctx"] == "8" and params["train.epochs"] == "50" and params["name"] == "dfew-base"
    assert len(params["describe.base_url"]) == 6000 and params["describe.base_url"].endswith("...")
    assert not any(k.startswith("tracking.") for k in params)
    assert run.data.tags["team"] == "vision" and run.data.tags["dferclip.fold"] == "1"
    assert _history(client, run_id, "train_loss") == [(1, 2.0), (2, 1.5)]
    assert _history(client, run_id, "test_uar") == [(1, 0.25), (2, pytest.approx(0.4))]
    assert _history(client, run_id, "test_recall_happy") == [(1, 0.5)]  # NaN skipped
    assert "note" not in run.data.metrics and "improved" not in run.data.metrics
    assert _artifacts(client, run_id) == [
        "checkpoint/model.pt",
        "confusion_test.png",
        "curves.png",
        "metrics.csv",
        "other.txt",
        "summary.json",
        "tensorboard/events.out",
    ]


def test_checkpoint_upload_can_be_turned_off(store, tmp_path):
    tracker = open_tracker(tracking_settings({"mlflow_uri": store, "log_checkpoint": False}, "exp"))
    run_id = tracker.start("r")
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "model.pt").write_bytes(b"w")
    assert tracker.log_checkpoint(tmp_path / "final") == []
    tracker.finish()
    assert _artifacts(MlflowClient(store), run_id) == []


def test_resume_continues_the_same_run(store, caplog):
    settings = tracking_settings({"mlflow_uri": store}, "exp")
    first = open_tracker(settings)
    run_id = first.start("fold1", params={"model": {"n_ctx": 8}}, tags={"dferclip.fold": "1"})
    for epoch in (1, 2):
        first.log_epoch({"train_loss": 1.0 / epoch}, step=epoch)
    first.finish("FAILED")  # the worker died; the recipe had checkpointed run_id

    again = open_tracker(settings)
    assert (
        again.start(
            "fold1", params={"model": {"n_ctx": 16, "depth": 2}}, tags={"dferclip.fold": "1"}, resume_run_id=run_id
        )
        == run_id
    )
    client = MlflowClient(store)
    assert client.get_run(run_id).info.status == "RUNNING"
    again.log_epoch({"train_loss": 0.25}, step=3)
    again.finish()

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["dferclip.restarts"] == "1"
    assert run.data.params == {"model.n_ctx": "8", "model.depth": "2"}  # MLflow params never change
    assert "param model.n_ctx is '16' now but '8'" in caplog.text
    assert _history(client, run_id, "train_loss") == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert len(client.search_runs([settings.experiment_id])) == 1


def test_resume_of_an_unknown_run_starts_a_new_one(store, caplog):
    tracker = open_tracker(tracking_settings({"mlflow_uri": store}, "exp"))
    run_id = tracker.start("fold1", resume_run_id="0" * 32)
    assert run_id != "0" * 32 and "not found" in caplog.text
    with pytest.raises(RuntimeError, match="one tracker per run"):
        tracker.start("fold1")
    with pytest.raises(ValueError, match="status must be one of"):
        tracker.finish("DONE")


def test_tracker_pickles_and_keeps_logging_to_its_run(store):
    tracker = open_tracker(tracking_settings({"mlflow_uri": store}, "exp"))
    run_id = tracker.start("r")
    tracker.log_epoch({"m": 1.0}, step=1)
    copy = pickle.loads(pickle.dumps(tracker))
    assert isinstance(copy, RunTracker) and copy.run_id == run_id and copy._client is None
    copy.log_epoch({"m": 2.0}, step=2)
    copy.finish()
    assert _history(MlflowClient(store), run_id, "m") == [(1, 1.0), (2, 2.0)]
    assert json.loads(json.dumps(tracker.settings.to_dict()))["uri"] == store


def test_nested_runs_and_closing_runs_left_open(store):
    settings = tracking_settings({"mlflow_uri": store}, "sweep-exp")
    sweep = open_tracker(settings)
    parent = sweep.start("sweep", tags={"dferclip.kind": "sweep"})
    trial_settings = settings.nested_in(parent)
    done, stopped = open_tracker(trial_settings), open_tracker(trial_settings)
    done_id, stopped_id = done.start("trial_0"), stopped.start("trial_1")
    done.finish()
    unrelated = open_tracker(settings)
    unrelated_id = unrelated.start("not in the sweep")
    assert close_open_runs(trial_settings, "KILLED") == [stopped_id]
    sweep.finish()
    client = MlflowClient(store)
    status = {r: client.get_run(r).info.status for r in (done_id, stopped_id, unrelated_id, parent)}
    assert status == {done_id: "FINISHED", stopped_id: "KILLED", unrelated_id: "RUNNING", parent: "FINISHED"}
    assert client.get_run(done_id).data.tags["mlflow.parentRunId"] == parent
    with pytest.raises(ValueError, match="give a parent run or tags"):
        close_open_runs(settings)


# Through Ray: the train stage's worker (a restart continues its run; one run per fold) in
# tests/train/test_train_stage.py, and a sweep (one nested run per trial) in tests/tune/test_sweep.py.
