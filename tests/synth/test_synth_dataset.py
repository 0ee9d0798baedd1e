"""generate_dataset and `dferclip demo-data`: real mp4 files, a well-formed stratified labels.csv,
the same bytes for the same seed whatever the number of workers."""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import av
import pytest

from pipeline import cli as dferclip
from pipeline.datasets import CLASSES_7
from pipeline.errors import UserError
from pipeline.synth import generate_dataset
from stages import demo_data

FRAMES, SIZE, FPS = 10, (128, 96), 10


def _rows(labels: Path) -> list[dict[str, str]]:
    with open(labels, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["path", "label", "split"]
        return list(reader)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    return generate_dataset(out, 5, seed=3, num_frames=FRAMES, size=SIZE, fps=FPS, workers=1)


def test_labels_csv_is_stratified_and_points_at_every_video(small_dataset):
    rows = _rows(small_dataset)
    assert len(rows) == 5 * len(CLASSES_7)
    assert Counter(r["label"] for r in rows) == {c: 5 for c in CLASSES_7}
    # 20 % of 5 = 1 test clip per class.
    assert Counter(r["label"] for r in rows if r["split"] == "test") == {c: 1 for c in CLASSES_7}
    assert {r["split"] for r in rows} == {"train", "test"}
    root = small_dataset.parent
    assert sorted(p.name for p in (root / "videos").iterdir()) == sorted(Path(r["path"]).name for r in rows)
    assert all(not Path(r["path"]).is_absolute() for r in rows)
    # Row order is clip-id order and does not follow the class order.
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    assert [r["label"] for r in rows[:5]] != [rows[0]["label"]] * 5


def test_videos_are_real_mp4_with_the_expected_frames(small_dataset):
    root = small_dataset.parent
    for row in _rows(small_dataset)[:7]:
        with av.open(str(root / row["path"])) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name in ("h264", "mpeg4")
            assert float(stream.average_rate) == pytest.approx(FPS)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == FRAMES
        assert frames[0].shape == (SIZE[1], SIZE[0], 3)
        assert frames[0].std() > 10  # a picture, not a blank frame
    assert not list(root.glob("**/*.partial"))


def test_same_seed_same_dataset_any_workers_and_another_seed_differs(small_dataset, tmp_path):
    again = generate_dataset(tmp_path / "again", 5, seed=3, num_frames=FRAMES, size=SIZE, fps=FPS, workers=2)
    assert again.read_text() == small_dataset.read_text()
    for row in _rows(again)[:5]:
        assert (again.parent / row["path"]).read_bytes() == (small_dataset.parent / row["path"]).read_bytes()
    fresh = generate_dataset(
        tmp_path / "fresh", 5, seed=4, num_frames=FRAMES, size=SIZE, fps=FPS, workers=1, classes=("fear",)
    )
    first = _rows(fresh)[0]["path"]
    assert (fresh.parent / first).read_bytes() != (small_dataset.parent / first).read_bytes()


def test_rerun_into_the_same_folder_replaces_stale_videos(tmp_path):
    generate_dataset(tmp_path, 2, seed=0, num_frames=FRAMES, size=SIZE, workers=1)
    labels = generate_dataset(tmp_path, 1, seed=0, num_frames=FRAMES, size=SIZE, workers=1, test_fraction=0.0)
    rows = _rows(labels)
    assert len(rows) == len(CLASSES_7) and {r["split"] for r in rows} == {"train"}
    assert len(list((tmp_path / "videos").iterdir())) == len(CLASSES_7)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"clips_per_class": 0}, "clips_per_class"),
        ({"size": (121, 96)}, "size"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"classes": ("joy",)}, "classes"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, kwargs, message):
    args = {"clips_per_class": 1, "seed": 0, "num_frames": FRAMES, "size": SIZE, **kwargs}
    with pytest.raises(UserError, match=message):
        generate_dataset(tmp_path / "x", args.pop("clips_per_class"), args.pop("seed"), **args)
    assert not (tmp_path / "x").exists()


def test_cli_writes_the_dataset_and_reports_progress(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="pipeline")  # the progress summary is a debug line
    code = dferclip.main(
        [
            "demo-data",
            "--out",
            str(tmp_path / "d"),
            "--clips-per-class",
            "1",
            "--frames",
            "8",
            "--size",
            "128x96",
            "--workers",
            "1",
            "--test-fraction",
            "0",
        ]
    )
    assert code == 0
    assert "labels.csv" in caplog.text and f"{len(CLASSES_7)}/{len(CLASSES_7)} clips" in caplog.text
    assert len(_rows(tmp_path / "d" / "labels.csv")) == len(CLASSES_7)


def test_cli_rejects_bad_input_with_exit_code_2(tmp_path, capsys):
    assert demo_data.cli(["--out", str(tmp_path / "d"), "--size", "130x97"]) == 2
    assert "size" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: malformed size
        demo_data.cli(["--out", str(tmp_path / "d"), "--size", "big"])
