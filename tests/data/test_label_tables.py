"""Every label of every label table, against tables written out by hand from the datasets' own
documentation, and the fold of every published list file name.

- DFEW's EmoLabel_DataSplit CSVs: 1 Happy, 2 Sad, 3 Neutral, 4 Angry, 5 Surprise, 6 Disgust,
  7 Fear (the DFEW release's README).
- The published DFER-CLIP annotation lists (``<path> <num_frames> <label>``): 0-based, in the
  paper's class order: 0 happiness, 1 sadness, 2 neutral, 3 anger, 4 surprise, 5 disgust, 6 fear
  (the authors wrote DFEW's lists from its CSV labels minus one; FERV39K's list labels its
  Happy clips 0); MAFW's lists continue 7 contempt, 8 anxiety, 9 helplessness, 10
  disappointment. The fold and split come from ``..._set_<k>_<split>.txt``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import DatasetConfig
from pipeline.data.importers import DFEW_LABELS, load_clip_table
from pipeline.errors import UserError

DFEW_BY_NUMBER = {
    1: "happiness",
    2: "sadness",
    3: "neutral",
    4: "anger",
    5: "surprise",
    6: "disgust",
    7: "fear",
}
PUBLISHED_7 = {
    0: "happiness",
    1: "sadness",
    2: "neutral",
    3: "anger",
    4: "surprise",
    5: "disgust",
    6: "fear",
}
PUBLISHED_11 = {
    **PUBLISHED_7,
    7: "contempt",
    8: "anxiety",
    9: "helplessness",
    10: "disappointment",
}


def _by_id(table) -> dict:
    return {c.clip_id: c for c in table.clips}


def test_dfew_label_table_is_the_releases():
    assert DFEW_LABELS == DFEW_BY_NUMBER


def test_every_dfew_label_reaches_the_clip_table(tmp_path):
    # Clip <n> has label n, in the test split of fold 3 and the training split of the other folds.
    for split in ("train", "test"):
        d = tmp_path / "EmoLabel_DataSplit" / f"{split}(single-labeled)"
        d.mkdir(parents=True)
        for fold in range(1, 6):
            rows = "".join(f"{n},{n}\n" for n in DFEW_BY_NUMBER) if (split == "test") == (fold == 3) else ""
            (d / f"set_{fold}.csv").write_text("video_name,label\n" + rows)
    clips = _by_id(load_clip_table(DatasetConfig(name="dfew", root=str(tmp_path))))
    for n, name in DFEW_BY_NUMBER.items():
        clip = clips[f"{n:05d}"]
        assert (clip.label_name, clip.label) == (name, n - 1), n  # label index = position in the class order
        assert clip.splits == ("1:train", "2:train", "3:test", "4:train", "5:train")


def _write_lists(folder: Path, prefix: str, labels: dict[int, str]) -> None:
    # Clip <prefix><n> (label n) is in the test list of fold (n % 5) + 1 and the train list of the others.
    folder.mkdir(exist_ok=True)
    for fold in range(1, 6):
        for split in ("train", "test"):
            lines = [
                f"/data/{prefix}/frames/{prefix}{n:03d} 16 {n}"
                for n in labels
                if (split == "test") == (fold == n % 5 + 1)
            ]
            (folder / f"{prefix}_set_{fold}_{split}.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("dataset, labels", [("dfew", PUBLISHED_7), ("mafw", PUBLISHED_11)])
def test_published_lists_map_every_label_and_fold(tmp_path, dataset, labels):
    ann = tmp_path / "annotation"
    _write_lists(ann, dataset.upper(), labels)
    clips = _by_id(load_clip_table(DatasetConfig(name=dataset, annotations=str(ann))))
    assert len(clips) == len(labels)
    for n, name in labels.items():
        clip = clips[f"{dataset.upper()}{n:03d}"]
        assert clip.label_name == name, n
        test_fold = n % 5 + 1
        expected = tuple(f"{k}:{'test' if k == test_fold else 'train'}" for k in range(1, 6))
        assert clip.splits == expected, n


@pytest.mark.parametrize("label", [-1, 7])
def test_published_dfew_labels_outside_0_to_6_are_refused(tmp_path, label):
    ann = tmp_path / "annotation"
    ann.mkdir()
    (ann / "DFEW_set_2_train.txt").write_text(f"/data/DFEW/00001 16 0\n/data/DFEW/00002 16 {label}\n")
    with pytest.raises(UserError) as err:
        load_clip_table(DatasetConfig(name="dfew", annotations=str(ann)))
    assert str(err.value) == (
        f"{ann / 'DFEW_set_2_train.txt'}, line 2: label must be 0..6 (0-indexed, paper order), got {label}"
    )


def test_a_list_named_by_split_only_is_fold_1(tmp_path):
    ann = tmp_path / "annotation"
    ann.mkdir()
    (ann / "dfew_train.txt").write_text("/data/DFEW/00001 16 6\n")
    (ann / "dfew_test.txt").write_text("/data/DFEW/00002 16 3\n")
    clips = _by_id(load_clip_table(DatasetConfig(name="dfew", annotations=str(ann))))
    assert (clips["00001"].label_name, clips["00001"].splits) == ("fear", ("1:train",))
    assert (clips["00002"].label_name, clips["00002"].splits) == ("anger", ("1:test",))
