"""Benchmark of the describe stage: concurrent vs one-after-another requests, and a cached re-run.

Starts the test suite's OpenAI-compatible server (tests/llm/openai_server.py) on 127.0.0.1 with
200 ms latency per answer, in its own process as a real endpoint would be (in this process its
threads would compete with the client for the GIL), then asks for 11 classes x 5 samples (55
answers) three ways:

- sequential: ``describe.concurrency=1``, fresh cache — the baseline, measured in this run;
- concurrent: the default ``describe.concurrency``, fresh cache;
- cached: the concurrent run again on its cache, which must make zero requests.

Each run is the whole stage (``stages.describe.main``: cache, requests, validation, writing the
set), in this process, after one warm-up run so that importing the ``openai`` client and
opening connections are not timed.

Prints wall times, the concurrent/sequential ratio (target <= 0.15) and the cached re-run's
request count (target 0) and time (target < 2 s). Request counts come from the server's log.

  .venv/bin/python bench/describe.py
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import DescribeConfig, load_config  # noqa: E402
from pipeline.llm import read_description_set  # noqa: E402
from stages import describe  # noqa: E402

CLASSES, SAMPLES, LATENCY = 11, 5, 0.2


class Server:
    """tests/llm/openai_server.py in a subprocess; counts come from its /v1/_stats."""

    def __enter__(self) -> Server:
        script = REPO / "tests/llm/openai_server.py"
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "--port", "0", "--latency", str(LATENCY)], stdout=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()  # "serving http://127.0.0.1:PORT/v1 ..."
        self.base_url = line.split()[1]
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.base_url}/_stats", timeout=10) as r:
            return json.loads(r.read())


def _run(server: Server, root: Path, concurrency: int) -> tuple[float, int]:
    cfg = load_config(
        None,
        [
            f"storage.root={root}",
            "dataset.name=mafw",
            "describe.enabled=true",
            f"describe.base_url={server.base_url}",
            "describe.model=bench-model",
            f"describe.samples={SAMPLES}",
            f"describe.concurrency={concurrency}",
        ],
    )
    before = server.stats()["chat_requests"]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the stage's progress lines
        path = describe.main(cfg)  # the whole stage: cache, requests, validation, the set's YAML
    seconds = time.perf_counter() - start
    dset = read_description_set(path)
    assert len(dset.classes) == CLASSES and all(len(v) == SAMPLES for v in dset.classes.values())
    return seconds, server.stats()["chat_requests"] - before


def main() -> int:
    import openai  # noqa: F401 - imported up front so no timing below pays for it

    default = DescribeConfig().concurrency
    with Server() as server, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _run(server, tmp / "warmup", default)  # first-request costs (client, connections) out of the way
        seq_s, seq_n = _run(server, tmp / "sequential", 1)
        par_s, par_n = _run(server, tmp / "concurrent", default)
        hit_s, hit_n = _run(server, tmp / "concurrent", default)
        peak = server.stats()["max_in_flight"]
    ratio = par_s / seq_s
    print(
        f"describe bench: {CLASSES} classes x {SAMPLES} samples = {CLASSES * SAMPLES} answers, "
        f"server latency {LATENCY * 1000:.0f} ms"
    )
    print(f"  sequential (concurrency 1):        {seq_s:6.2f} s  {seq_n} requests")
    print(f"  concurrent (default concurrency {default}): {par_s:6.2f} s  {par_n} requests  (peak in flight {peak})")
    print(f"  ratio concurrent / sequential:     {ratio:6.3f}  (target <= 0.15) {'OK' if ratio <= 0.15 else 'MISSED'}")
    ok_cache = hit_n == 0 and hit_s < 2.0
    print(
        f"  cached re-run:                     {hit_s:6.2f} s  {hit_n} requests  "
        f"(target 0 requests, < 2 s) {'OK' if ok_cache else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
