"""Predict the facial expression of your own videos with a trained checkpoint.

Each input is a video file, a folder of frame images (one clip), or a folder of videos (each
video is one clip). Faces are detected and cropped as the preprocess stage does, with
``--config``'s preprocess section when given, else the settings the checkpoint's training data
were preprocessed with (the train stage records them), else the preprocess defaults; the flags
below override single settings. Then the model's evaluation frames are sampled and resized to its input. Needs no
Ray and no training config: the checkpoint carries the model, its classes, texts and crops.

Prints one table row per clip (path, label, probability, then every class's probability, or the
``--top K`` classes), or one JSON object per line with ``--json``. An input that cannot be read
prints an error row naming it and the others go on; the exit status is 0 when every input was
predicted, 1 when any failed, 2 for a bad checkpoint or option.

    dferclip predict --checkpoint runs/train/<run>/final/model.pt clip.mp4 frames_dir/ videos_dir/
    dferclip predict --checkpoint model.pt --json --top 3 videos_dir/ > predictions.jsonl
    dferclip predict --config configs/dfew.yaml --checkpoint model.pt clip.mp4   # crops as configured
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import TextIO

from pipeline.cli import run_cli, stage_parser
from pipeline.config import PreprocessConfig, load_config


def _table_header(path_width: int, classes: list[str], top: int | None) -> str:
    head = f"{'path':<{path_width}}  {'label':<14} {'prob':>6}  {'face':<4}"
    if top is not None:
        return head + f"  top {top}"
    return head + "  " + " ".join(f"{c:>{max(len(c), 6)}}" for c in classes)


def _table_row(p, path_width: int, classes: list[str], top: int | None) -> str:
    if not p.ok:
        return f"{p.path:<{path_width}}  ERROR: {p.error}"
    row = f"{p.path:<{path_width}}  {p.label:<14} {p.probability:>6.3f}  {'none' if p.face_fallback else 'ok':<4}"
    if top is not None:
        return row + "  " + ", ".join(f"{c} {v:.3f}" for c, v in p.top(top))
    return row + "  " + " ".join(f"{p.probabilities[c]:>{max(len(c), 6)}.3f}" for c in classes)


def main(checkpoint: str, inputs: list[str], *, prep: PreprocessConfig | None = None, json_lines: bool = False,
         batch_size: int = 8, top: int | None = None, device: str = "auto", workers: int = 2,
         out: TextIO | None = None, err: TextIO | None = None, crop_overrides: dict | None = None) -> int:
    """``prep``: the crop settings; None takes the checkpoint's recorded ones, else the defaults.
    ``crop_overrides``: single settings (from the flags) applied on top."""
    from pipeline.errors import UserError
    from pipeline.model.checkpoint import load_checkpoint
    from pipeline.predict import crop_options, expand_inputs, iter_predictions, recorded_preprocess

    out, err = out or sys.stdout, err or sys.stderr
    # build (the checkpoint first: it may carry the crop settings to validate)
    model, extra = load_checkpoint(checkpoint)
    # validate
    prep = dataclasses.replace(prep or recorded_preprocess(extra) or PreprocessConfig(), **(crop_overrides or {}))
    problems = prep.validate()
    if top is not None and top < 1:
        problems.append(f"--top: must be >= 1, got {top}")
    if problems:
        raise UserError("predict: " + "; ".join(problems))
    items = expand_inputs(inputs)  # here only to size the table's path column
    classes = list(model.class_names)
    # run + write: rows stream out as their batch finishes (that is the progress display).
    failed = 0
    path_width = min(60, max([len(p) for p, _ in items] + [4]))
    if not json_lines:
        print(_table_header(path_width, classes, top), file=out, flush=True)
    for p in iter_predictions(model, inputs, batch_size=batch_size, device=device, workers=workers,
                              **crop_options(prep)):
        failed += not p.ok
        if json_lines:
            row = p.to_dict()
            if top is not None and p.ok:
                row["top"] = [{"label": c, "probability": v} for c, v in p.top(top)]
            print(json.dumps(row), file=out, flush=True)
        else:
            print(_table_row(p, path_width, classes, top), file=out, flush=True)
    if failed:
        print(f"predict: {failed} of {len(items)} input(s) could not be read "
              f"(see the {'error fields' if json_lines else 'ERROR rows'} above)", file=err)
    return 1 if failed else 0


def cli(argv=None) -> int:
    parser = stage_parser("dferclip predict", __doc__, config_required=False)
    parser.add_argument("inputs", nargs="+", metavar="VIDEO_OR_FOLDER", help="video files, frame folders, folders of videos")
    parser.add_argument("--checkpoint", required=True, help="a project checkpoint (e.g. <run>/final/model.pt)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    parser.add_argument("--top", type=int, metavar="K", help="show only the K most probable classes")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per forward pass (default 8)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--workers", type=int, default=2, help="decode/crop threads (default 2)")
    crop = parser.add_argument_group("face crops (default: --config's preprocess section, else as recorded in the "
                                     "checkpoint, else the preprocess defaults)")
    crop.add_argument("--detector", choices=["haar", "yunet", "none"])
    crop.add_argument("--yunet-model", metavar="PATH", help="YuNet ONNX file for --detector yunet")
    crop.add_argument("--detect-every", type=int, metavar="K")
    crop.add_argument("--margin", type=float)
    crop.add_argument("--crop-size", type=int, metavar="PX")
    args = parser.parse_args(argv)

    def body() -> int:
        prep = None
        if args.config:
            prep = load_config(args.config, args.overrides).preprocess
        elif args.overrides:
            parser.error("--set needs --config (predict reads only its preprocess section)")
        flags = {name: getattr(args, name) for name in ("detector", "yunet_model", "detect_every", "margin", "crop_size")
                 if getattr(args, name) is not None}
        return main(args.checkpoint, args.inputs, prep=prep, json_lines=args.json, batch_size=args.batch_size,
                    top=args.top, device=args.device, workers=args.workers, crop_overrides=flags)

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(cli())
