"""Pretrain a small CLIP (image and text towers) contrastively on rendered faces with captions.

Renders face crops showing random combinations of facial actions (not the seven class
profiles), each captioned with what the face does in varied words plus unrelated attributes
(hair, skin, background, light, head tilt) and never a class name; trains open_clip's CLIP with
open_clip's ``ClipLoss`` as a Ray Train job; exports open_clip-loadable weights with a manifest
(sha256, command, config, data size, times, loss, retrieval accuracy, zero-shot UARs).
The shipped ``dferclip-rn-micro`` + ``synth`` weights came from this command (docs/pretrain.md).

    dferclip pretrain --config configs/pretrain/synth.yaml
    dferclip pretrain --config configs/pretrain/synth.yaml --set steps=20 --set images=2000
"""

from __future__ import annotations

from pipeline.cli import run_cli, stage_parser
from pipeline.pretrain.config import PretrainConfig, load_pretrain_config

__all__ = ["main", "cli"]


def main(cfg: PretrainConfig, command: list[str] | None = None) -> dict:
    """The stage on a loaded config: :func:`pipeline.pretrain.run.run_pretrain`; returns the manifest."""
    from pipeline.pretrain.run import run_pretrain

    return run_pretrain(cfg, command)


def cli(argv=None) -> int:
    parser = stage_parser("dferclip pretrain", __doc__, config_required=False)
    args = parser.parse_args(argv)

    def body() -> None:
        from pipeline.pretrain.run import command_line

        main(load_pretrain_config(args.config, args.overrides), command_line(argv))

    return run_cli(body, interrupted="interrupted; pretraining does not resume: a re-run starts over")


if __name__ == "__main__":
    raise SystemExit(cli())
