"""``dferclip predict``'s result: one table row (or JSON object) per clip on stdout, as each batch finishes.

    predict_command(checkpoint, inputs, *, prep=None, crop_overrides=None, json_lines=False, top=None,
                    batch_size=8, device="auto", workers=2, out=None) -> int   # the exit status

The table has the path, label, probability and whether a face was found, then every class's
probability (or the ``top`` K classes); ``json_lines`` writes :meth:`Prediction.to_dict` per line
instead (plus ``top`` when asked). An input that cannot be read is an error row and the others
go on; the status is 0 when every input was predicted, 1 when any failed. A bad checkpoint or
crop setting raises :class:`UserError`. The rows are the command's output, so they go to ``out``
(stdout); the count of failures is logged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from typing import TextIO

from pipeline.config import PreprocessConfig
from pipeline.errors import UserError

__all__ = ["predict_command", "table_header", "table_row", "track_row", "json_row"]

logger = logging.getLogger(__name__)

PATH_WIDTH_MAX = 60


def table_header(path_width: int, classes: list[str], top: int | None) -> str:
    head = f"{'path':<{path_width}}  {'label':<14} {'prob':>6}  {'face':<4}"
    if top is not None:
        return head + f"  top {top}"
    return head + "  " + " ".join(f"{c:>{max(len(c), 6)}}" for c in classes)


def table_row(p, path_width: int, classes: list[str], top: int | None) -> str:
    """One :class:`pipeline.predict.Prediction` as a table row (an ERROR row when it failed)."""
    if not p.ok:
        return f"{p.path:<{path_width}}  ERROR: {p.error}"
    row = f"{p.path:<{path_width}}  {p.label:<14} {p.probability:>6.3f}  {'none' if p.face_fallback else 'ok':<4}"
    if top is not None:
        return row + "  " + ", ".join(f"{c} {v:.3f}" for c, v in p.top(top))
    return row + "  " + " ".join(f"{p.probabilities[c]:>{max(len(c), 6)}.3f}" for c in classes)


def track_row(track: dict, aggregate: str) -> str:
    """One face track of a timeline (pipeline.timeline.timeline_result) as an indented table line."""
    return (
        f"  track {track['track']} [{track['first_s']:.1f}-{track['last_s']:.1f} s, {len(track['windows'])} windows]: "
        f"{track['label']} {track['probability']:.3f} ({aggregate})"
    )


def json_row(p, top: int | None) -> str:
    """One :class:`pipeline.predict.Prediction` as a JSON line, with its ``top`` classes when asked."""
    row = p.to_dict()
    if top is not None and p.ok:
        row["top"] = [{"label": c, "probability": v} for c, v in p.top(top)]
    return json.dumps(row)


def _crop_settings(
    prep: PreprocessConfig | None, extra: dict, overrides: dict | None, top: int | None, source: str = "<checkpoint>"
):
    """``prep``, else the checkpoint's recorded settings, else the defaults; then the single overrides."""
    from pipeline.predict import recorded_preprocess

    prep = dataclasses.replace(prep or recorded_preprocess(extra, source) or PreprocessConfig(), **(overrides or {}))
    problems = prep.validate()
    if top is not None and top < 1:
        problems.append(f"--top: must be >= 1, got {top}")
    if problems:
        raise UserError("predict: " + "; ".join(problems))
    return prep


def predict_command(
    checkpoint: str,
    inputs: list[str],
    *,
    prep: PreprocessConfig | None = None,
    crop_overrides: dict | None = None,
    json_lines: bool = False,
    top: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    workers: int = 2,
    out: TextIO | None = None,
    timeline=None,
    timeline_png: str | None = None,
) -> int:
    """Predict every input with ``checkpoint`` and write the rows to ``out`` (stdout); returns the exit status.

    ``prep``: the crop settings; None takes the checkpoint's recorded ones, else the defaults.
    ``crop_overrides``: single settings (from the flags) applied on top. ``timeline``: a
    TimelineConfig (None: none); a video scored as one gets its tracks as extra table lines (or
    the ``timeline`` JSON field) and, with ``timeline_png``, a PNG in that folder.
    """
    from pipeline.model.checkpoint import load_checkpoint
    from pipeline.predict import crop_options, expand_inputs, iter_predictions

    out = out or sys.stdout
    # build (the checkpoint first: it may carry the crop settings to validate)
    model, extra = load_checkpoint(checkpoint)
    # validate
    prep = _crop_settings(prep, extra, crop_overrides, top, str(checkpoint))
    items = expand_inputs(inputs)  # here only to size the table's path column
    classes = list(model.class_names)
    # run + write: rows stream out as their batch finishes (that is the progress display).
    failed = 0
    path_width = min(PATH_WIDTH_MAX, max([len(p) for p, _ in items] + [4]))
    if not json_lines:
        print(table_header(path_width, classes, top), file=out, flush=True)
    for p in iter_predictions(
        model,
        inputs,
        batch_size=batch_size,
        device=device,
        workers=workers,
        timeline=timeline,
        timeline_png=timeline_png,
        **crop_options(prep),
    ):
        failed += not p.ok
        line = json_row(p, top) if json_lines else table_row(p, path_width, classes, top)
        print(line, file=out, flush=True)
        if p.timeline is not None and not json_lines:
            for tr in p.timeline["tracks"]:
                print(track_row(tr, p.timeline["aggregate"]), file=out, flush=True)
    if failed:
        logger.warning(
            "predict: %d of %d input(s) could not be read (see the %s above)",
            failed,
            len(items),
            "error fields" if json_lines else "ERROR rows",
        )
    return 1 if failed else 0
