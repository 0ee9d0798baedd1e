"""dferclip serve under load: 8 concurrent HTTP clients vs one client sending one request at a time.

Starts a local Ray, a DFER-CLIP checkpoint (random weights; micro by default, ``--arch``
ViT-B-32 for a full-size one, ``--device cuda`` to serve it on a GPU) and the Serve app of
``dferclip serve`` on 127.0.0.1, then POSTs the same generated clip (pipeline.synth) as a raw
video body: ``--requests`` one at a time from a single client, then the same number from
``--clients`` threads at once; two rounds of each, alternating (sequential, concurrent,
sequential, concurrent) so background load hits both alike, after a warm-up in both modes (so
neither pays one-off costs: the decoder threads' detectors, the clients' connections). Prints
each mode's throughput and p50/p99 latency, the CPU milliseconds per request of each kind of
process (read from /proc for this process and every process under it: the client, Serve's
proxy, the decoder and model replicas, the rest of Ray; steadier than wall time on a shared
machine), the CPU they spend with no request at all, the throughput ratio, and the model
replica's mean batch size (what ``@serve.batch`` made of the concurrency). Every answer must
be 200.

Then the same measurement of the same app whose decoder decodes the clip once and reuses it
(``--no-floor`` skips it): Serve's own part of a request, and how well concurrency shares it;
then the CPU of one request's decode and crop, measured in this process: the part that both
modes pay in full. About 2 minutes with the micro model.

    python bench/serve.py [--clients 8] [--requests 48] [--frames 16] [--size 160x128] [--set serve.KEY=VALUE ...]
                          [--no-floor] [--arch dferclip-micro] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pipeline.datasets import CLASSES_7
from pipeline.model import build_model, save_checkpoint
from pipeline.synth import render_clip, write_video


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of this process and of every process below it (the
    local Ray this bench started: replicas, Serve's proxy and controller, raylet, GCS), by pid,
    with the process's role. From /proc: CPU time per request is what a loaded machine distorts
    least."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, list[str]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stats[int(pid)] = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    out: dict[int, tuple[str, float]] = {}
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:  # Ray retitles its workers: ray::ServeReplica:<app>:<deployment>[.<method>]
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if pid == os.getpid():
            role = "client (this process)"
        elif "ServeReplica:" in title:
            role = title.split("ServeReplica:", 1)[1].split(":")[-1].split(".")[0].split()[0] + " replicas"
        elif "ProxyActor" in title:
            role = "HTTP proxy"
        else:
            role = "rest of Ray"
        fields = stats[pid]
        out[pid] = (role, (int(fields[11]) + int(fields[12])) / tick)  # utime + stime
    return out


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _cpu_by_role(before: dict, after: dict) -> dict[str, float]:
    spent: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        spent[role] = spent.get(role, 0.0) + seconds - before.get(pid, (role, 0.0))[1]
    return spent


def decode_once_ingress():
    """The app's ingress deployment with its decode and crop done once: every request after the
    first reuses that clip (same model call, same answer), so its run measures Serve's own part
    of a request: the proxy, the two hops, the batching, the JSON answer."""
    from ray import serve

    from pipeline.serve.app import Decoder

    class DecodeOnce(Decoder.func_or_class):
        def _load(self, upload):
            clip = getattr(self, "_clip", None)
            if clip is None:
                clip = self._clip = super()._load(upload)
            return clip

    return serve.deployment(name="Decoder", ray_actor_options={"num_cpus": 1})(DecodeOnce)


def measure(url: str, data: bytes, clients: int, requests: int, idle_s: float) -> dict:
    """Warm-up, the idle CPU, then two alternating rounds of ``requests`` one at a time and
    ``requests`` from ``clients`` threads. A plain keep-alive http.client connection per client
    thread: the clients share the 2 cores with the server, so they should cost it little."""
    from urllib.parse import urlsplit

    from ray import serve

    parts = urlsplit(url)
    local = threading.local()

    def post() -> float:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        t0 = time.perf_counter()
        conn.request("POST", parts.path, body=data, headers={"Content-Type": "video/mp4"})
        answer = conn.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{answer.status}: {body[:200]!r}")
        return time.perf_counter() - t0

    # Warm-up in both modes, so neither pays a one-off cost in its measured rounds: the
    # replicas' first calls, every decoder thread's own face detector (built on its first
    # clip), the concurrent clients' connections, the first batches.
    pool = ThreadPoolExecutor(clients)
    for _ in range(2 * clients):
        post()
    list(pool.map(lambda _: post(), range(4 * clients)))
    model = serve.get_deployment_handle("Model", app_name="dferclip")
    warm = model.stats.remote().result()
    # What the processes of this run spend with no request at all (Serve's control loops,
    # metrics, health checks): CPU the concurrent clients cannot have.
    before, t0 = _cpu_seconds(), time.perf_counter()
    time.sleep(idle_s)
    idle = _cpu_by_role(before, _cpu_seconds())
    idle_wall = time.perf_counter() - t0
    lat: dict[str, list[float]] = {"sequential": [], "concurrent": []}
    wall: dict[str, float] = {"sequential": 0.0, "concurrent": 0.0}
    cpu: dict[str, dict[str, float]] = {"sequential": {}, "concurrent": {}}

    def run(mode: str, work) -> None:
        before, t0 = _cpu_seconds(), time.perf_counter()
        lat[mode] += work()
        wall[mode] += time.perf_counter() - t0
        for role, spent in _cpu_by_role(before, _cpu_seconds()).items():
            cpu[mode][role] = cpu[mode].get(role, 0.0) + spent

    with pool:
        for _ in range(2):
            run("sequential", lambda: [post() for _ in range(requests)])
            run("concurrent", lambda: list(pool.map(lambda _: post(), range(requests))))
    stats = {key: value - warm[key] for key, value in model.stats.remote().result().items()}  # measured rounds only
    n = 2 * requests
    return {
        "n": n,
        "rps": {mode: n / wall[mode] for mode in wall},
        "lat": lat,
        "cpu_ms": {mode: {role: 1000 * v / n for role, v in cpu[mode].items()} for mode in cpu},
        "idle": {role: v / idle_wall for role, v in idle.items()},
        "stats": stats,
    }


def report(m: dict, clients: int) -> None:
    n = m["n"]
    for mode in ("sequential", "concurrent"):
        who = "1 client, one at a time" if mode == "sequential" else f"{clients} concurrent clients"
        print(
            f"  {who:<26} {m['rps'][mode]:6.1f} req/s   p50 {1000 * _pct(m['lat'][mode], 50):6.0f} ms   "
            f"p99 {1000 * _pct(m['lat'][mode], 99):6.0f} ms   ({n} requests)"
        )
    cpu = m["cpu_ms"]
    print("  CPU ms per request (all processes of this run; sequential / concurrent):")
    for role in sorted(set(cpu["sequential"]) | set(cpu["concurrent"])) + ["total"]:
        seq, conc = (
            sum(cpu[mode].values()) if role == "total" else cpu[mode].get(role, 0.0)
            for mode in ("sequential", "concurrent")
        )
        print(f"    {role:<24} {seq:6.1f} / {conc:6.1f}")
    busy = ", ".join(f"{role} {100 * v:.0f}%" for role, v in sorted(m["idle"].items()) if v > 0)
    print(f"  idle CPU, no requests: {100 * sum(m['idle'].values()):.0f}% of a core ({busy})")
    print(f"  throughput ratio concurrent / sequential: {m['rps']['concurrent'] / m['rps']['sequential']:.2f}x")
    rows, batches = m["stats"]["rows"], max(1, m["stats"]["batches"])
    print(f"  model replica: {rows} clips in {batches} forward passes (mean batch {rows / batches:.2f})")
    print(
        "  median latency ratio concurrent / sequential: "
        f"{statistics.median(m['lat']['concurrent']) / statistics.median(m['lat']['sequential']):.2f}x"
    )


def decode_cpu_ms(settings, data: bytes, loads: int = 40) -> float:
    """CPU-ms of one request's decode and crop in this process (predict's ClipLoader, one
    thread, the decoder's own path: the upload written to a temporary folder and loaded): what
    both modes pay per request, which no concurrency shares."""
    from pipeline.predict import ClipLoader
    from pipeline.serve.requests import materialise, parse_upload

    loader = ClipLoader(settings.info.num_frames, settings.info.image_size, settings.loader_prep())

    def load() -> None:
        upload = parse_upload("video/mp4", data, None, settings.serve.max_video_frames)
        with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
            loader.load_input(materialise(upload, Path(folder)), settings.timeline)

    for _ in range(3):
        load()
    t0 = time.process_time()
    for _ in range(loads):
        load()
    return 1000 * (time.process_time() - t0) / loads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=48, help="requests per round and mode")
    ap.add_argument("--frames", type=int, default=16, help="frames of the posted clip")
    ap.add_argument("--size", default="160x128", help="WxH of the posted clip")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="serve.KEY=VALUE",
        help="a serve setting over the bench's sizing, e.g. serve.decoders=1 (repeatable)",
    )
    ap.add_argument("--idle-s", type=float, default=5.0, help="seconds of no requests, to measure the idle CPU")
    ap.add_argument("--no-floor", action="store_true", help="skip the decode-once run (Serve's own part)")
    ap.add_argument(
        "--arch",
        default="dferclip-micro",
        help="the served model's image encoder, random weights: dferclip-micro (T=8, 32 px) or an open_clip "
        "architecture at the paper's settings (T=16), e.g. ViT-B-32",
    )
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: the model replica on one GPU")
    args = ap.parse_args()

    import ray
    from ray import serve

    from pipeline.config import ModelConfig
    from pipeline.serve.app import APP_NAME, build_app, settings_from, start

    w, h = (int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    torch.manual_seed(0)
    if args.arch == "dferclip-micro":
        cfg = ModelConfig(
            clip_model="dferclip-micro",
            pretrained=None,
            num_frames=8,
            temporal_heads=2,
            temporal_head_dim=32,
            temporal_mlp_dim=128,
            n_ctx=4,
            text_source="class_names",
        )
    else:
        cfg = ModelConfig(clip_model=args.arch, pretrained=None, text_source="class_names")
    ckpt = save_checkpoint(build_model(cfg, list(CLASSES_7)), tmp / "model.pt")
    write_video(
        tmp / "clip.mp4", render_clip("happiness", np.random.default_rng(0), num_frames=args.frames, size=(w, h)), 12
    )
    data = (tmp / "clip.mp4").read_bytes()

    # On the 2-core machine: 4 logical CPUs, so 2 decoders and the model replica fit beside Serve's
    # own actors; with a GPU, the machine's own counts.
    ray.init(
        num_cpus=4 if args.device == "cpu" else None,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=tempfile.mkdtemp(prefix="rt", dir="/tmp"),
    )
    sizing = [
        f"serve.port={_free_port()}",
        "serve.decoders=2",
        "serve.decoder_threads=2",
        "serve.cpus_per_decoder=1",
        "serve.cpus_per_model=1",
        f"serve.max_ongoing_requests={2 * args.clients}",
        f"serve.max_queued_requests={4 * args.clients}",
        *(["serve.gpus_per_model=1"] if args.device == "cuda" else []),
        *args.overrides,
    ]
    try:
        settings = settings_from(str(ckpt), None, None, sizing, args.device)
        s = settings.serve
        url = start(settings) + "/predict"
        real = measure(url, data, args.clients, args.requests, args.idle_s)
        floor = None
        if not args.no_floor:
            serve.delete(APP_NAME)
            serve.run(build_app(settings, decode_once_ingress()), name=APP_NAME, route_prefix="/")
            floor = measure(url, data, args.clients, args.requests, args.idle_s)
    finally:
        serve.shutdown()
        ray.shutdown()

    print(
        f"serve: {args.arch} DFER-CLIP (T={settings.info.num_frames}, {settings.info.image_size} px) on "
        f"{args.device}, a {args.frames}-frame {w}x{h} clip ({len(data) / 1e3:.0f} KB) per request; "
        f"{os.cpu_count()} cores; {s.decoders} decoder (ingress) replicas x {s.decoder_threads} threads, "
        f"{s.models} model replica(s), batches of <= {s.max_batch_size} waiting <= {1000 * s.batch_wait_s:g} ms"
    )
    report(real, args.clients)
    if floor is not None:
        print("Serve's own part: the same app, its decoder decoding the clip once and reusing it for every request")
        report(floor, args.clients)
        print(
            f"  decode and crop of this clip (predict's ClipLoader, this process, 1 thread): "
            f"{decode_cpu_ms(settings, data):.1f} CPU-ms per request, paid in full in both modes"
        )


if __name__ == "__main__":
    main()
