"""Names that become paths follow one rule (pipeline.names), and Storage never joins a part that
would leave its root: `name: ../../x` or `/tmp/x` cannot put run folders outside storage.root."""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.names import MAX_NAME_LENGTH, check_name, name_problem, to_name
from pipeline.storage import Storage
from pipeline.typed import ConfigError
from tests.micro import micro_model


@pytest.mark.parametrize("bad", ["../../x", "/tmp/x", "a/b", "..", ".hidden", "-x", "", "a b", "x" * 101])
def test_the_rule_refuses_what_is_not_one_plain_path_component(bad):
    assert name_problem(bad) is not None
    with pytest.raises(UserError, match=r"^tune\.name: "):
        check_name(bad, "tune.name")


@pytest.mark.parametrize("good", ["dfew", "sweep-dfew", "exp_1.v2", "A", "x" * MAX_NAME_LENGTH])
def test_the_rule_accepts_plain_names(good):
    assert name_problem(good) is None and check_name(good, "name") == good


@pytest.mark.parametrize("key", ["name", "tune.name", "describe.output_name"])
@pytest.mark.parametrize("value", ["../../x", "/tmp/x"])
def test_config_names_that_would_leave_the_storage_root_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}={value}"])
    assert err.value.problems == [
        f"{key}: use letters, digits, '.', '_' or '-', starting with a letter or digit; got {value!r}"
    ]


@pytest.mark.parametrize(
    "parts, why",
    [
        (("..",), "has a '..' component"),
        (("train", "../../x"), "has a '..' component"),
        (("a/../../b",), "has a '..' component"),
        (("/tmp/x",), "is absolute"),
        (("train", "/tmp/x"), "is absolute"),
        (("s3://bucket/x",), "is absolute"),
    ],
)
def test_storage_refuses_parts_outside_its_root(tmp_path, parts, why):
    storage = Storage(tmp_path / "root")
    for method in (storage.path, storage.uri, storage.child, storage.exists, storage.makedirs):
        with pytest.raises(ValueError, match=f"storage path part {parts[-1]!r} {why}"):
            method(*parts)
    with pytest.raises(ValueError, match=why):
        storage.write_text("x", *parts, "f.txt")
    assert not (tmp_path / "x").exists() and not (tmp_path / "root").exists()


def test_storage_still_joins_relative_paths(tmp_path):
    storage = Storage(tmp_path)
    assert storage.path("shards/dfew", "part-1.parquet") == f"{tmp_path}/shards/dfew/part-1.parquet"
    assert storage.child("tune", "s").uri() == f"{tmp_path}/tune/s"
    assert storage.path("a..b", ".lock") == f"{tmp_path}/a..b/.lock"  # '..' only as a whole component


def test_made_up_labels_become_valid_names():
    assert to_name("zeroshot-ViT-B/32", "model") == "zeroshot-ViT-B-32"
    assert to_name("../..", "model") == "model"
    assert name_problem(to_name("x" * 300, "model")) is None


def test_sweep_and_shard_folders_check_their_names():
    from pipeline.data.shards import shard_dir
    from pipeline.tune.sweep import sweep_rel

    with pytest.raises(UserError, match="tune.name"):
        sweep_rel("../x")
    with pytest.raises(UserError, match="dataset.name"):
        shard_dir(Storage("."), "../x")


def test_resume_by_name_refuses_a_path(tmp_path):
    from pipeline.train.experiment import resume_run

    with pytest.raises(UserError, match=r"^--resume: "):
        resume_run("../../etc", root=str(tmp_path))


def test_evaluate_refuses_a_checkpoint_whose_run_name_is_a_path(tmp_path):
    from pipeline.evaluate import run_evaluate
    from pipeline.model import build_model, save_checkpoint

    model = build_model(micro_model(), ["happiness", "fear"], {"happiness": ["a smile"], "fear": ["wide eyes"]})
    path = save_checkpoint(model, tmp_path / "ckpt" / "model.pt", extra={"run_name": "../../../escaped"})
    cfg = load_config(None, [f"storage.root={tmp_path / 'root'}"])
    with pytest.raises(UserError) as err:
        run_evaluate(cfg, checkpoint=str(path))
    assert str(path) in str(err.value) and "run_name" in str(err.value) and "'../../../escaped'" in str(err.value)
    assert not (tmp_path / "escaped").exists()
