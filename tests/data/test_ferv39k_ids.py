"""FERV39k clip ids: unique, and the same whether the official CSVs or the published lists are read.

FERV39k numbers clips per ``<Scene>/<Emotion>`` folder, so ``0009`` is a disgust clip in
``Action/Disgust`` and a fear clip in ``Action/Fear``. The lines below are copied in the exact
format of the authors' ``annotation/FERV39K_{train,test}.txt`` (their absolute paths, their
file names, 0-indexed labels in the paper's order).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import DatasetConfig
from pipeline.data.importers import load_clip_table
from pipeline.errors import UserError

AUTHORS = "/data/EECS-IoannisLab/datasets/FERV39K/2_ClipsforFaceCrop"
TRAIN = [
    f"{AUTHORS}/Action/Disgust/0009 36 5",
    f"{AUTHORS}/Action/Fear/0009 24 6",
    f"{AUTHORS}/Experiment/Sad/0009 42 1",
    f"{AUTHORS}/Action/Happy/0267 29 0",
]
TEST = [
    f"{AUTHORS}/Action/Happy/0009 32 0",
    f"{AUTHORS}/Action/Angry/0009 24 3",
]
# The same clips as FERV39k's own setup files list them (4_setups/All_scenes).
OFFICIAL_TRAIN = (
    "Action/Disgust/0009 Disgust\nAction/Fear/0009 Fear\nExperiment/Sad/0009 Sad\nAction/Happy/0267 Happy\n"
)
OFFICIAL_TEST = "Action/Happy/0009 Happy\nAction/Angry/0009 Angry\n"


def make_ferv39k(root: Path) -> Path:
    setup = root / "4_setups" / "All_scenes"
    setup.mkdir(parents=True)
    (setup / "train_All.csv").write_text(OFFICIAL_TRAIN)
    (setup / "test_All.csv").write_text(OFFICIAL_TEST)
    for line in TRAIN + TEST:
        rel = line.split()[0].removeprefix(AUTHORS + "/")
        (root / "2_ClipsforFaceCrop" / rel).mkdir(parents=True)
    ann = root / "annotation"
    ann.mkdir()
    (ann / "FERV39K_train.txt").write_text("\n".join(TRAIN) + "\n")
    (ann / "FERV39K_test.txt").write_text("\n".join(TEST) + "\n")
    return root


def rows(table):
    return sorted((c.clip_id, c.source, c.label, c.label_name, c.splits) for c in table.clips)


def test_published_ferv39k_lists_give_the_official_importers_clip_ids(tmp_path):
    root = make_ferv39k(tmp_path)
    published = load_clip_table(DatasetConfig(name="ferv39k", root=str(root), annotations=str(root / "annotation")))
    official = load_clip_table(DatasetConfig(name="ferv39k", root=str(root)))
    assert rows(published) == rows(official)
    clips = {c.clip_id: c for c in published.clips}
    assert sorted(clips) == [
        "Action/Angry/0009",
        "Action/Disgust/0009",
        "Action/Fear/0009",
        "Action/Happy/0009",
        "Action/Happy/0267",
        "Experiment/Sad/0009",
    ]
    assert (clips["Action/Fear/0009"].label_name, clips["Action/Fear/0009"].splits) == ("fear", ("1:train",))
    assert (clips["Action/Angry/0009"].label, clips["Action/Angry/0009"].splits) == (3, ("1:test",))
    assert clips["Experiment/Sad/0009"].source == str(root / "2_ClipsforFaceCrop" / "Experiment" / "Sad" / "0009")


def test_published_ferv39k_path_too_short_for_an_id_names_the_line(tmp_path):
    ann = tmp_path / "annotation"
    ann.mkdir()
    (ann / "FERV39K_train.txt").write_text(f"{TRAIN[0]}\nHappy/0009 32 0\n")
    with pytest.raises(UserError, match=r"FERV39K_train\.txt, line 2: the clip id is the path's last 3 components"):
        load_clip_table(DatasetConfig(name="ferv39k", annotations=str(ann)))


def test_dfew_and_mafw_published_ids_stay_the_folder_name(tmp_path):
    ann = tmp_path / "annotation"
    ann.mkdir()
    (ann / "DFEW_set_1_test.txt").write_text("/data/EECS-IoannisLab/datasets/DFEW/DFEW_Frame_Face/00001 144 1\n")
    (ann / "MAFW_set_1_test.txt").write_text("/data/EECS-IoannisLab/datasets/MAFW/data/faces/00025 47 3\n")
    dfew = load_clip_table(DatasetConfig(name="dfew", annotations=str(ann)))
    mafw = load_clip_table(DatasetConfig(name="mafw", annotations=str(ann)))
    assert [(c.clip_id, c.label_name) for c in dfew.clips] == [("00001", "sadness")]
    assert [(c.clip_id, c.label_name) for c in mafw.clips] == [("00025", "anger")]
