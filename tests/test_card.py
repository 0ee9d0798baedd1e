"""The reproduction card (`dferclip evaluate --folds`) on shards made by the real preprocess stage
from lists in the published DFER-CLIP format: ``annotation/DFEW_set_<k>_{train,test}.txt`` with
lines ``<absolute path on the authors' machine> <num_frames> <0-indexed label>``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.errors import UserError
from tests.data.drawing import face_frames, write_frames

CLASSES = ["happiness", "sadness"]
AUTHORS = "/data/EECS-IoannisLab/datasets/DFEW/DFEW_Frame_Face"  # the lists' prefix, as published
FRAMES = 6
# clip -> (label, face drawn?, frames on disk); 00003's folder holds 2 frames, its list line says 66.
CLIPS = {
    "00001": (0, True, FRAMES),
    "00002": (0, True, FRAMES),
    "00003": (0, True, 2),
    "00004": (0, True, FRAMES),
    "00005": (1, True, FRAMES),
    "00006": (1, False, FRAMES),
    "00007": (1, True, FRAMES),
    "00008": (1, False, FRAMES),
}
TEST = {1: ["00001", "00003", "00005", "00006"], 2: ["00002", "00004", "00007", "00008"]}
LISTED_FRAMES = {"00003": 66}
GHOST = "00099"  # listed in fold 1's test list, no folder: missing from the shards


@pytest.fixture(scope="module")
def card_store(tmp_path_factory, ray_local):
    from pipeline.config import DatasetConfig, PreprocessConfig
    from pipeline.model.build import build_model
    from pipeline.model.checkpoint import save_checkpoint
    from pipeline.preprocess import run_preprocess
    from tests.micro import micro_model

    base = tmp_path_factory.mktemp("card")
    faces = base / "DFEW" / "DFEW_Frame_Face"
    for k, (clip, (_label, face, n)) in enumerate(CLIPS.items()):
        write_frames(faces / clip, face_frames(n, 200, 160, 100, face=face, seed=k))
    ann = base / "annotation"
    ann.mkdir()
    for fold in (1, 2):
        for split in ("train", "test"):
            ids = TEST[fold] if split == "test" else [c for c in CLIPS if c not in TEST[fold]]
            lines = [f"{AUTHORS}/{c} {LISTED_FRAMES.get(c, CLIPS[c][2])} {CLIPS[c][0]}" for c in ids]
            if fold == 1 and split == "test":
                lines.append(f"{AUTHORS}/{GHOST} 48 1")
            (ann / f"DFEW_set_{fold}_{split}.txt").write_text("\n".join(lines) + "\n")
    root = base / "store"
    dataset = {"name": "dfew", "classes": CLASSES, "root": str(base / "DFEW"), "annotations": str(ann)}
    run_preprocess(
        str(root),
        DatasetConfig(**dataset),
        PreprocessConfig(detector="haar", crop_size=32, num_workers=1),
        log=lambda _msg: None,
    )
    models = base / "models"
    for fold in (1, 2):
        torch.manual_seed(fold)  # two different random models: the folds' numbers differ
        model = build_model(micro_model(text_source="class_names"), CLASSES, load_weights=False)
        save_checkpoint(model, models / f"DFEW-set{fold}.pt", {"selection": "test", "fold": fold})
    cfg = {
        "name": "card",
        "storage": {"root": str(root)},
        "dataset": dataset,
        "model": {"text_source": "class_names"},
        "train": {"eval_batch_size": 4},
    }
    (base / "card.yaml").write_text(yaml.safe_dump(cfg))
    return base


def test_read_published_list_takes_the_published_line_shape():
    from pipeline.card import is_published_list, read_published_list

    text = f"{AUTHORS}/00001 144 1\n{AUTHORS}/00002 70 2\n\n"
    assert read_published_list(text, "x.txt", 1) == {"00001": 144, "00002": 70}
    ferv = "/data/EECS-IoannisLab/datasets/FERV39K/2_ClipsforFaceCrop/Action/Happy/0015 25 0\n"
    assert read_published_list(ferv, "f.txt", 3) == {"Action/Happy/0015": 25}
    # MAFW's own split files are also train.txt / test.txt: no frame counts there, not a list
    assert is_published_list(text) and is_published_list(ferv)
    assert not is_published_list("03747.mp4 anger\n") and not is_published_list("03747.mp4\tanger\tA man frowns 3\n")
    with pytest.raises(UserError, match=r"x\.txt, line 2: expected '<path> <num_frames> <label>'"):
        read_published_list(f"{AUTHORS}/00001 144 1\n{AUTHORS}/00002 sixty 2\n", "x.txt", 1)


def test_one_checkpoint_per_fold(tmp_path):
    from pipeline.card import fold_checkpoints

    for k in (1, 2):
        (tmp_path / f"run-fold{k}-a").mkdir()
        (tmp_path / f"run-fold{k}-a" / "model.pt").write_bytes(b"")
    (tmp_path / "run-fold2-b").mkdir()
    (tmp_path / "run-fold2-b" / "model.pt").write_bytes(b"")
    got = fold_checkpoints(str(tmp_path / "run-fold{fold}-a" / "model.pt"), [1, 2])
    assert got == {k: str(tmp_path / f"run-fold{k}-a" / "model.pt") for k in (1, 2)}
    with pytest.raises(UserError, match="fold 2: .* matches 2 files"):
        fold_checkpoints(str(tmp_path / "run-fold{fold}-*" / "model.pt"), [1, 2])
    with pytest.raises(UserError, match=r"put \{fold\} in the path"):
        fold_checkpoints(str(tmp_path / "run-fold1-a" / "model.pt"), [1, 2])
    with pytest.raises(UserError, match="fold 3: checkpoint not found"):
        fold_checkpoints(str(tmp_path / "run-fold{fold}-a" / "model.pt"), [3])


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_card_from_the_command(card_store):
    from stages.evaluate import cli

    args = ["--config", str(card_store / "card.yaml"), "--checkpoint", str(card_store / "models" / "DFEW-set{fold}.pt")]
    assert cli([*args, "--folds", "1,2"]) == 0
    [folder] = (card_store / "store" / "evaluate").glob("*-dfew-card-*")
    card = json.loads((folder / "card.json").read_text())
    md = (folder / "card.md").read_text()

    # results: each fold's row is its own evaluation's metrics; mean and population std by hand
    rows = card["results"]["folds"]
    assert [r["fold"] for r in rows] == [1, 2]
    for r in rows:
        metrics = json.loads((Path(r["evaluation"]) / "metrics.json").read_text())
        assert (r["uar"], r["war"], r["ece"], r["clips"]) == (
            metrics["uar"],
            metrics["war"],
            metrics["ece"],
            metrics["clips"],
        )
        assert (Path(r["evaluation"]) / "reliability.png").is_file()
    assert [r["clips"] for r in rows] == [4, 4]  # fold 1 lists 5: 00099 has no folder, no shard row
    uar = np.array([r["uar"] for r in rows])
    assert card["results"]["mean"]["uar"] == pytest.approx(uar.mean())
    assert card["results"]["std"]["uar"] == pytest.approx(uar.std(ddof=0))
    assert card["results"]["paper"] == {"uar": 59.61, "war": 71.25}
    assert "| paper | | | 59.61 | 71.25 | |" in md
    assert "Folds [1, 2] of [1, 2, 3, 4, 5]" in md

    # protocol
    p = card["protocol"]
    assert p["epoch_selection"].startswith("test-selected") and p["frames"] == [8] and p["image_size"] == [32]
    assert p["crops"]["detector"] == "haar" and p["temperature"] == [1.0]

    # data check against the lists
    lists = {li["file"]: li for li in card["data"]["published_lists"]}
    assert sorted(lists) == [f"DFEW_set_{k}_{s}.txt" for k in (1, 2) for s in ("test", "train")]
    t1 = lists["DFEW_set_1_test.txt"]
    assert (t1["listed"], t1["found"], t1["missing"]) == (5, 4, 1)
    assert t1["missing_clips"][0]["clip_id"] == GHOST and t1["missing_clips"][0]["preprocess_error"]
    assert t1["frame_mismatch_clips"] == [{"clip_id": "00003", "listed": 66, "stored": 2}]
    assert lists["DFEW_set_2_train.txt"]["frame_mismatches"] == 1  # 00003 trains in fold 2
    assert lists["DFEW_set_2_test.txt"]["frame_mismatches"] == 0 and lists["DFEW_set_2_test.txt"]["missing"] == 0
    assert "clip `00003` has 2 frames, the list says 66" in md and f"clip `{GHOST}` is missing" in md
    # face fallback per class: every happiness clip has a face, two of four sadness clips none
    fb = {f["class"]: (f["clips"], f["fallback"], f["rate"]) for f in card["data"]["face_fallback"]}
    assert fb == {"happiness": (4, 0, 0.0), "sadness": (4, 2, 0.5)}
    assert "| sadness | 4 | 2 | 50.00 |" in md

    # refused: the card needs {fold} per fold, and test splits
    assert cli([*args[:2], "--checkpoint", str(card_store / "models" / "DFEW-set1.pt"), "--folds", "1,2"]) == 2
    assert cli([*args, "--folds", "1,2", "--split", "val"]) == 2
