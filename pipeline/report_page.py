"""The demo's report: one ``report.html`` beside its PNGs, readable offline in any browser.

It gathers what the stages already wrote — the shard manifest, the description set, the
training run's curves and summary, the evaluation's metrics and confusion matrix — adds a
grid of sample face crops per class (read back from the shards, so it shows exactly what the
model saw) and the time each stage took. Each file is replaced whole, never rewritten in place,
so a browser or a failed re-run never leaves a half-written page.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow.dataset as pads
import yaml

from pipeline.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["face_grid_png", "write_report"]


def face_grid_png(shard_files: list[str], class_names: list[str], frames_per_row: int = 6, tile: int = 96) -> bytes:
    """One row per class: frames of one clip from first to last (onset -> apex), as PNG bytes."""
    table = pads.dataset(shard_files, format="parquet").to_table(columns=["label_name", "frames"])
    names = table.column("label_name").to_pylist()
    rows = []
    for cls in class_names:
        if cls not in names:
            continue
        frames = table.column("frames")[names.index(cls)].as_py()
        picks = np.linspace(0, len(frames) - 1, frames_per_row).round().astype(int)
        tiles = []
        for i in picks:
            img = cv2.imdecode(np.frombuffer(frames[i], np.uint8), cv2.IMREAD_COLOR)
            tiles.append(cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA))
        label = np.full((tile, tile * 2, 3), 255, np.uint8)
        cv2.putText(label, cls, (6, tile // 2 + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.hstack([label, *tiles]))
    if not rows:
        raise ValueError(f"no clips of any class in {shard_files[:1]}...")
    ok, png = cv2.imencode(".png", np.vstack(rows))
    return png.tobytes()


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}" if isinstance(x, (int, float)) and x == x else "–"


def write_report(
    out_dir: str | Path,
    *,
    title: str,
    manifest: dict,
    description_set: str | Path,
    train_dir: str | Path,
    evaluation: dict,
    shard_files: list[str],
    timings: dict[str, float],
) -> Path:
    """Write ``out_dir/report.html`` and the PNGs it shows; returns the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    class_names = list(evaluation["class_names"])
    train_dir = Path(train_dir)

    # Every file is replaced whole (pipeline.atomic): a failed rewrite leaves the previous report.
    images = {}
    for name in ("curves.png",):
        if (train_dir / name).exists():
            atomic_write_bytes(out / name, (train_dir / name).read_bytes())
            images["curves"] = name
    eval_png = Path(evaluation["output_dir"]) / "confusion.png"
    if eval_png.exists():
        atomic_write_bytes(out / "confusion.png", eval_png.read_bytes())
        images["confusion"] = "confusion.png"
    atomic_write_bytes(out / "faces.png", face_grid_png(shard_files, class_names))
    images["faces"] = "faces.png"

    counts = manifest.get("counts", {})
    per_class = counts.get("per_class", {}) or counts.get("classes", {})
    per_split = counts.get("per_split", {}) or counts.get("splits", {})
    dataset_rows = [[c, per_class.get(c, "")] for c in class_names]
    split_rows = [[k, v] for k, v in sorted(per_split.items())]

    dset = yaml.safe_load(Path(description_set).read_text())
    desc_rows = []
    for entry in dset.get("classes", []):
        for i, d in enumerate(entry.get("descriptions", [])):
            desc_rows.append([entry["name"] if i == 0 else "", d])

    recall = evaluation.get("recall", {})
    recall_rows = [[c, _pct(recall.get(c))] for c in class_names]
    timing_rows = [[k, f"{v:.1f} s"] for k, v in timings.items()] + [["total", f"{sum(timings.values()):.1f} s"]]

    summary_path = train_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}

    def img(key: str, alt: str) -> str:
        return f'<img src="{images[key]}" alt="{alt}">' if key in images else "<p>(not available)</p>"

    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; vertical-align: top; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
.big {{ font-size: 1.4em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="big">Test UAR <b>{_pct(evaluation.get("uar"))}</b> &nbsp; WAR <b>{_pct(evaluation.get("war"))}</b>
&nbsp; ({evaluation.get("clips", "?")} test clips)</p>
<h2>Dataset</h2>
<p>{manifest.get("counts", {}).get("clips", "?")} clips in {len(manifest.get("shards", []))} shards;
{len(manifest.get("errors", []) if isinstance(manifest.get("errors"), list) else [])} failed clips.</p>
{_table(["class", "clips"], dataset_rows)}
{_table(["fold:split", "clips"], split_rows)}
<h2>Sample face crops (onset to apex)</h2>
{img("faces", "face crops per class")}
<h2>Descriptions used</h2>
<p>Set <code>{html.escape(str(dset.get("name", "")))}</code> from <code>{html.escape(str(description_set))}</code></p>
{_table(["class", "description"], desc_rows)}
<h2>Training</h2>
<p>Run <code>{html.escape(str(train_dir))}</code>; best epoch {html.escape(str(summary.get("best_epoch", "?")))}.</p>
{img("curves", "loss, UAR and WAR per epoch")}
<h2>Evaluation on the test split</h2>
{img("confusion", "confusion matrix")}
{_table(["class", "recall %"], recall_rows)}
<h2>Time per stage</h2>
{_table(["stage", "time"], timing_rows)}
</body></html>
"""
    return atomic_write_text(out / "report.html", page)
