"""Export a trained checkpoint for serving outside PyTorch (docs/export.md).

``--format onnx``: the image encoder + temporal model with the class text features folded in as
a constant, one ONNX graph mapping (B, T, 3, H, W) float32 RGB in [0, 1] to (B, C) logits (batch
dynamic). Beside it, ``<out>.json`` (also inside the file as metadata): class names, T, input
size, normalisation, the recorded crop settings, so a consumer can preprocess as predict does.
The export is run by onnxruntime and compared with the PyTorch model before it is kept: the
largest relative difference is printed, and over ``--tolerance`` nothing is written (exit 2).
Needs ``pip install 'dferclip[export]'`` (onnx, onnxruntime).

    dferclip export --format onnx --checkpoint runs/train/<run>/final/model.pt --out model.onnx
"""

from __future__ import annotations

from pipeline.cli import command_parser, run_cli
from pipeline.export import FORMATS, export_onnx

__all__ = ["main", "cli"]


def main(checkpoint: str, out: str, *, fmt: str = "onnx", tolerance: float = 1e-4):
    """The stage: :func:`pipeline.export.export_onnx`; returns its report."""
    if fmt not in FORMATS:  # argparse already refuses it; a caller from Python gets the same
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    return export_onnx(checkpoint, out, tolerance=tolerance)


def _print_report(report, tolerance: float) -> None:
    m = report.metadata
    print(f"wrote {report.path} and {report.sidecar}")
    print(
        f"input {m['input']['shape']} float32 RGB in [0, 1] -> logits (batch, {len(m['class_names'])}): "
        f"{', '.join(m['class_names'])}"
    )
    print(
        f"onnxruntime vs PyTorch: max relative difference {report.max_rel_diff:.3g} "
        f"(batches {', '.join(map(str, report.check_batches))}; tolerance {tolerance:g})"
    )


def cli(argv=None) -> int:
    parser = command_parser("dferclip export", __doc__)
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="onnx", help="export format (onnx)")
    parser.add_argument("--checkpoint", required=True, help="a project checkpoint (e.g. <run>/final/model.pt)")
    parser.add_argument("--out", required=True, help="the file to write, e.g. model.onnx")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest accepted relative difference of onnxruntime's logits to PyTorch's (default 1e-4)",
    )
    args = parser.parse_args(argv)

    def body() -> None:
        _print_report(main(args.checkpoint, args.out, fmt=args.fmt, tolerance=args.tolerance), args.tolerance)

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(cli())
