"""Calibrate stage: fit a temperature on a validation split and store it in the checkpoint.

Temperature scaling divides the model's logits by one scalar T, fitted by minimising the NLL on
held-out clips; predictions, UAR and WAR do not change, confidences do. The fitted T goes into
the checkpoint (``extra["calibration"]``), and ``dferclip predict`` and ``dferclip evaluate``
apply it from then on. Prints ECE (15 equal-width bins) and NLL before -> after, and writes
``<storage.root>/evaluate/<name>-calibrate-<time>/`` (calibration.json, reliability.png).

The default split ``val`` is carved from the fold's training clips by ``train.val_fraction`` and
``train.seed``, as training with ``train.selection: validation`` carves it, so it is held out
only for a model trained that way. Without ``--config``, the run's own ``config.yaml`` is used
(``<run>/config.yaml`` beside ``<run>/final/model.pt``).

    dferclip calibrate --checkpoint runs/dfew/train/<run>/final/model.pt
    dferclip calibrate --config configs/dfew.yaml --checkpoint model.pt --fold 2 --out model-calibrated.pt
"""

from __future__ import annotations

from pathlib import Path

from pipeline.calibration import run_calibrate
from pipeline.cli import run_cli, stage_parser
from pipeline.config import ExperimentConfig, load_config
from pipeline.errors import UserError

__all__ = ["main", "cli", "run_config_of"]


def main(
    cfg: ExperimentConfig, *, checkpoint: str, split: str = "val", fold: int | None = None, out: str | None = None
) -> dict:
    """The stage on a loaded config: :func:`pipeline.calibration.run_calibrate`."""
    return run_calibrate(cfg, checkpoint, split=split, fold=fold, out=out)


def run_config_of(checkpoint: str) -> Path:
    """The training run's config.yaml for a checkpoint inside a run folder (``<run>/final/model.pt``,
    ``<run>/checkpoint_epoch*/model.pt``, ``<run>/best/model.pt``)."""
    path = Path(checkpoint).parent.parent / "config.yaml"
    if not path.is_file():
        raise UserError(
            f"--config: not given, and {checkpoint} is not inside a training run folder "
            f"({path} not found); give the experiment config the model was trained with"
        )
    return path


def cli(argv=None) -> int:
    parser = stage_parser("dferclip calibrate", __doc__, config_required=False)
    parser.add_argument("--checkpoint", required=True, help="a project checkpoint (e.g. <run>/final/model.pt)")
    parser.add_argument(
        "--split", default="val", choices=("val", "train", "test"), help="clips to fit on (default val, held out)"
    )
    parser.add_argument("--fold", type=int, help="fold (default: the checkpoint's, else train.fold)")
    parser.add_argument("--out", metavar="PATH", help="write the calibrated checkpoint here (default: in place)")
    args = parser.parse_args(argv)

    def body() -> None:
        config = args.config or run_config_of(args.checkpoint)
        main(
            load_config(config, args.overrides),
            checkpoint=args.checkpoint,
            split=args.split,
            fold=args.fold,
            out=args.out,
        )

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(cli())
