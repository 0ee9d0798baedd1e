"""The importers' refusals and edge rules, each with its exact message naming the file and line
(or row), on small trees in each benchmark's layout (docs/datasets.md): a missing header, no split
files, a line too short, a clip labelled two ways, the published lists' file names and line shape,
MAFW's compound and unknown labels, non-UTF-8 text, and what the clip table's hash depends on."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import DatasetConfig
from pipeline.data.importers import ClipEntry, clips_from_records, load_clip_table
from pipeline.datasets import CLASSES_7
from pipeline.errors import UserError


def _message(dataset: DatasetConfig) -> str:
    with pytest.raises(UserError) as err:
        load_clip_table(dataset)
    return str(err.value)


def _dfew_csv(root: Path, fold: int, split: str, body: str) -> Path:
    d = root / "EmoLabel_DataSplit" / f"{split}(single-labeled)"
    d.mkdir(parents=True, exist_ok=True)
    f = d / f"set_{fold}.csv"
    f.write_text(body)
    return f


# ---- DFEW ------------------------------------------------------------------------------------


def test_dfew_header_and_missing_files(tmp_path):
    (tmp_path / "EmoLabel_DataSplit").mkdir()
    assert _message(DatasetConfig(name="dfew", root=str(tmp_path))) == (
        f"{tmp_path / 'EmoLabel_DataSplit'}: no '{{train,test}}(single-labeled)/set_N.csv' files"
    )
    f = _dfew_csv(tmp_path, 2, "test", "name,emotion\n1,1\n")
    assert _message(DatasetConfig(name="dfew", root=str(tmp_path))) == (
        f"{f}: expected header video_name,label, got ['name', 'emotion']"
    )
    f.write_text("video_name,label\n1,8\n")
    assert _message(DatasetConfig(name="dfew", root=str(tmp_path))) == f"{f}, row 2: label must be 1..7, got '8'"
    f.write_text("video_name,label\n1,0\n")
    assert _message(DatasetConfig(name="dfew", root=str(tmp_path))) == f"{f}, row 2: label must be 1..7, got '0'"


def test_dfew_a_clip_labelled_two_ways_is_refused(tmp_path):
    _dfew_csv(tmp_path, 1, "train", "video_name,label\n7,1\n")
    f = _dfew_csv(tmp_path, 2, "test", "video_name,label\n7,2\n")
    assert _message(DatasetConfig(name="dfew", root=str(tmp_path))) == (
        f"{f}, row 2: clip '00007' is labelled 'sadness' here but 'happiness' elsewhere"
    )


def test_dfew_ids_sources_and_split_order(tmp_path):
    # Listed test-first and fold 5 before 1: the memberships come out sorted by fold, then split.
    _dfew_csv(tmp_path, 5, "test", "video_name,label\n12,7\n")
    _dfew_csv(tmp_path, 1, "train", "video_name,label\n12,7\nclip_b,3\n")
    (tmp_path / "Clip" / "original").mkdir(parents=True)
    (tmp_path / "Clip" / "original" / "clip_b.avi").write_bytes(b"")
    t = load_clip_table(DatasetConfig(name="dfew", root=str(tmp_path)))
    clips = {c.clip_id: c for c in t.clips}
    assert [c.clip_id for c in t.clips] == ["00012", "clip_b"]
    assert clips["00012"].splits == ("1:train", "5:test") and clips["00012"].label_name == "fear"
    # neither frames nor a video: the frame folder it would be, zero-padded as released
    assert clips["00012"].source == str(tmp_path / "Clip" / "clip_224x224" / "00012")
    assert clips["clip_b"].source == str(tmp_path / "Clip" / "original" / "clip_b.avi")
    assert clips["clip_b"].label == 2 and clips["clip_b"].label_name == "neutral"
    assert t.annotation_files == [
        str(tmp_path / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_1.csv"),
        str(tmp_path / "EmoLabel_DataSplit" / "test(single-labeled)" / "set_5.csv"),
    ]


def test_dfew_class_subset_note(tmp_path):
    _dfew_csv(tmp_path, 1, "train", "video_name,label\n1,1\n2,7\n3,7\n4,4\n")
    t = load_clip_table(DatasetConfig(name="dfew", root=str(tmp_path), classes=["happiness", "anger"]))
    assert [(c.clip_id, c.label) for c in t.clips] == [("00001", 0), ("00004", 1)]
    assert t.notes == [
        "skipped 2 clip(s) labelled 'fear' (not in the configured classes)",
    ]


# ---- FERV39k ---------------------------------------------------------------------------------


def _ferv(root: Path, train: str, test: str = "") -> Path:
    d = root / "4_setups" / "All_scenes"
    d.mkdir(parents=True)
    (d / "train_All.csv").write_text(train)
    (d / "test_All.csv").write_text(test)
    return d


def test_ferv39k_lines(tmp_path):
    d = _ferv(tmp_path, "path label\nAction/Happy/0001 Happy\n\nAction/Sad/0002,Sad\n", "Action/Happy/0001 Happy\n")
    t = load_clip_table(DatasetConfig(name="ferv39k", root=str(tmp_path)))
    assert [(c.clip_id, c.label_name, c.splits) for c in t.clips] == [
        ("Action/Happy/0001", "happiness", ("1:test", "1:train")),
        ("Action/Sad/0002", "sadness", ("1:train",)),
    ]
    assert t.clips[0].source == str(tmp_path / "2_ClipsforFaceCrop" / "Action" / "Happy" / "0001")
    (d / "train_All.csv").write_text("Action/Happy/0001\n")
    assert _message(DatasetConfig(name="ferv39k", root=str(tmp_path))) == (
        f"{d / 'train_All.csv'}, line 1: expected '<Scene>/<Emotion>/<id> <Emotion>', got 'Action/Happy/0001'"
    )
    # only the first line may be a header, and only without a '/'
    (d / "train_All.csv").write_text("Action/Happy/0001 Happy\npath label\n")
    assert _message(DatasetConfig(name="ferv39k", root=str(tmp_path))) == (
        f"{d / 'train_All.csv'}, line 2: unknown emotion 'label' (expected one of Angry, Disgust, Fear, Happy, "
        "Neutral, Sad, Surprise)"
    )
    (d / "train_All.csv").write_text("a/b label\n")
    assert _message(DatasetConfig(name="ferv39k", root=str(tmp_path))).startswith(
        f"{d / 'train_All.csv'}, line 1: unknown emotion 'label'"
    )


# ---- MAFW ------------------------------------------------------------------------------------


def _mafw(root: Path, body: str, fold: int = 1, split: str = "train") -> Path:
    d = root / "Train & Test Set" / "single" / "no_caption" / f"set_{fold}"
    d.mkdir(parents=True, exist_ok=True)
    f = d / f"{split}.txt"
    f.write_text(body)
    return f


def test_mafw_lines(tmp_path):
    f = _mafw(tmp_path, "00001.mp4 anger\n\n00002.mp4 Surprised\n00003.mp4 anger_disgust\n00004.mp4 sad_x\n")
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "00002.mp4").write_bytes(b"")
    t = load_clip_table(DatasetConfig(name="mafw", root=str(tmp_path)))
    assert [(c.clip_id, c.label_name) for c in t.clips] == [("00001", "anger"), ("00002", "surprise")]
    assert t.clips[0].source == str(tmp_path / "data" / "clips" / "00001.mp4")  # not found: the release layout
    assert t.clips[1].source == str(tmp_path / "clips" / "00002.mp4")
    assert t.notes == ["skipped 2 compound-label line(s) (MAFW's compound task)"]
    f.write_text("00001.mp4 bored\n")
    assert _message(DatasetConfig(name="mafw", root=str(tmp_path))) == (
        f"{f}, line 1: unknown label 'bored' (classes: happiness, sadness, neutral, anger, surprise, disgust, "
        "fear, contempt, anxiety, helplessness, disappointment)"
    )
    f.write_text("00001.mp4\n")
    assert _message(DatasetConfig(name="mafw", root=str(tmp_path))) == (
        f"{f}, line 1: expected '<clip>.mp4 <label>', got '00001.mp4'"
    )
    f.unlink()
    assert _message(DatasetConfig(name="mafw", root=str(tmp_path))) == (
        f"{tmp_path / 'Train & Test Set' / 'single' / 'no_caption'}: no set_N/{{train,test}}.txt files"
    )


def test_mafw_gbk_captions(tmp_path):
    d = tmp_path / "Train & Test Set" / "single" / "with_caption" / "set_2"
    d.mkdir(parents=True)
    (d / "test.txt").write_bytes("00005.mp4\tfear\t他很害怕\n".encode("gbk"))
    t = load_clip_table(DatasetConfig(name="mafw", root=str(tmp_path)))
    assert [(c.clip_id, c.label_name, c.splits) for c in t.clips] == [("00005", "fear", ("2:test",))]


# ---- the published lists ---------------------------------------------------------------------


def test_published_list_errors(tmp_path):
    ann = tmp_path / "annotation"
    missing = tmp_path / "nope"
    assert _message(DatasetConfig(name="dfew", annotations=str(missing))) == (
        f"dataset.annotations not found: {missing}"
    )
    ann.mkdir()
    assert _message(DatasetConfig(name="dfew", annotations=str(ann))) == (
        f"dataset.annotations: no .txt lists in {ann}"
    )
    f = ann / "DFEW_all.txt"
    f.write_text("/x/00001 16 0\n")
    assert _message(DatasetConfig(name="dfew", annotations=str(ann))) == (
        f"{f}: cannot tell the split from the file name (expected ..._set_N_train.txt or ..._train.txt)"
    )
    f.unlink()
    f = ann / "DFEW_set_3_TEST.txt"
    for line in ("/x/00001 16", "/x/00001 16 happy", "/x/00001 16 -1"):
        f.write_text(line + "\n")
        expected = (
            f"{f}, line 1: label must be 0..6 (0-indexed, paper order), got -1"
            if line.endswith("-1")
            else f"{f}, line 1: expected '<path> <num_frames> <label>', got {line!r}"
        )
        assert _message(DatasetConfig(name="dfew", annotations=str(ann))) == expected
    # FERV39k ids are the last three components
    g = ann / "FERV39K_train.txt"
    g.write_text("Happy/0001 16 0\n")
    assert _message(DatasetConfig(name="ferv39k", annotations=str(g))) == (
        f"{g}, line 1: the clip id is the path's last 3 components, got 'Happy/0001'"
    )


def test_published_lists_folds_ids_and_sources(tmp_path):
    ann = tmp_path / "annotation"
    ann.mkdir()
    (ann / "DFEW_set_3_TEST.txt").write_text("\n/home/a/DFEW/Frame/00009 16 6\n")
    (ann / "DFEW_set_3_train.txt").write_text("/home/a/DFEW/Frame/00010 16 1\n")
    (ann / "notes.md").write_text("not a list\n")
    (tmp_path / "Frame" / "00010").mkdir(parents=True)
    t = load_clip_table(DatasetConfig(name="dfew", root=str(tmp_path), annotations=str(ann)))
    assert [(c.clip_id, c.label_name, c.splits) for c in t.clips] == [
        ("00009", "fear", ("3:test",)),
        ("00010", "sadness", ("3:train",)),
    ]
    # found below dataset.root by its trailing components; not found: the last component there
    assert t.clips[1].source == str(tmp_path / "Frame" / "00010")
    assert t.clips[0].source == str(tmp_path / "00009")
    # without a root the authors' path is kept as written
    t = load_clip_table(DatasetConfig(name="dfew", annotations=str(ann)))
    assert t.clips[0].source == "/home/a/DFEW/Frame/00009"
    # a folder holding several datasets' lists: only this dataset's are read
    (ann / "MAFW_set_3_train.txt").write_text("/m/00001 16 10\n")
    assert len(load_clip_table(DatasetConfig(name="dfew", annotations=str(ann))).clips) == 2


# ---- CSV and in-memory records ---------------------------------------------------------------


def test_csv_needs_a_listing_and_names_empty_paths(tmp_path):
    assert _message(DatasetConfig(name="csv")) == "dataset.annotations: set it to the CSV listing path,label[,split]"
    f = tmp_path / "labels.csv"
    f.write_text("Path, Label\n , anger\n")
    assert _message(DatasetConfig(name="csv", annotations=str(f))) == f"{f}, row 2: empty path"
    f.write_text("path,label\na.mp4,bored\n")
    assert _message(DatasetConfig(name="csv", annotations=str(f))) == (
        f"{f}, row 2: unknown label 'bored' (classes: {', '.join(CLASSES_7)})"
    )
    # synonyms and case: "Surprised" is surprise; a URI path is kept as written
    f.write_text("path,label,split\ns3://b/a.mp4,Surprised,TEST\n")
    (clip,) = load_clip_table(DatasetConfig(name="csv", annotations=str(f))).clips
    assert (clip.source, clip.label_name, clip.splits) == ("s3://b/a.mp4", "surprise", ("1:test",))


def test_the_unsplit_csv_rows_split_about_one_in_five_to_test(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("path,label\n" + "".join(f"c{i}.mp4,anger\n" for i in range(400)))
    t = load_clip_table(DatasetConfig(name="csv", annotations=str(f)))
    test = sum(c.splits == ("1:test",) for c in t.clips)
    assert 50 <= test <= 110  # 20 % of 400 is 80; the hash keeps it stable, not exact
    assert [c.splits for c in t.clips] == [
        c.splits for c in load_clip_table(DatasetConfig(name="csv", annotations=str(f))).clips
    ]


def test_records_with_entries_indices_and_bad_labels():
    entry = ClipEntry("given", "/x/given.mp4", 1, "sadness", ("1:train",))
    t = clips_from_records(
        [entry, {"path": "/x/a.mp4", "label": 6, "clip_id": "a", "splits": ["2:test", "1:train"]}],
        "demo",
        list(CLASSES_7),
    )
    assert [c.clip_id for c in t.clips] == ["a", "given"]
    assert t.clips[0] == ClipEntry("a", "/x/a.mp4", 6, "fear", ("1:train", "2:test"))
    with pytest.raises(UserError) as err:
        clips_from_records([{"path": "/x/a", "label": 7}], "demo", list(CLASSES_7))
    assert str(err.value) == f"clips[0]: unknown label 7 (classes: {', '.join(CLASSES_7)})"


def test_the_inputs_hash_follows_the_files_and_the_clips(tmp_path):
    _dfew_csv(tmp_path, 1, "train", "video_name,label\n1,1\n")
    cfg = DatasetConfig(name="dfew", root=str(tmp_path))
    first = load_clip_table(cfg).inputs_hash()
    assert len(first) == 16 and load_clip_table(cfg).inputs_hash() == first
    _dfew_csv(tmp_path, 1, "train", "video_name,label\n1,1\n\n")  # same clips, other bytes
    assert load_clip_table(cfg).inputs_hash() != first
    (tmp_path / "Clip" / "original").mkdir(parents=True)
    second = load_clip_table(cfg).inputs_hash()
    (tmp_path / "Clip" / "original" / "00001.mp4").write_bytes(b"")  # same file, another source
    assert load_clip_table(cfg).inputs_hash() != second
    table = load_clip_table(cfg)
    table.classes = ["happiness"]
    assert table.inputs_hash() != load_clip_table(cfg).inputs_hash()


# ---- what each importer records, and labels that disagree --------------------------------------


def test_each_table_names_its_dataset_and_keeps_other_classes_as_notes(tmp_path):
    d = tmp_path / "ferv"
    _ferv(d, "A/Happy/1 Happy\nA/Fear/2 Fear\n")
    t = load_clip_table(DatasetConfig(name="ferv39k", root=str(d), classes=["happiness"]))
    assert t.dataset == "ferv39k" and [c.clip_id for c in t.clips] == ["A/Happy/1"]
    assert t.notes == ["skipped 1 clip(s) labelled 'fear' (not in the configured classes)"]
    m = tmp_path / "mafw"
    _mafw(m, "00001.mp4 anger\n00002.mp4 contempt\n")
    _mafw(m, "00003.mp4 anger\n", fold=6)  # MAFW has folds 1..5: a set_6 is not read
    _mafw(m, "00004.mp4 anger\n", fold=0)
    t = load_clip_table(DatasetConfig(name="mafw", root=str(m), classes=["anger", "fear"]))
    assert t.dataset == "mafw" and [c.clip_id for c in t.clips] == ["00001"]
    assert t.notes == ["skipped 1 clip(s) labelled 'contempt' (not in the configured classes)"]
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "DFEW_set_1_train.txt").write_text("/x/00001 16 0\n/x/00002 16 6\n")
    t = load_clip_table(DatasetConfig(name="dfew", annotations=str(ann), classes=["fear"]))
    assert t.dataset == "dfew" and [(c.clip_id, c.label) for c in t.clips] == [("00002", 0)]
    assert t.notes == ["skipped 1 clip(s) labelled 'happiness' (not in the configured classes)"]
    _dfew_csv(tmp_path / "dfew", 1, "train", "video_name,label\n1,1\n")
    assert load_clip_table(DatasetConfig(name="dfew", root=str(tmp_path / "dfew"))).dataset == "dfew"
    f = tmp_path / "labels.csv"
    f.write_text("path,label\na.mp4,anger\n")
    assert load_clip_table(DatasetConfig(name="csv", annotations=str(f))).dataset == "csv"
    assert clips_from_records([], "demo", ["a"]).dataset == "demo"


def test_a_clip_labelled_two_ways_names_the_line(tmp_path):
    d = _ferv(tmp_path / "ferv", "A/B/1 Happy\n", "A/B/1 Sad\n")
    assert _message(DatasetConfig(name="ferv39k", root=str(tmp_path / "ferv"))) == (
        f"{d / 'test_All.csv'}, line 1: clip 'A/B/1' is labelled 'sadness' here but 'happiness' elsewhere"
    )
    _mafw(tmp_path / "mafw", "00001.mp4 anger\n")
    f = _mafw(tmp_path / "mafw", "00001.mp4 fear\n", split="test")
    assert _message(DatasetConfig(name="mafw", root=str(tmp_path / "mafw"))) == (
        f"{f}, line 1: clip '00001' is labelled 'fear' here but 'anger' elsewhere"
    )
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "DFEW_set_1_train.txt").write_text("/x/00001 16 0\n")
    (ann / "DFEW_set_1_test.txt").write_text("/x/00001 16 1\n")
    assert _message(DatasetConfig(name="dfew", annotations=str(ann))) == (
        f"{ann / 'DFEW_set_1_train.txt'}, line 1: clip '00001' is labelled 'happiness' here but 'sadness' elsewhere"
    )
    with pytest.raises(UserError) as err:
        clips_from_records(
            [{"path": "/x/a", "label": 0, "clip_id": "c"}, {"path": "/x/b", "label": 1, "clip_id": "c"}],
            "demo",
            list(CLASSES_7),
        )
    assert str(err.value) == "clips[1]: clip 'c' is labelled 'sadness' here but 'happiness' elsewhere"
