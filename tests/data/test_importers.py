"""Importers on generated trees in each benchmark's real layout (no copies of the datasets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import DatasetConfig
from pipeline.data.importers import clips_from_records, load_clip_table
from pipeline.datasets import CLASSES_7, CLASSES_11
from pipeline.errors import UserError


def by_id(table):
    return {c.clip_id: c for c in table.clips}


def make_dfew(root: Path) -> Path:
    # Clip 1 is test in fold 1 and train elsewhere; clip 2 the opposite pattern for fold 2.
    for fold in range(1, 6):
        for split in ("train", "test"):
            d = root / "EmoLabel_DataSplit" / f"{split}(single-labeled)"
            d.mkdir(parents=True, exist_ok=True)
            rows = []
            if (split == "test") == (fold == 1):
                rows.append("1,1")  # Happy
            if (split == "test") == (fold == 2):
                rows.append("2,7")  # Fear
            (d / f"set_{fold}.csv").write_text("video_name,label\n" + "\n".join(rows) + "\n")
    (root / "Clip" / "clip_224x224" / "00001").mkdir(parents=True)
    (root / "Clip" / "original").mkdir(parents=True)
    (root / "Clip" / "original" / "00002.mp4").write_bytes(b"")
    return root


def test_dfew_folds_labels_sources(tmp_path):
    t = load_clip_table(DatasetConfig(name="dfew", root=str(make_dfew(tmp_path))))
    clips = by_id(t)
    assert set(clips) == {"00001", "00002"}
    a, b = clips["00001"], clips["00002"]
    assert (a.label_name, a.label, b.label_name, b.label) == ("happiness", 0, "fear", 6)
    assert a.splits == ("1:test", "2:train", "3:train", "4:train", "5:train")
    assert b.splits == ("1:train", "2:test", "3:train", "4:train", "5:train")
    assert a.source.endswith("clip_224x224/00001") and b.source.endswith("original/00002.mp4")
    assert len(t.annotation_files) == 10 and len(t.inputs_hash()) == 16


def test_dfew_bad_label_names_file_and_row(tmp_path):
    make_dfew(tmp_path)
    f = tmp_path / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_3.csv"
    f.write_text("video_name,label\n1,1\n5,9\n")
    with pytest.raises(UserError, match=r"set_3\.csv, row 3: label must be 1\.\.7"):
        load_clip_table(DatasetConfig(name="dfew", root=str(tmp_path)))


def test_dfew_class_subset_drops_other_clips(tmp_path):
    t = load_clip_table(DatasetConfig(name="dfew", root=str(make_dfew(tmp_path)), classes=["fear", "happiness"]))
    clips = by_id(t)
    assert clips["00002"].label == 0 and clips["00001"].label == 1
    t = load_clip_table(DatasetConfig(name="dfew", root=str(tmp_path), classes=["fear"]))
    assert list(by_id(t)) == ["00002"] and any("happiness" in n for n in t.notes)


def test_ferv39k(tmp_path):
    setup = tmp_path / "4_setups" / "All_scenes"
    setup.mkdir(parents=True)
    (setup / "train_All.csv").write_text("Action/Angry/0063 Angry\nAction/Happy/0001 Happy\n")
    (setup / "test_All.csv").write_text("Daily/Surprise/0100 Surprise\n")
    t = load_clip_table(DatasetConfig(name="ferv39k", root=str(tmp_path)))
    clips = by_id(t)
    assert clips["Action/Angry/0063"].label_name == "anger" and clips["Action/Angry/0063"].splits == ("1:train",)
    assert clips["Daily/Surprise/0100"].splits == ("1:test",) and clips["Daily/Surprise/0100"].label == 4
    assert clips["Action/Happy/0001"].source.endswith("2_ClipsforFaceCrop/Action/Happy/0001")
    (setup / "test_All.csv").write_text("Daily/Surprise/0100 Bored\n")
    with pytest.raises(UserError, match=r"test_All\.csv, line 1: unknown emotion 'Bored'"):
        load_clip_table(DatasetConfig(name="ferv39k", root=str(tmp_path)))


def make_mafw(root: Path, caption: bool = False) -> Path:
    variant = "with_caption" if caption else "no_caption"
    for fold in range(1, 6):
        d = root / "Train & Test Set" / "single" / variant / f"set_{fold}"
        d.mkdir(parents=True)
        lines = {
            "train": ["03747.mp4 anger", "00010.mp4 helplessness", "00011.mp4 anger_disgust"],
            "test": ["00020.mp4 contempt"],
        }
        for split, rows in lines.items():
            if caption:
                text = "\n".join(f"{r.split()[0]}\t{r.split()[1]}\t一个人皱着眉头" for r in rows) + "\n"
                (d / f"{split}.txt").write_bytes(text.encode("gbk"))
            else:
                (d / f"{split}.txt").write_text("\n".join(rows) + "\n")
    (root / "data" / "clips").mkdir(parents=True)
    (root / "data" / "clips" / "03747.mp4").write_bytes(b"")
    return root


@pytest.mark.parametrize("caption", [False, True])
def test_mafw_single_and_captions(tmp_path, caption):
    t = load_clip_table(DatasetConfig(name="mafw", root=str(make_mafw(tmp_path, caption))))
    clips = by_id(t)
    assert set(clips) == {"03747", "00010", "00020"}  # the compound label is not an 11-class clip
    assert clips["00010"].label == CLASSES_11.index("helplessness") == 9
    assert clips["00020"].label_name == "contempt" and clips["00020"].splits[0] == "1:test"
    assert clips["03747"].source.endswith("data/clips/03747.mp4")
    assert any("compound" in n for n in t.notes)


def test_published_lists(tmp_path):
    ann = tmp_path / "annotation"
    ann.mkdir()
    (tmp_path / "DFEW_Frame_Face" / "02522").mkdir(parents=True)
    # The published lists' shape: absolute paths from the authors' machine, 0-indexed labels.
    (ann / "DFEW_set_1_train.txt").write_text("/data/x/DFEW_Frame_Face/02522 66 4\n")
    (ann / "DFEW_set_1_test.txt").write_text("/data/x/DFEW_Frame_Face/00007 30 0\n")
    (ann / "MAFW_set_1_train.txt").write_text("/data/x/MAFW/00001 30 10\n")
    t = load_clip_table(DatasetConfig(name="dfew", root=str(tmp_path), annotations=str(ann)))
    clips = by_id(t)
    assert clips["02522"].label_name == "surprise" and clips["02522"].splits == ("1:train",)
    assert clips["02522"].source == str(tmp_path / "DFEW_Frame_Face" / "02522")
    assert clips["00007"].label_name == "happiness" and clips["00007"].splits == ("1:test",)
    m = load_clip_table(DatasetConfig(name="mafw", annotations=str(ann / "MAFW_set_1_train.txt")))
    assert m.clips[0].label_name == "disappointment"
    (ann / "DFEW_set_1_test.txt").write_text("/data/x/DFEW_Frame_Face/00007 30 7\n")
    with pytest.raises(UserError, match=r"DFEW_set_1_test\.txt, line 1: label must be 0\.\.6"):
        load_clip_table(DatasetConfig(name="dfew", annotations=str(ann)))


def test_csv_relative_paths_labels_splits(tmp_path):
    (tmp_path / "clips").mkdir()
    f = tmp_path / "clips" / "labels.csv"
    f.write_text("path,label,split\na.mp4,anger,train\nsub/b,Fear,test\n/abs/c.mp4,happiness,\n")
    t = load_clip_table(DatasetConfig(name="csv", annotations=str(f)))
    clips = by_id(t)
    assert clips["a.mp4"].source == str(tmp_path / "clips" / "a.mp4")
    assert clips["sub/b"].label_name == "fear" and clips["sub/b"].splits == ("1:test",)
    assert clips["/abs/c.mp4"].source == "/abs/c.mp4" and clips["/abs/c.mp4"].splits[0] in ("1:train", "1:test")
    # demo: same layout, labels.csv found below dataset.root
    d = load_clip_table(DatasetConfig(name="demo", root=str(tmp_path / "clips")))
    assert [c.clip_id for c in d.clips] == [c.clip_id for c in t.clips]
    # a configured class list
    t2 = load_clip_table(DatasetConfig(name="csv", annotations=str(f), classes=["fear", "anger", "happiness"]))
    assert by_id(t2)["a.mp4"].label == 1


@pytest.mark.parametrize(
    "body, message",
    [
        ("path,label\na.mp4,bored\n", r"labels\.csv, row 2: unknown label 'bored'"),
        ("path,label\na.mp4,anger\na.mp4,fear\n", r"row 3: 'a\.mp4' is listed twice"),
        ("path,label,split\na.mp4,anger,val\n", r"row 2: split must be train or test"),
        ("file,emotion\na.mp4,anger\n", r"header with columns path,label"),
    ],
)
def test_csv_errors_name_file_and_row(tmp_path, body, message):
    (tmp_path / "labels.csv").write_text(body)
    with pytest.raises(UserError, match=message):
        load_clip_table(DatasetConfig(name="csv", root=str(tmp_path)))


def test_clips_from_records_and_missing_root():
    t = clips_from_records(
        [{"path": "/x/a.mp4", "label": "anger", "split": "test"}, {"path": "/x/b", "label": 0}], "demo", list(CLASSES_7)
    )
    clips = by_id(t)
    assert clips["/x/a.mp4"].label == 3 and clips["/x/a.mp4"].splits == ("1:test",)
    assert clips["/x/b"].label_name == "happiness"
    with pytest.raises(UserError, match="dataset.root"):
        load_clip_table(DatasetConfig(name="dfew"))


# --- dataset roots given as URIs: every file read and folder listed through pyarrow.fs ---------
# file:// URIs take the same code path as s3:// (pyarrow's LocalFileSystem behind a URI), so a
# folder whose name needs percent-encoding checks the round trip URI -> pyarrow path -> URI.


def _opens(location: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def test_dfew_root_uri_gives_uri_sources_and_hashes_through_the_filesystem(tmp_path):
    root = make_dfew(tmp_path / "DF EW data")
    uri = root.as_uri()  # file:///.../DF%20EW%20data
    t = load_clip_table(DatasetConfig(name="dfew", root=uri))
    local = load_clip_table(DatasetConfig(name="dfew", root=str(root)))
    clips = by_id(t)
    assert [(c.clip_id, c.splits, c.label) for c in t.clips] == [(c.clip_id, c.splits, c.label) for c in local.clips]
    assert clips["00001"].source == f"{uri}/Clip/clip_224x224/00001"
    assert clips["00002"].source == f"{uri}/Clip/original/00002.mp4"
    assert all(s.startswith(uri) and _opens(s) for s in [c.source for c in t.clips] + t.annotation_files)
    assert len(t.annotation_files) == 10
    # The hash reads the annotation files through the URI: editing one changes it.
    before = t.inputs_hash()
    (root / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_3.csv").write_text("video_name,label\n1,1\n")
    assert load_clip_table(DatasetConfig(name="dfew", root=uri)).inputs_hash() != before


def test_mafw_and_ferv39k_roots_as_uris(tmp_path):
    root = make_mafw(tmp_path / "mafw")
    t = load_clip_table(DatasetConfig(name="mafw", root=root.as_uri()))
    clips = by_id(t)
    assert set(clips) == {"03747", "00010", "00020"}
    assert clips["03747"].source == f"{root.as_uri()}/data/clips/03747.mp4" and _opens(clips["03747"].source)
    # "Train & Test Set" is percent-encoded in the URIs of the split files, and they open.
    assert all("Train%20%26%20Test%20Set" in f and _opens(f) for f in t.annotation_files)

    setup = tmp_path / "ferv" / "4_setups" / "All_scenes"
    setup.mkdir(parents=True)
    (setup / "train_All.csv").write_text("Action/Angry/0063 Angry\n")
    (setup / "test_All.csv").write_text("Daily/Surprise/0100 Surprise\n")
    ferv = (tmp_path / "ferv").as_uri()
    t = load_clip_table(DatasetConfig(name="ferv39k", root=ferv))
    assert by_id(t)["Action/Angry/0063"].source == f"{ferv}/2_ClipsforFaceCrop/Action/Angry/0063"


def test_csv_and_published_lists_as_uris(tmp_path):
    (tmp_path / "my clips" / "sub").mkdir(parents=True)
    f = tmp_path / "my clips" / "labels.csv"
    f.write_text("path,label,split\na.mp4,anger,train\nsub/b c.mp4,fear,test\n/abs/c.mp4,happiness,\n")
    t = load_clip_table(DatasetConfig(name="csv", annotations=f.as_uri()))
    clips = by_id(t)
    folder = (tmp_path / "my clips").as_uri()
    assert clips["a.mp4"].source == f"{folder}/a.mp4"
    assert clips["sub/b c.mp4"].source == f"{folder}/sub/b%20c.mp4"
    assert clips["/abs/c.mp4"].source == "/abs/c.mp4" and t.annotation_files == [f.as_uri()]
    # demo / csv: labels.csv below a URI root
    d = load_clip_table(DatasetConfig(name="demo", root=folder))
    assert [c.source for c in d.clips] == [c.source for c in t.clips]

    ann = tmp_path / "annotation"
    ann.mkdir()
    (tmp_path / "DFEW_Frame_Face" / "02522").mkdir(parents=True)
    (ann / "DFEW_set_1_train.txt").write_text("/data/x/DFEW_Frame_Face/02522 66 4\n")
    t = load_clip_table(DatasetConfig(name="dfew", root=tmp_path.as_uri(), annotations=ann.as_uri()))
    assert by_id(t)["02522"].source == f"{tmp_path.as_uri()}/DFEW_Frame_Face/02522"
    one = load_clip_table(DatasetConfig(name="dfew", annotations=(ann / "DFEW_set_1_train.txt").as_uri()))
    assert one.annotation_files == [(ann / "DFEW_set_1_train.txt").as_uri()]


def test_uri_root_errors_name_the_key_and_location(tmp_path):
    missing = (tmp_path / "nope").as_uri()
    with pytest.raises(UserError, match=rf"dataset\.root not found: {missing}"):
        load_clip_table(DatasetConfig(name="dfew", root=missing))
    # pyarrow parses URIs strictly: a raw space is refused with a hint, before any work.
    with pytest.raises(UserError, match=r"dataset\.root: cannot open .*Percent-encode"):
        load_clip_table(DatasetConfig(name="dfew", root=f"file://{tmp_path}/DF EW"))
    make_dfew(tmp_path)
    f = tmp_path / "EmoLabel_DataSplit" / "train(single-labeled)" / "set_3.csv"
    f.write_text("video_name,label\n1,1\n5,9\n")
    with pytest.raises(UserError, match=rf"{f.as_uri()}, row 3: label must be 1\.\.7"):
        load_clip_table(DatasetConfig(name="dfew", root=tmp_path.as_uri()))
