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

A video longer than ``timeline.auto_after_s`` (10 s; ``--timeline`` for every video,
``--no-timeline`` for none) is scored as a timeline: windows of ``--window-s`` seconds every
``--stride-s`` per face track (up to ``--max-tracks``), each with its probabilities and time
span; its label is the ``--aggregate`` of track 0's windows, its tracks are extra table lines
(``timeline`` in the JSON), and ``--timeline-png DIR`` draws each (docs/predict.md#long-videos-timelines-and-face-tracks).

    dferclip predict --checkpoint runs/train/<run>/final/model.pt clip.mp4 frames_dir/ videos_dir/
    dferclip predict --checkpoint model.pt --json --top 3 videos_dir/ > predictions.jsonl
    dferclip predict --config configs/dfew.yaml --checkpoint model.pt clip.mp4   # crops as configured
    dferclip predict --checkpoint model.pt --timeline --max-tracks 2 --timeline-png out/ interview.mp4
"""

from __future__ import annotations

from pipeline.cli import run_cli, stage_parser
from pipeline.config import TimelineConfig, load_config
from pipeline.predict_output import predict_command

__all__ = ["main", "cli"]

CROP_FLAGS = ("detector", "yunet_model", "detect_every", "margin", "crop_size")


def main(checkpoint: str, inputs: list[str], **options) -> int:
    """The stage: :func:`pipeline.predict_output.predict_command` (same options); returns the exit status."""
    return predict_command(checkpoint, inputs, **options)


def _parser():
    parser = stage_parser("dferclip predict", __doc__, config_required=False)
    parser.add_argument(
        "inputs", nargs="+", metavar="VIDEO_OR_FOLDER", help="video files, frame folders, folders of videos"
    )
    parser.add_argument("--checkpoint", required=True, help="a project checkpoint (e.g. <run>/final/model.pt)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    parser.add_argument("--top", type=int, metavar="K", help="show only the K most probable classes")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per forward pass (default 8)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--workers", type=int, default=2, help="decode/crop threads (default 2)")
    tl = parser.add_argument_group(
        "long videos (default: --config's timeline section, else a timeline for videos over 10 s)"
    )
    mode = tl.add_mutually_exclusive_group()
    mode.add_argument("--timeline", dest="timeline_mode", action="store_const", const="on", help="every video")
    mode.add_argument("--no-timeline", dest="timeline_mode", action="store_const", const="off", help="no video")
    tl.add_argument("--window-s", type=float, metavar="S", help="window length in seconds (default 2)")
    tl.add_argument("--stride-s", type=float, metavar="S", help="window stride in seconds (default 1)")
    tl.add_argument("--max-tracks", type=int, metavar="N", help="faces followed at once (default 3)")
    tl.add_argument("--aggregate", choices=["mean", "majority", "max"], help="video label from its windows")
    tl.add_argument("--timeline-png", metavar="DIR", help="write one timeline PNG per such video here")
    crop = parser.add_argument_group(
        "face crops (default: --config's preprocess section, else as recorded in the "
        "checkpoint, else the preprocess defaults)"
    )
    crop.add_argument("--detector", choices=["haar", "yunet", "none"])
    crop.add_argument("--yunet-model", metavar="PATH", help="YuNet ONNX file for --detector yunet")
    crop.add_argument("--detect-every", type=int, metavar="K")
    crop.add_argument("--margin", type=float)
    crop.add_argument("--crop-size", type=int, metavar="PX")
    return parser


TIMELINE_FLAGS = {"timeline_mode": "mode", "window_s": "window_s", "stride_s": "stride_s"}
TIMELINE_FLAGS |= {"max_tracks": "max_tracks", "aggregate": "aggregate"}


def _timeline(cfg, args) -> TimelineConfig:
    """The timeline settings: the config's section (or the defaults) with the flags given applied,
    checked like the config section."""
    import dataclasses

    from pipeline.errors import UserError

    base = cfg.timeline if cfg is not None else TimelineConfig()
    flags = {key: getattr(args, flag) for flag, key in TIMELINE_FLAGS.items() if getattr(args, flag) is not None}
    tl = dataclasses.replace(base, **flags)
    problems = tl.validate()
    if problems:
        raise UserError("predict: timeline " + "; ".join(problems))
    return tl


def cli(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.overrides and not args.config:
        parser.error("--set needs --config (predict reads only its preprocess and timeline sections)")

    def body() -> int:
        cfg = load_config(args.config, args.overrides) if args.config else None
        flags = {name: getattr(args, name) for name in CROP_FLAGS if getattr(args, name) is not None}
        return main(
            args.checkpoint,
            args.inputs,
            prep=cfg.preprocess if cfg else None,
            json_lines=args.json,
            batch_size=args.batch_size,
            top=args.top,
            device=args.device,
            workers=args.workers,
            crop_overrides=flags,
            timeline=_timeline(cfg, args),
            timeline_png=args.timeline_png,
        )

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(cli())
