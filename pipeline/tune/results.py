"""A finished (or resumed-and-finished) sweep's outputs: results table, heat-map, best config.

- ``results.parquet`` / ``results.csv``: one row per trial — its parameters (one column per
  swept dotted path, ``model.n_ctx``, ``train.lr_prompt``, ..., values as the trial got them), the best value of
  the sweep metric and the epoch it came at, the last value, epochs run, wall time, status
  (``completed``, ``stopped_early`` by ASHA, ``error``) and the final test UAR/WAR where the
  trial reported them — best trial first.
- ``heatmap.png``: the best value of the metric over the first two swept parameters (rows x
  columns; by default context tokens x temporal depth), each cell the best over any other swept
  parameter.
- ``best_config.yaml``: the input experiment config with the best trial's values filled in,
  ready for ``dferclip train --config``.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pandas as pd
import yaml

from pipeline.storage import Storage

__all__ = ["trial_statuses", "results_table", "write_table", "heatmap_png", "best_params", "best_config_yaml"]


def _best(series: pd.Series, mode: str) -> tuple[float, int | None]:
    s = pd.to_numeric(series, errors="coerce")
    if s.notna().sum() == 0:
        return math.nan, None
    i = s.idxmax() if mode == "max" else s.idxmin()
    return float(s[i]), i


def trial_statuses(results) -> list[str]:
    """Each trial's status as last saved (TERMINATED, ERROR, PENDING, RUNNING, PAUSED), in result order.

    Read from the saved experiment state, not from the returned objects: after Ctrl+C, Tune
    saves the state (unfinished trials RUNNING/PENDING — what a restore resumes) and only then
    stops the running trials, which marks them TERMINATED in memory like trials ASHA stopped.
    """
    from ray.tune import ExperimentAnalysis

    live = results._experiment_analysis.trials  # ResultGrid builds its results in this order
    try:
        saved = {
            t.trial_id: t.status
            for t in ExperimentAnalysis(results.experiment_path, storage_filesystem=results.filesystem).trials
        }
    except Exception:  # noqa: BLE001 — no readable state: fall back to what Tune returned
        saved = {}
    return [saved.get(t.trial_id, t.status) for t in live]


def results_table(
    results, params: list[str], metric: str, mode: str, max_epochs: int, statuses: list[str] | None = None
) -> pd.DataFrame:
    """One row per trial of a Tune ``ResultGrid`` (best trial first; errored/unfinished last).

    ``statuses`` (:func:`trial_statuses`) tells trials an interruption left unfinished apart
    from those ASHA stopped; without it every trial is taken as finished.
    """
    rows = []
    for k, r in enumerate(results):
        df = r.metrics_dataframe if r.metrics_dataframe is not None else pd.DataFrame()
        last = r.metrics or {}
        row: dict[str, Any] = {"trial": (r.path or "").rstrip("/").rsplit("/", 1)[-1]}
        row.update({p: (r.config or {}).get(p) for p in params})
        best_value, best_epoch = math.nan, None
        if metric in df:
            best_value, i = _best(df[metric], mode)
            if i is not None and "epoch" in df:
                best_epoch = int(df["epoch"][i])
        epochs_run = int(pd.to_numeric(df["epoch"], errors="coerce").max()) if "epoch" in df and len(df) else 0
        tune_status = statuses[k] if statuses is not None else "TERMINATED"
        if r.error or tune_status == "ERROR":
            status = "error"
        elif tune_status != "TERMINATED":
            status = "unfinished"
        else:
            status = "completed" if epochs_run >= max_epochs else "stopped_early"
        row.update(
            {
                "metric": metric,
                "best_value": best_value,
                "best_epoch": best_epoch,
                "last_value": float(last[metric]) if metric in last and last[metric] is not None else math.nan,
                "epochs_run": epochs_run,
                "wall_time_s": float(last.get("time_total_s", math.nan)),
                "status": status,
                "test_uar": float(last["test_uar"]) if "test_uar" in last else math.nan,
                "test_war": float(last["test_war"]) if "test_war" in last else math.nan,
                "error": str(r.error).splitlines()[0][:300] if r.error else "",
            }
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for p in params:  # the values as the trials got them (None stays None, ints stay ints), not coerced to float
        table[p] = pd.Series([row[p] for row in rows], dtype=object)
    table["_err"] = table["status"].isin(["error", "unfinished"])
    table = table.sort_values(["_err", "best_value"], ascending=[True, mode == "min"], na_position="last")
    return table.drop(columns="_err").reset_index(drop=True)


def write_table(storage: Storage, rel: str, table: pd.DataFrame) -> tuple[str, str]:
    """Write ``results.parquet`` and ``results.csv`` atomically; returns their paths."""
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    pq_path = storage.write_bytes(buf.getvalue(), rel, "results.parquet")
    csv_path = storage.write_text(table.to_csv(index=False), rel, "results.csv")
    return pq_path, csv_path


def _value_label(v: Any) -> str:
    """A parameter value as an axis label: ``4``, ``0.001``, ``true``, ``null``, ``end``, ``[30, 40]``."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes, list, dict)):
        v = v.item()
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _axis(table: pd.DataFrame, key: str | None) -> list[str]:
    """Labels of a parameter's distinct values in axis order: null, numbers ascending, the rest by label."""
    if key is None or key not in table:
        return [""]
    order: dict[str, tuple] = {}
    for v in table[key]:
        label = _value_label(v)
        if label not in order:
            num = v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes, list, dict)) else v
            order[label] = (
                (0, 0.0, "")
                if label == "null"
                else (1, float(num), "")
                if isinstance(num, (int, float))
                else (2, 0.0, label)
            )
    return sorted(order, key=order.get)


def heatmap_png(table: pd.DataFrame, metric: str, mode: str, title: str = "", params: list[str] | None = None) -> bytes:
    """Metric over the first two swept parameters (rows x columns); each cell the best trial with those values.

    ``params``: the swept keys (:func:`pipeline.tune.space.swept_keys`); by default the table's
    dotted columns, in order. One swept parameter gives a single column.
    """
    from pipeline.reports import _png, _pyplot

    plt = _pyplot()
    params = list(params) if params is not None else [c for c in table.columns if "." in str(c)]
    row_key, col_key = (params + [None, None])[:2]
    rows, cols = _axis(table, row_key), _axis(table, col_key)
    values = np.full((len(rows), len(cols)), np.nan)
    ok = table[table["status"] != "error"] if "status" in table else table
    for _, trial in ok.iterrows():
        v = trial.get("best_value")
        if v is None or not np.isfinite(float(v)):
            continue
        i = rows.index(_value_label(trial[row_key])) if row_key in trial else 0
        j = cols.index(_value_label(trial[col_key])) if col_key in trial else 0
        cell = values[i, j]
        if not np.isfinite(cell) or (v > cell if mode == "max" else v < cell):
            values[i, j] = v
    percent = not metric.endswith("loss")
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(cols), 1.4 + 0.8 * len(rows)))
    cmap = plt.get_cmap("viridis" if mode == "max" else "viridis_r").with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(cols)), labels=cols)
    ax.set_yticks(range(len(rows)), labels=rows)
    ax.set_xlabel(col_key or "")
    ax.set_ylabel(row_key or "")
    finite = values[np.isfinite(values)]
    best = (finite.max() if mode == "max" else finite.min()) if finite.size else None
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            text = "n/a" if not np.isfinite(v) else (f"{100 * v:.1f}" if percent else f"{v:.3f}")
            r, g, b, _ = im.cmap(im.norm(v)) if np.isfinite(v) else (1, 1, 1, 1)
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=9,
                fontweight="bold" if best is not None and v == best else "normal",
                color="white" if dark else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=metric)
    ax.set_title(title or f"best {metric} ({mode})")
    return _png(fig)


def best_params(table: pd.DataFrame, params: list[str]) -> dict[str, Any]:
    """The swept values of the table's best non-errored trial (the table is sorted best first), keyed by
    dotted path as in the table, ready for :func:`pipeline.tune.space.apply_params_to_dict`."""
    ok = table[table["status"].isin(["completed", "stopped_early"]) & table["best_value"].notna()]
    if ok.empty:
        raise ValueError("no trial reported the sweep metric; nothing to choose from")
    top = ok.iloc[0]
    out = {}
    for p in params:
        v = top[p]
        if isinstance(v, np.ndarray):  # a list value read back from parquet
            v = v.tolist()
        elif hasattr(v, "item"):  # numpy scalar -> plain Python for YAML
            v = v.item()
        out[p] = None if isinstance(v, float) and math.isnan(v) else v  # a null candidate a float column made NaN
    return out


def best_config_yaml(config: dict, header_lines: list[str]) -> str:
    """YAML text of ``config`` (already holding the best values) with a ``#`` comment header."""
    header = "".join(f"# {line}\n" for line in header_lines)
    return header + yaml.safe_dump(config, sort_keys=False)
