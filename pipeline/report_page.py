"""The demo's report: one ``report.html`` beside its PNGs, readable offline in any browser.

It gathers what the stages already wrote — the shard manifest, the description set, the
training run's curves and summary, the evaluation's metrics and confusion matrix, and the
demo's comparisons (zero-shot text sources, pretrained vs random init, two description sets,
the frozen-encoder sweep's heat-map) — adds a grid of sample face crops per class (read back from the shards, so it shows exactly what the
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

__all__ = ["face_grid_png", "write_report", "comparisons_html"]


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


def _epochs(record: dict) -> str:
    e = record.get("epochs_to_target")
    return f"{e} of {record.get('epochs')}" if e else f"not within {record.get('epochs')}"


def comparisons_html(c: dict, heatmap: str | None) -> str:
    """The report's comparison sections from the demo's ``comparisons`` record (demo.json)."""
    target, seed = c["target_uar"], c["seed"]
    zero_rows = [
        [label, _pct(r["uar"]), _pct(r["war"]), r.get("description_set") or r["text_source"]]
        for label, r in c["zero_shot"].items()
    ]
    ft, ri = c["fine_tuned"], c["random_init"]
    split = ft.get("curve_split", "test")
    run_rows = [
        [ft["model"], _pct(ft["test_uar"]), _pct(ft["test_war"]), _epochs(ft)],
        ["random init (the recipe before pretrained weights)", _pct(ri["test_uar"]), _pct(ri["test_war"]), _epochs(ri)],
    ]
    curves = [[i + 1, _pct(a), _pct(b)] for i, (a, b) in enumerate(_zip_longest(ft["curve"], ri["curve"]))]
    set_rows = [
        [
            d["set"],
            _pct(d["zero_shot_uar"]),
            _pct(d["zero_shot_war"]),
            _pct(d["first_epoch_uar"]),
            _pct(d["fine_tuned_uar"]),
            _pct(d["fine_tuned_war"]),
            d["epochs_to_target"] or "–",
        ]
        for d in c["description_sets"]
    ]
    set_head = ["set", "zero-shot UAR %", "zero-shot WAR %", "UAR % after epoch 1", "fine-tuned UAR %"]
    set_head += ["fine-tuned WAR %", f"first epoch at UAR {target}"]
    s = c["sweep"]
    cell_rows = [[*cell["values"], f"{cell['value']:.3f}"] for cell in s["cells"]]
    heat = f'<img src="{heatmap}" alt="sweep heat-map">' if heatmap else "<p>(not available)</p>"
    return f"""<h2>Zero-shot: which text stands for a class</h2>
<p>The pretrained micro-CLIP with no training on the demo data, on the test split (seed {seed}).
Captions in pretraining never named a class: descriptions of the facial actions transfer, bare
class names do not.</p>
{_table(["class texts", "UAR %", "WAR %", "set / source"], zero_rows)}
<h2>Fine-tuning: pretrained vs random initialisation</h2>
<p>Same data, same seed ({seed}); "epochs to {target}": the first epoch whose {split} UAR is at
least {target} ({split} split: the recipe's selection split).</p>
{_table(["initialisation", "test UAR %", "test WAR %", f"epochs to UAR {target}"], run_rows)}
{_table(["epoch", f"pretrained {split} UAR %", f"random init {split} UAR %"], curves)}
<h2>Description sets</h2>
<p>The shipped set and a deliberately worse one (its descriptions moved one class along),
the same recipe and seed ({seed}).</p>
{_table(set_head, set_rows)}
<h2>Sweep on the frozen pretrained encoder</h2>
<p>{s["trials"]} trials, fast mode (cached frame embeddings; context and temporal model trained);
best {html.escape(s["metric"])} per cell. Best {s["best"]:.3f}, worst {s["worst"]:.3f},
spread (best − worst) {s["spread"]:.3f}. Folder <code>{html.escape(str(s["sweep"]))}</code>.</p>
{heat}
{_table([*s["axes"], s["metric"]], cell_rows)}
"""


def _zip_longest(a: list, b: list) -> list[tuple]:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else None, b[i] if i < len(b) else None) for i in range(n)]


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
    comparisons: dict | None = None,
) -> Path:
    """Write ``out_dir/report.html`` and the PNGs it shows; returns the HTML path.

    ``comparisons``: the demo's comparison record (:func:`pipeline.demo.run_demo`), shown in
    sections of its own with the sweep's heat-map; None leaves them out."""
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
    compared = ""
    if comparisons is not None:
        heatmap = Path(comparisons["sweep"]["heatmap"])
        if heatmap.exists():
            atomic_write_bytes(out / "heatmap.png", heatmap.read_bytes())
        compared = comparisons_html(comparisons, "heatmap.png" if heatmap.exists() else None)

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
{compared}<h2>Time per stage</h2>
{_table(["stage", "time"], timing_rows)}
</body></html>
"""
    return atomic_write_text(out / "report.html", page)
