"""Stages as Ray jobs: `ray job submit` and `dferclip submit` against a real `ray start --head`.

One head for the module (``ray start --head --block`` on 127.0.0.1, free ports, private
RAY_TMPDIR, token authentication as Ray 2.60 turns it on by default). It is stopped by
signalling its own process group — not with ``ray stop``, which kills every Ray process on
the machine, including the session's ``ray_local`` cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.jobpaths import JOB_CONFIG_ENV, is_this_machine, nodes_are_this_machine
from pipeline.jobs import (
    DEFAULT_EXCLUDES,
    absolute_roots,
    auth_headers,
    build_runtime_env,
    entrypoint,
    project_dependencies,
    resolve_address,
)
from pipeline.typed import ConfigError
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- without a cluster


def test_runtime_env_has_working_dir_excludes_and_env_vars_by_name(monkeypatch):
    monkeypatch.setenv("DFERCLIP_SOME_KEY", "s3cr3t")
    env = build_runtime_env(ROOT, env_names=["DFERCLIP_SOME_KEY"])
    assert env["working_dir"] == str(ROOT)
    assert {".venv", "runs", ".git"} <= set(env["excludes"])
    assert env["env_vars"] == {"DFERCLIP_SOME_KEY": "s3cr3t"}
    assert "pip" not in env  # opt-in: a local cluster already has the dependencies

    with_deps = build_runtime_env(ROOT, install_deps=True)
    assert with_deps["pip"] == project_dependencies(ROOT)
    assert any(d.startswith("torch") for d in with_deps["pip"])
    assert not any(d.startswith("ray") for d in with_deps["pip"]), "the cluster's own Ray must be used"

    monkeypatch.delenv("DFERCLIP_SOME_KEY")
    with pytest.raises(UserError, match="DFERCLIP_SOME_KEY: not set"):
        build_runtime_env(ROOT, env_names=["DFERCLIP_SOME_KEY"])


def test_runtime_env_file_is_the_base(tmp_path):
    base = tmp_path / "env.yaml"
    base.write_text(yaml.safe_dump({"excludes": ["data/"], "env_vars": {"PYTHONUNBUFFERED": "1"}}))
    env = build_runtime_env(ROOT, base_file=str(base))
    assert "data/" in env["excludes"] and set(DEFAULT_EXCLUDES) <= set(env["excludes"])
    assert env["env_vars"] == {"PYTHONUNBUFFERED": "1"}
    base.write_text("- a list\n")
    with pytest.raises(UserError, match="mapping"):
        build_runtime_env(ROOT, base_file=str(base))


def test_entrypoint_and_address(monkeypatch):
    cmd = entrypoint("train", "configs/my cfg.yaml", ["train.epochs=2"], ["--folds", "all"])
    assert cmd == "python -m stages.train --config 'configs/my cfg.yaml' --set train.epochs=2 --folds all"
    with pytest.raises(UserError, match="unknown stage"):
        entrypoint("submit", "x.yaml")

    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match="--address"):
        resolve_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "http://a:8265")
    assert resolve_address(None) == "http://a:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://b:8265")
    assert resolve_address(None) == "http://b:8265"
    assert resolve_address("http://c:8265") == "http://c:8265"


def test_auth_token_sources(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert auth_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("fromhome\n")
    assert auth_headers() == {"Authorization": "Bearer fromhome"}
    (tmp_path / "tok").write_text("frompath")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert auth_headers() == {"Authorization": "Bearer frompath"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "fromenv")
    assert auth_headers() == {"Authorization": "Bearer fromenv"}
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(UserError, match="RAY_AUTH_TOKEN_PATH"):
        auth_headers()


def _job_env(job_id: str = "raysubmit_test123") -> str:
    """What Ray's job supervisor puts in a job driver's environment (job_supervisor.py, Ray 2.60)."""
    return json.dumps(
        {"runtime_env": {"working_dir": "gcs://_ray_pkg_test.zip"}, "metadata": {"job_submission_id": job_id}}
    )


def test_relative_roots_are_config_errors_inside_a_ray_job_only(monkeypatch, tmp_path):
    assert JOB_CONFIG_ENV == RAY_JOB_CONFIG_JSON_ENV_VAR  # the variable Ray's job supervisor sets
    relative = ["storage.root=runs/demo", "dataset.root=data/dfew", "dataset.annotations=data/labels.csv"]
    monkeypatch.delenv(JOB_CONFIG_ENV, raising=False)
    assert load_config(None, relative).storage.root == "runs/demo"  # a local run resolves it in its own cwd

    monkeypatch.setenv(JOB_CONFIG_ENV, _job_env())
    with pytest.raises(ConfigError) as err:
        load_config(None, relative)
    problems = err.value.problems
    assert [p.split(":", 1)[0] for p in problems] == ["storage.root", "dataset.root", "dataset.annotations"]
    assert "'runs/demo' is a relative path, and this is Ray job raysubmit_test123" in problems[0]
    assert "--set storage.root=" in problems[0] and "dferclip submit" in problems[0]
    # Absolute paths, ~ and URIs are fine; the default root ("runs") is relative, so refused too.
    load_config(None, [f"storage.root={tmp_path}", "dataset.root=~/dfew", "dataset.annotations=s3://b/labels.csv"])
    with pytest.raises(ConfigError, match="storage.root: 'runs' is a relative path"):
        load_config(None, [])

    # The stage entry point, in a process with the environment Ray gives a job's driver: exit 2, no output.
    config = tmp_path / "exp.yaml"
    config.write_text("name: jobtest\nstorage:\n  root: runs/jobtest\ndataset:\n  name: dfew\n")
    r = subprocess.run(
        [sys.executable, "-m", "stages.describe", "--config", str(config)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), JOB_CONFIG_ENV: _job_env("raysubmit_sub")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "storage.root: 'runs/jobtest' is a relative path, and this is Ray job raysubmit_sub" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_submit_makes_relative_roots_absolute_only_for_a_cluster_on_this_machine(tmp_path):
    cfg = load_config(None, ["storage.root=runs/demo", "dataset.root=data", f"dataset.annotations={tmp_path}/l.csv"])
    assert is_this_machine("127.0.0.1") and is_this_machine("::1")
    assert not is_this_machine("192.0.2.10")  # TEST-NET-1: documentation only, never assigned
    assert nodes_are_this_machine(["127.0.0.1"]) and not nodes_are_this_machine(["127.0.0.1", "192.0.2.10"])
    assert not nodes_are_this_machine([])

    # All nodes here: the paths a local run would use, as --set overrides.
    local = absolute_roots(cfg, "http://127.0.0.1:8265", tmp_path, node_ips=lambda _addr: ["127.0.0.1"])
    assert local == [f"storage.root={tmp_path}/runs/demo", f"dataset.root={tmp_path}/data"]
    # A cluster elsewhere (a port-forward to Kubernetes answers on 127.0.0.1 too): refused.
    with pytest.raises(UserError, match=r"storage.root='runs/demo', dataset.root='data': .* not this machine"):
        absolute_roots(cfg, "http://127.0.0.1:8265", tmp_path, node_ips=lambda _addr: ["192.0.2.10"])
    # A job server that cannot be asked: refused, saying why.
    with pytest.raises(UserError, match="could not be listed"):
        absolute_roots(cfg, f"http://127.0.0.1:{free_port()}", tmp_path)
    # Nothing relative: nothing to ask or change.
    assert absolute_roots(load_config(None, [f"storage.root={tmp_path}"]), "http://nowhere:1", tmp_path) == []


# ---------------------------------------------------------------- a real head node


@dataclass
class Head:
    address: str
    env: dict
    tmp: str

    def run(self, *argv: str, extra_env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
        env = {**self.env, **(extra_env or {})}
        return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})


def _own_processes(marker: str) -> list[int]:
    """Pids whose command line names our private temp dir (Ray daemons that left the group)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _stop_head(proc: subprocess.Popen, tmp: str) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)  # our own group: `ray start` made it with start_new_session
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    time.sleep(0.5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # daemons still in the group after `ray start` exits
    except ProcessLookupError:
        pass
    for pid in _own_processes(tmp):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _start_head(tmp: str, env: dict, token: str) -> tuple[subprocess.Popen | None, str, str]:
    """Start `ray start --head --block`; (process, job API address, log) — process None if it died."""
    ports = {
        "--port": free_port(),
        "--dashboard-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--ray-client-server-port": free_port(),
    }
    argv = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--dashboard-host",
        "127.0.0.1",
        "--num-cpus",
        "2",
        "--temp-dir",
        tmp,
        "--disable-usage-stats",
    ]
    for flag, port in ports.items():
        argv += [flag, str(port)]
    log_path = Path(tmp) / "ray_start.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{ports['--dashboard-port']}"
    # Jobs are accepted once both the job API and the head's dashboard agent answer.
    urls = (f"{address}/api/jobs/", f"http://127.0.0.1:{ports['--dashboard-agent-listen-port']}/")
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None, address, log_path.read_text()[-3000:]
        ready = 0
        for url in urls:
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(request, timeout=5):
                    ready += 1
            except urllib.error.HTTPError:  # the agent answering at all is enough
                ready += url == urls[1]
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
        if ready == 2:
            return proc, address, ""
        time.sleep(1.0)
    _stop_head(proc, tmp)
    return None, address, "the job server did not come up in 150 s\n" + log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def ray_head():
    tmp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths have a length limit
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    # The job's `python` must be this venv's: put it first on PATH for the whole cluster.
    env.update(
        RAY_TMPDIR=tmp,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        PATH=f"{BIN}{os.pathsep}{env['PATH']}",
        RAY_USAGE_STATS_ENABLED="0",
    )
    proc = None
    try:
        # `ray start` gives the raylet a fixed 30 s to register; on a busy 2-core machine that
        # can run out, so one more try before giving up.
        for _attempt in range(2):
            proc, address, why = _start_head(tmp, env, token)
            if proc is not None:
                break
            for pid in _own_processes(tmp):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if proc is None:
            pytest.fail(f"ray start --head failed twice:\n{why}")
        yield Head(address, env, tmp)
    finally:
        if proc is not None:
            _stop_head(proc, tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _describe_config(path: Path, root: Path, name: str, extra: str = "") -> Path:
    path.write_text(
        f"name: {name}\nstorage:\n  root: {root}\ndataset:\n  name: dfew\ndescribe:\n  enabled: false\n{extra}"
    )
    return path


def _files_containing(text: str, *dirs: Path, since: float = 0.0) -> list[str]:
    hits = []
    needle = text.encode()
    for top in dirs:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if d not in (".venv", ".git")]
            for name in filenames:
                p = Path(dirpath, name)
                try:
                    if p.stat().st_mtime >= since and needle in p.read_bytes():
                        hits.append(str(p))
                except OSError:
                    pass
    return hits


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_stage_jobs_with_ray_job_submit_and_dferclip_submit(ray_head, tmp_path):
    store = tmp_path / "store"
    good = _describe_config(tmp_path / "good.yaml", store, "jobtest")
    bad = _describe_config(tmp_path / "bad.yaml", store, "jobtest", "train:\n  bogus_key: 1\n")

    # 1. Plain Ray: the stage module is the job's entrypoint.
    r = ray_head.run(
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        ray_head.address,
        "--working-dir",
        ".",
        "--",
        "python",
        "-m",
        "stages.describe",
        "--config",
        str(good),
        "--set",
        f"storage.root={store}/plain",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[describe] description set jobtest" in r.stdout + r.stderr
    assert yaml.safe_load((store / "plain" / "descriptions" / "jobtest.yaml").read_text())

    # A plain job whose config is refused inside the job: test_relative_storage_root_in_a_job
    # submits one (exit code, Ray's "failed", the stage's message); one job fewer to start here.

    # 2. dferclip submit, with a secret passed by name from this environment.
    secret = "dferclip-test-" + secrets.token_hex(12)
    private = tmp_path / "caller"
    (private / "tmp").mkdir(parents=True)
    started = time.time()
    caller_env = {"DFERCLIP_TEST_SECRET": secret, "HOME": str(private), "TMPDIR": str(private / "tmp")}
    r = ray_head.run(
        str(BIN / "dferclip"),
        "submit",
        "--address",
        ray_head.address,
        "describe",
        "--config",
        str(good),
        "--set",
        f"storage.root={store}/ours",
        "--env",
        "DFERCLIP_TEST_SECRET",
        extra_env=caller_env,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "[describe] descriptions per class: happiness 3" in out  # the job's log was streamed
    assert "SUCCEEDED" in out
    written = yaml.safe_load((store / "ours" / "descriptions" / "jobtest.yaml").read_text())
    assert [c["name"] for c in written["classes"]][:2] == ["happiness", "sadness"]

    job_id = out.split("submitted ", 1)[1].split(";", 1)[0]
    info = ray_head.client().get_job_info(job_id)
    assert info.entrypoint.startswith("python -m stages.describe --config ")
    # The value reached the job (Ray keeps the runtime env in its GCS — see docs/cluster.md) ...
    assert info.runtime_env["env_vars"]["DFERCLIP_TEST_SECRET"] == secret
    # ... but nothing the submit path writes holds it: the caller's home/temp, the project, the artifacts.
    assert _files_containing(secret, private, ROOT, store, since=started - 1) == []
    assert secret not in out

    # 3. A job that fails in the cluster: reported with Ray's status, exit code 1.
    r = ray_head.run(
        str(BIN / "dferclip"),
        "submit",
        "--address",
        ray_head.address,
        "describe",
        "--config",
        str(good),
        "--set",
        "describe.description_set=/nonexistent/set.yaml",
    )
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "description set not found: /nonexistent/set.yaml" in out
    assert "FAILED" in out

    # 4. A config error is caught before anything is uploaded: exit 2, no new job.
    before = len(ray_head.client().list_jobs())
    r = ray_head.run(str(BIN / "dferclip"), "submit", "--address", ray_head.address, "describe", "--config", str(bad))
    assert r.returncode == 2 and "train.bogus_key" in r.stderr
    assert len(ray_head.client().list_jobs()) == before

    # 5. --no-wait prints the id (address from the environment); `dferclip jobs` follows it up.
    env_addr = {"RAY_API_SERVER_ADDRESS": ray_head.address}
    r = ray_head.run(
        str(BIN / "dferclip"),
        "submit",
        "describe",
        "--config",
        str(good),
        "--no-wait",
        "--set",
        f"storage.root={store}/nowait",
        extra_env=env_addr,
    )
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip().splitlines()[-1]
    assert job_id.startswith("raysubmit_")
    r = ray_head.run(str(BIN / "dferclip"), "jobs", "wait", job_id, extra_env=env_addr)
    assert r.returncode == 0, r.stdout + r.stderr
    r = ray_head.run(str(BIN / "dferclip"), "jobs", "status", job_id, extra_env=env_addr)
    assert r.returncode == 0 and f"{job_id}: SUCCEEDED" in r.stdout
    r = ray_head.run(str(BIN / "dferclip"), "jobs", "logs", job_id, extra_env=env_addr)
    assert "[describe] description set jobtest" in r.stdout
    r = ray_head.run(str(BIN / "dferclip"), "jobs", "stop", job_id, extra_env=env_addr)
    assert r.returncode == 0 and "already finished" in r.stdout
    r = ray_head.run(str(BIN / "dferclip"), "jobs", "status", "raysubmit_nosuchjob", extra_env=env_addr)
    assert r.returncode == 2 and "raysubmit_nosuchjob" in r.stderr
    assert (store / "nowait" / "descriptions" / "jobtest.yaml").is_file()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_relative_storage_root_in_a_job(ray_head, tmp_path):
    """Plain `ray job submit` with a relative root fails saying how to fix it; `dferclip submit`
    to this machine's cluster makes it absolute, so the job writes where a local run would."""
    config = _describe_config(tmp_path / "exp.yaml", tmp_path / "unused", "jobtest")
    relative = os.path.relpath(tmp_path / "rel", ROOT)  # relative to the caller's directory (ROOT)
    assert not os.path.isabs(relative)

    r = ray_head.run(
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        ray_head.address,
        "--working-dir",
        ".",
        "--",
        "python",
        "-m",
        "stages.describe",
        "--config",
        str(config),
        "--set",
        f"storage.root={relative}",
    )
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "failed" in out.lower(), out
    assert f"storage.root: {relative!r} is a relative path, and this is Ray job raysubmit_" in out
    assert "--set storage.root=" in out

    r = ray_head.run(
        str(BIN / "dferclip"),
        "submit",
        "--address",
        ray_head.address,
        "describe",
        "--config",
        str(config),
        "--set",
        f"storage.root={relative}",
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert f"storage.root={tmp_path / 'rel'}" in out  # said what it did
    assert (tmp_path / "rel" / "descriptions" / "jobtest.yaml").is_file()
