"""Stages are entry points: each `stages/*.py` parses arguments, loads the config and calls one
`pipeline` function; the `dferclip run` runner skips, re-runs and forces stages by what they declare."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.datasets import CLASSES_7
from pipeline.errors import UserError
from pipeline.fingerprint import StageRecord, file_digest, read_record, write_record
from pipeline.llm import read_description_set
from pipeline.orchestrate import STAGES, StageSpec, run_pipeline, stage_names
from pipeline.storage import Storage
from stages import demo, describe, evaluate, run

STAGES_DIR = Path(__file__).resolve().parents[1] / "stages"
ENTRY_MAX_LINES = 25


def _imported_modules(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # a relative import inside the stages package is another stage
            names.append("stages" if node.level else node.module or "")
    return names


def test_stage_modules_are_thin_entry_points():
    modules = sorted(STAGES_DIR.glob("*.py"))
    assert len(modules) > 5
    for path in modules:
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in ("main", "cli"):
                lines = node.end_lineno - node.lineno + 1
                assert lines <= ENTRY_MAX_LINES, f"{path.name}: {node.name} has {lines} lines"
        stage_imports = [m for m in _imported_modules(tree) if m == "stages" or m.startswith("stages.")]
        assert not stage_imports, f"{path.name} imports {stage_imports}"


def _config(tmp_path: Path, **sections) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"name": "smoke", "storage": {"root": str(tmp_path / "root")}, **sections}))
    return path


def test_describe_stage_writes_the_offline_set(tmp_path):
    config = _config(tmp_path, dataset={"name": "dfew"})
    assert describe.cli(["--config", str(config), "--set", "describe.output_name=offline"]) == 0
    dset = read_description_set(tmp_path / "root" / "descriptions" / "offline.yaml")
    assert list(dset.classes) == list(CLASSES_7) and dset.provenance["source"] == "shipped"


def test_evaluate_stage_needs_exactly_one_model(tmp_path):
    config = _config(tmp_path)
    assert evaluate.cli(["--config", str(config)]) == 2
    assert evaluate.cli(["--config", str(config), "--zero-shot", "--checkpoint", str(tmp_path / "m.pt")]) == 2
    assert not (tmp_path / "root").exists()  # refused before reading or writing anything


def test_demo_stage_refuses_a_dataset_that_is_not_the_demo(tmp_path):
    assert demo.cli(["--set", "dataset.name=dfew", "--set", f"storage.root={tmp_path}"]) == 2
    assert not any(tmp_path.iterdir())


def test_run_stage_knows_the_registered_stages(tmp_path):
    assert stage_names() == ["describe", "preprocess", "train", "tune"]
    assert all(spec.paths for spec in STAGES)  # every stage says which outputs must still exist
    with pytest.raises(SystemExit):  # argparse: not a stage
        run.cli(["--config", str(_config(tmp_path)), "--force", "nope"])


# ---- the runner on small real stages: each writes a file from a source file it reads ----------


def _stage(name: str, source: Path, ran: list[str], *, after: tuple[str, ...] = (), optional: bool = False):
    def work(cfg, storage: Storage) -> dict:
        ran.append(name)
        return {"out": storage.write_text(f"{name}: {source.read_text()}", name, "out.txt"), "count": len(ran)}

    return StageSpec(name, lambda cfg: [file_digest(source)], work, paths=("out",), after=after, optional=optional)


def test_runner_skips_up_to_date_stages_and_reruns_what_changed(tmp_path):
    src_a, src_b = tmp_path / "a.txt", tmp_path / "b.txt"
    src_a.write_text("one")
    src_b.write_text("two")
    ran: list[str] = []
    stages = (
        _stage("a", src_a, ran),
        _stage("b", src_b, ran, after=("a",)),
        _stage("c", src_b, ran, after=("b",), optional=True),
    )
    cfg = load_config(None, [f"storage.root={tmp_path / 'root'}"])
    storage = Storage(cfg.storage.root)

    first = run_pipeline(cfg, stages=stages)
    assert first.ran == ["a", "b"] and first.skipped == [] and ran == ["a", "b"]
    assert storage.read_text("b", "out.txt") == "b: two"
    assert read_record(storage, "b") == first.records["b"]

    second = run_pipeline(cfg, stages=stages, storage=storage)
    assert second.ran == [] and second.skipped == ["a", "b"] and len(ran) == 2
    assert second.records == first.records

    src_a.write_text("one, edited")  # a's input changes: a and everything after it run again
    assert run_pipeline(cfg, stages=stages).ran == ["a", "b"]

    storage.delete("b", "out.txt")  # a declared output is gone: that stage alone runs again
    assert run_pipeline(cfg, stages=stages).ran == ["b"]

    forced = run_pipeline(cfg, stages=stages, force=("a",))  # same fingerprint: b stays up to date
    assert forced.ran == ["a"] and forced.skipped == ["b"]

    assert run_pipeline(cfg, stages=stages, include=("c",)).ran == ["c"]

    stale = read_record(storage, "a")  # a record that lacks a declared output is not trusted
    write_record(storage, StageRecord("a", stale.fingerprint, {"count": 1}))
    assert run_pipeline(cfg, stages=stages).ran == ["a"]

    for bad in ({"force": ("x",)}, {"include": ("y",)}):
        with pytest.raises(UserError, match="unknown stage"):
            run_pipeline(cfg, stages=stages, **bad)
