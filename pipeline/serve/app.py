"""The Ray Serve application of ``dferclip serve``: two deployments.

- ``Decoder`` (CPU), the HTTP ingress: routes, the body size limit, the request time limit,
  back-pressure (``max_ongoing_requests`` + ``max_queued_requests``: beyond them Serve answers
  503 at once instead of queueing without bound); then, in one of ``serve.decoder_threads``
  threads, the upload is written to a temporary folder and loaded with predict's own
  :class:`pipeline.predict.ClipLoader` (the preprocess stage's decode, face detection, tracking
  and crops; a timeline for a long video as predict's ``timeline`` setting says), with the serve
  limits as the per-clip caps; and the answer: predict's JSON row
  (:func:`pipeline.predict_output.json_row` of :func:`pipeline.predict.make_prediction`).
- ``Model`` (CPU or GPU): :mod:`pipeline.serve.backends` (PyTorch or onnxruntime), the clips of
  concurrent requests batched into one forward pass by ``@serve.batch``.

Why the ingress decodes (bench/serve.py prints CPU per request by process): every Serve hop
costs CPU on both sides (the call, pickling, the event loops), so a separate no-CPU ingress in
front of the decoder, passing the upload along and the loaded clip back, cost about a fifth of
each request's CPU. The decode still has replicas and CPUs of its own, apart from the model's;
only the model's uint8 frames cross a process boundary.

Routes: ``GET /healthz`` (200 and what is served; Serve's own ``/-/healthz`` is the proxy's),
``POST /predict`` (docs/serve.md: a raw video, a multipart form, or JSON frames; ``?top=K`` adds
the K most probable classes, ``?name=`` names a raw upload). Answers: 200 with predict's JSON;
400 a malformed body, 404 an unknown route, 405 a wrong method, 413 over a size/length limit,
422 a video that cannot be decoded (predict's error row: ``ok`` false, ``error`` the reason),
503 overloaded, 504 over ``serve.request_timeout_s``. Every error body has ``error``.

:func:`build_app` makes the application from a :class:`ServeSettings`; :func:`app_builder` is
the same for ``serve run`` / ``serve deploy`` config files (cluster/serve.yaml).
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from pipeline.serve.backends import load_backend
from pipeline.serve.requests import BadRequest, materialise, parse_upload
from pipeline.serve.settings import CAPS, ServeSettings, settings_from

__all__ = ["ServeSettings", "settings_from", "build_app", "app_builder", "start", "Decoder", "Model"]

logger = logging.getLogger(__name__)


def _json(status: int, body: Any, headers: dict | None = None):
    from starlette.responses import Response

    text = body if isinstance(body, str) else json.dumps(body)
    return Response(text, status_code=status, media_type="application/json", headers=headers)


def _error(status: int, message: str, **more):
    return _json(status, {"error": message, **more})


@serve.deployment(ray_actor_options={"num_cpus": 1})
class Model:
    """Probabilities of stacked clips; concurrent requests share one forward pass."""

    def __init__(self, settings: ServeSettings, threads: int | None = None):
        s = settings.serve
        self.backend = load_backend(settings.info, settings.device, threads, s.max_batch_size)
        self.rows = 0
        self.batches = 0
        self.probabilities.set_max_batch_size(s.max_batch_size)
        self.probabilities.set_batch_wait_timeout_s(s.batch_wait_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def probabilities(self, videos: list[np.ndarray]) -> list[np.ndarray]:
        # Each request is one clip's row or a timeline's windows: one forward pass for all.
        sizes = [len(v) for v in videos]
        probs = await asyncio.to_thread(self.backend.probabilities, np.concatenate(videos))
        self.rows += len(probs)
        self.batches += 1
        return list(np.split(probs, np.cumsum(sizes)[:-1]))

    def stats(self) -> dict:
        return {"rows": self.rows, "batches": self.batches}


@serve.deployment(ray_actor_options={"num_cpus": 1})
class Decoder:
    """The HTTP ingress, which also decodes and crops: a request's body is checked, decoded and
    cropped in this replica, and only the model's (N, T, S, S, 3) uint8 frames travel on to
    :class:`Model`: two Serve calls per request (proxy -> here -> model) instead of three
    (docs/serve.md, "How it runs")."""

    def __init__(self, model, settings: ServeSettings):
        from pipeline.predict import ClipLoader

        self.model, self.settings = model, settings
        self.limit = int(settings.serve.max_upload_mb * 1024 * 1024)
        self.loader = ClipLoader(settings.info.num_frames, settings.info.image_size, settings.loader_prep())
        # serve.decoder_threads uploads decode at once (OpenCV and PyAV release the GIL while
        # they work); the other requests in progress wait here for a thread, cheaply.
        self.threads = ThreadPoolExecutor(settings.serve.decoder_threads, thread_name_prefix="dferclip-decode")

    async def _body(self, request) -> bytes:
        size = request.headers.get("content-length")
        limit_mb = self.settings.serve.max_upload_mb
        if size is not None:
            if not size.isdigit():
                raise BadRequest(400, f"Content-Length is not a number: {size!r}")
            if int(size) > self.limit:
                raise BadRequest(413, f"body of {int(size)} bytes, over serve.max_upload_mb = {limit_mb:g}")
        chunks, total = [], 0
        async for chunk in request.stream():  # a chunked upload is counted as it arrives
            total += len(chunk)
            if total > self.limit:
                raise BadRequest(413, f"body over serve.max_upload_mb = {limit_mb:g}")
            chunks.append(chunk)
        return b"".join(chunks)

    def _top(self, request) -> int | None:
        raw = request.query_params.get("top")
        if raw is None:
            return None
        if not raw.isdigit() or int(raw) < 1:
            raise BadRequest(400, f"top: must be a whole number >= 1, got {raw!r}")
        return int(raw)

    def _load(self, upload):
        """An upload -> a LoadedClip / LoadedTimeline, or (status, message) for a bad one."""
        from pipeline.data.video import ClipOverCap, UnreadableClip
        from pipeline.predict import _reason

        with tempfile.TemporaryDirectory(prefix="dferclip-serve-") as tmp:
            source = materialise(upload, Path(tmp))
            try:
                return self.loader.load_input(source, self.settings.timeline)
            except ClipOverCap as exc:
                key = CAPS.get(exc.key)
                # The caps' message names the temporary file and the preprocess key: name the
                # upload and the key that set the cap here.
                text = str(exc).replace(str(source), upload.name)
                if key is not None and getattr(self.settings.serve, key) == exc.cap:
                    text = text.replace(f"preprocess.{exc.key}", f"serve.{key}")
                return (413, text)
            except UnreadableClip as exc:
                return (422, str(exc).replace(str(source), upload.name))
            except Exception as exc:  # noqa: BLE001 — any failure on one upload is that upload's answer
                return (422, _reason(exc).replace(str(source), upload.name))

    async def _predict(self, request):
        from pipeline.predict import Prediction, make_prediction
        from pipeline.predict_output import json_row

        top = self._top(request)
        upload = parse_upload(
            request.headers.get("content-type"),
            await self._body(request),
            request.query_params.get("name"),
            self.settings.serve.max_video_frames,
        )
        clip = await asyncio.get_running_loop().run_in_executor(self.threads, self._load, upload)
        if isinstance(clip, tuple):  # (status, reason): predict's error row, with that status
            status, reason = clip
            return _json(status, json_row(Prediction(upload.name, error=reason), top))
        rows = clip.videos if hasattr(clip, "videos") else clip.video[None]
        probs = await self.model.probabilities.remote(rows)
        names = list(self.settings.info.class_names)
        return _json(200, json_row(make_prediction(upload.name, clip, probs, names), top))

    def _health(self) -> dict:
        info = self.settings.info
        return {
            "status": "ok",
            "backend": info.backend,
            "model": Path(info.source).name,
            "classes": list(info.class_names),
            "num_frames": info.num_frames,
            "image_size": info.image_size,
        }

    async def __call__(self, request):
        from ray.serve.exceptions import BackPressureError

        route, method = request.url.path.rstrip("/") or "/", request.method
        if route == "/healthz":
            return _json(200, self._health()) if method in ("GET", "HEAD") else _error(405, "use GET /healthz")
        if route != "/predict":
            return _error(404, f"no route {route}; POST /predict, GET /healthz")
        if method != "POST":
            return _error(405, f"{method} /predict: use POST with a video, a multipart form or JSON frames")
        started = time.monotonic()
        timeout = self.settings.serve.request_timeout_s
        try:
            return await asyncio.wait_for(self._predict(request), timeout)
        except BadRequest as exc:
            return _error(exc.status, exc.message)
        except TimeoutError:
            return _error(504, f"no answer within serve.request_timeout_s = {timeout:g} s")
        except BackPressureError:
            return _json(
                503, {"error": "overloaded: every decode/model place is busy; retry later"}, {"Retry-After": "1"}
            )
        except Exception:  # noqa: BLE001 — a bug must answer 500, not take the replica down
            logger.exception("serve: request failed after %.1f s", time.monotonic() - started)
            return _error(500, "internal error; the server log has the details")


def build_app(settings: ServeSettings, decoder=None):
    """The application: Decoder (HTTP ingress + decode/crop) -> Model, sized and bounded by
    ``settings.serve``. ``decoder``: the ingress deployment, :class:`Decoder` when None
    (bench/serve.py passes a subclass that decodes only once, to measure Serve's own part)."""
    s = settings.serve
    threads = max(1, int(s.cpus_per_model)) if s.gpus_per_model == 0 else None
    model = Model.options(
        num_replicas=s.models,
        ray_actor_options={"num_cpus": s.cpus_per_model, "num_gpus": s.gpus_per_model},
        # Enough places for a full batch to wait while the one before it runs.
        max_ongoing_requests=2 * s.max_batch_size,
        max_queued_requests=s.max_queued_requests + s.max_ongoing_requests,
    ).bind(settings, threads)
    ingress = decoder or Decoder
    return ingress.options(
        num_replicas=s.decoders,
        ray_actor_options={"num_cpus": s.cpus_per_decoder},
        max_ongoing_requests=s.max_ongoing_requests,
        max_queued_requests=s.max_queued_requests,
    ).bind(model, settings)


APP_ARGS = ("checkpoint", "onnx", "config", "set", "device")


def app_builder(args: dict):
    """For ``serve run pipeline.serve.app:app_builder checkpoint=... [onnx=...] [config=...]``
    and Serve config files (cluster/serve.yaml; ``set``: a list of ``--set`` overrides): the
    same application as ``dferclip serve``."""
    from pipeline.errors import UserError

    args = dict(args or {})
    unknown = sorted(set(args) - set(APP_ARGS))
    if unknown:
        raise UserError(f"serve: unknown application args {unknown}; known: {', '.join(APP_ARGS)}")
    overrides = args.get("set") or []
    if isinstance(overrides, str):
        overrides = [overrides]
    settings = settings_from(
        args.get("checkpoint"), args.get("onnx"), args.get("config"), list(overrides), args.get("device", "auto")
    )
    return build_app(settings)


APP_NAME = "dferclip"


def start(settings: ServeSettings, *, blocking: bool = False) -> str:
    """Start Serve on the current Ray (HTTP on ``settings.serve`` host:port) and deploy the app;
    returns its base URL. Serve's proxy also stops waiting on a request at request_timeout_s
    (+5 s: the app's own limit answers first, with a message)."""
    s = settings.serve
    serve.start(
        http_options={"host": s.host, "port": s.port, "request_timeout_s": s.request_timeout_s + 5},
    )
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=blocking)
    return f"http://{s.host}:{s.port}"
