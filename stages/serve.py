"""Serve a checkpoint over HTTP with Ray Serve: predict's JSON for each posted video (docs/serve.md).

    dferclip serve --checkpoint runs/train/<run>/final/model.pt            # http://127.0.0.1:8000
    dferclip serve --onnx model.onnx --host 0.0.0.0 --port 8000           # the ONNX export, onnxruntime
    dferclip serve --config configs/dfew.yaml --checkpoint model.pt      # serve/preprocess/timeline sections

    curl --data-binary @clip.mp4 'http://127.0.0.1:8000/predict?name=clip.mp4&top=3'
    curl -F video=@clip.mp4 http://127.0.0.1:8000/predict
    curl -H 'Content-Type: application/json' -d '{"frames": ["<base64 JPEG>", ...]}' .../predict
    curl http://127.0.0.1:8000/healthz

Each answer is the JSON object ``dferclip predict --json`` prints for the same clip. The config's
``serve`` section sets the limits (upload size, video length, request time), back-pressure
(503 beyond max_ongoing_requests + max_queued_requests) and sizing; crops as predict makes them
(the config's preprocess section, else the checkpoint's recorded settings). Joins the Ray
cluster at RAY_ADDRESS when set, else starts a local one; runs until Ctrl-C.
"""

from __future__ import annotations

import logging
import signal
import time

from pipeline.cli import run_cli, stage_parser

__all__ = ["main", "cli"]

logger = logging.getLogger(__name__)


def main(settings, *, wait: bool = True) -> str:
    """Start the app (:func:`pipeline.serve.app.start`) on Ray and return its URL; with ``wait``,
    serve until Ctrl-C or SIGTERM, then shut Serve (and a Ray this command started) down."""
    import ray
    from ray import serve

    from pipeline.raycluster import ensure_ray
    from pipeline.serve.app import start

    ensure_ray()
    if not wait:
        return _start(start, settings)

    # After Ray's start-up, before the app's: Ray's own SIGTERM handler would end the process at
    # once and leave a local Ray's helper processes behind.
    signal.signal(signal.SIGTERM, _stop)
    try:
        _start(start, settings)
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        ray.shutdown()


def _stop(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (kill, docker stop) stops as Ctrl-C does: cleanly


def _start(start, settings) -> str:
    url = start(settings)
    info = settings.info
    logger.info(
        "serve: %s (%s, %d classes) at %s/predict; health: %s/healthz",
        info.source,
        info.backend,
        len(info.class_names),
        url,
        url,
    )
    return url


def _overrides(args) -> list[str]:
    """--set's overrides, then --host and --port as the serve keys they stand for."""
    flags = {"serve.host": args.host, "serve.port": args.port}
    return list(args.overrides) + [f"{key}={value}" for key, value in flags.items() if value is not None]


def cli(argv=None) -> int:
    parser = stage_parser("dferclip serve", __doc__, config_required=False)
    parser.add_argument("--checkpoint", help="a project checkpoint (e.g. <run>/final/model.pt)")
    parser.add_argument("--onnx", help="serve this `dferclip export` file with onnxruntime instead")
    parser.add_argument("--host", help="listen address (default: serve.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: serve.port, 8000)")
    parser.add_argument(
        "--device", default="auto", help="model device: cpu, cuda (default: cuda when serve.gpus_per_model > 0)"
    )
    args = parser.parse_args(argv)
    if args.overrides and not args.config:
        parser.error("--set needs --config")
    if not args.checkpoint and not args.onnx:
        parser.error("give --checkpoint, or --onnx with an exported model")

    def body() -> None:
        from pipeline.serve.settings import settings_from

        main(settings_from(args.checkpoint, args.onnx, args.config, _overrides(args), args.device))

    return run_cli(body, interrupted="serve: stopped")


if __name__ == "__main__":
    raise SystemExit(cli())
