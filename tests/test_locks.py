"""Folder locks (pipeline.locks) with real processes: a held lock refuses a second writer and
names it, a dead holder's lock is recovered, racing processes get it exactly once, and the
stages that write a folder (preprocess, tune, train --resume) take it."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.locks import Holder, LockHeld, folder_lock, lock_rel
from pipeline.storage import Storage

REPO = Path(__file__).resolve().parents[1]

# Takes the lock of <root>/<folder>, prints "locked", then either waits for a line on stdin and
# releases, or (exit_inside) dies inside the block without releasing — as a killed run would.
HOLDER = textwrap.dedent(
    """
    import os, sys
    from pipeline.locks import folder_lock
    from pipeline.storage import Storage
    root, folder, mode, exit_inside = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
    with folder_lock(Storage(root), folder, what="test holder", mode=mode, settle_s=0.2):
        print("locked", flush=True)
        if exit_inside:
            os._exit(0)
        sys.stdin.readline()
    print("released", flush=True)
    """
)


def _hold(root: Path, folder: str, *, mode: str = "exclusive", exit_inside: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root), folder, mode, "1" if exit_inside else "0"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "released"
    assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize("mode", ["exclusive", "lease"])
def test_a_held_lock_refuses_a_second_writer_naming_the_holder(tmp_path, mode):
    proc = _hold(tmp_path, "shards/dfew", mode=mode)
    try:
        holder = Holder.parse((tmp_path / "shards" / ".dfew.lock").read_text())
        with pytest.raises(LockHeld) as err:
            with folder_lock(Storage(tmp_path), "shards", "dfew", what="second", mode=mode, settle_s=0.2):
                pass
        text = str(err.value)
        assert f"host {socket.gethostname()}" in text
        assert f"pid {proc.pid}" in text
        assert f"started {holder.started}" in text
        assert "test holder" in text and str(tmp_path / "shards" / "dfew") in text
        assert str(tmp_path / "shards" / ".dfew.lock") in text
    finally:
        _release(proc)
    # Released: the folder can be locked again, and the lock file is gone afterwards.
    with folder_lock(Storage(tmp_path), "shards/dfew", what="third", mode=mode, settle_s=0.2) as me:
        assert me.pid == os.getpid()
    assert not (tmp_path / "shards" / ".dfew.lock").exists()


@pytest.mark.parametrize("mode", ["exclusive", "lease"])
def test_the_lock_of_a_dead_process_is_recovered(tmp_path, mode, caplog):
    proc = _hold(tmp_path, "tune/sweep-a", mode=mode, exit_inside=True)
    assert proc.wait(timeout=30) == 0
    lock_file = tmp_path / "tune" / ".sweep-a.lock"
    assert json.loads(lock_file.read_text())["pid"] == proc.pid  # left behind by the dead holder
    with caplog.at_level(logging.WARNING, logger="pipeline.locks"):
        with folder_lock(Storage(tmp_path), "tune", "sweep-a", what="next sweep", mode=mode, settle_s=0.2):
            assert Holder.parse(lock_file.read_text()).pid == os.getpid()
    assert f"process {proc.pid} on this host is gone" in caplog.text
    assert "recovering the stale lock" in caplog.text


def test_a_reused_pid_does_not_keep_a_lock(tmp_path, caplog):
    # Our own (live) pid, but recorded with another process start time: the pid was reused.
    stale = Holder.mine("old run", 60.0)
    stale.pid_start = "1"
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / ".run-1.lock").write_text(stale.to_json())
    with caplog.at_level(logging.WARNING, logger="pipeline.locks"):
        with folder_lock(Storage(tmp_path), "train", "run-1", what="resume"):
            pass
    assert "the pid now belongs to another process" in caplog.text


@pytest.mark.parametrize("mode", ["exclusive", "lease"])
def test_another_hosts_lock_holds_until_its_lease_expires(tmp_path, mode, caplog):
    other = Holder.mine("sweep on node-7", 60.0)
    other.host = "node-7.example"
    (tmp_path / "tune").mkdir()
    lock_file = tmp_path / "tune" / ".s.lock"
    lock_file.write_text(other.to_json())
    with pytest.raises(LockHeld, match="host node-7.example"):
        with folder_lock(Storage(tmp_path), "tune", "s", what="mine", mode=mode, settle_s=0.1):
            pass
    other.expires = time.time() - 1  # its heartbeat stopped a lease ago
    lock_file.write_text(other.to_json())
    with caplog.at_level(logging.WARNING, logger="pipeline.locks"):
        with folder_lock(Storage(tmp_path), "tune", "s", what="mine", mode=mode, settle_s=0.1):
            pass
    assert "its lease expired" in caplog.text and "node-7.example" in caplog.text


def test_the_holder_renews_its_lease(tmp_path):
    with folder_lock(Storage(tmp_path), "train/run-2", what="long run", lease_s=0.4) as me:
        first = me.expires
        time.sleep(0.5)  # more than one heartbeat (every lease / 4)
        renewed = Holder.parse((tmp_path / "train" / ".run-2.lock").read_text())
        assert renewed.token == me.token and renewed.expires > first


# Each racer waits for the start file, then tries the lock and holds it for a second.
RACER = textwrap.dedent(
    """
    import os, sys, time
    from pipeline.locks import LockHeld, folder_lock
    from pipeline.storage import Storage
    root, mode, go = sys.argv[1], sys.argv[2], sys.argv[3]
    while not os.path.exists(go):
        time.sleep(0.005)
    try:
        with folder_lock(Storage(root), "shards/dfew", what="racer", mode=mode, settle_s=0.5):
            time.sleep(1.0)
        print("won", flush=True)
    except LockHeld as exc:
        print("refused", exc, flush=True)
    """
)


@pytest.mark.parametrize("mode", ["exclusive", "lease"])
def test_racing_processes_get_the_lock_exactly_once(tmp_path, mode):
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path / "root"), mode, str(go)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    time.sleep(2.0)  # let every racer import and start polling
    go.touch()
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert sorted(o.split()[0] for o in outputs) == ["refused", "refused", "refused", "won"], outputs


def test_the_lock_sits_beside_the_folder():
    assert lock_rel("shards", "dfew") == "shards/.dfew.lock"
    assert lock_rel("train/exp-fold1-1") == "train/.exp-fold1-1.lock"
    with pytest.raises(ValueError):
        lock_rel()


def test_an_unreadable_lock_file_is_named(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / ".dfew.lock").write_text("{not json")
    with pytest.raises(UserError, match=r"lock file .*\.dfew\.lock is not readable"):
        with folder_lock(Storage(tmp_path), "shards/dfew", what="x"):
            pass


# ---- the stages take their folder's lock ----


def test_preprocess_refuses_a_shard_folder_in_use(tmp_path):
    from pipeline.config import DatasetConfig, PreprocessConfig
    from pipeline.preprocess import run_preprocess

    proc = _hold(tmp_path, "shards/dfew")
    try:
        with pytest.raises(LockHeld, match=f"pid {proc.pid}"):
            run_preprocess(str(tmp_path), DatasetConfig(name="dfew"), PreprocessConfig(), clips=[])
    finally:
        _release(proc)


def test_tune_refuses_a_sweep_in_use(tmp_path):
    from pipeline.config import load_config
    from pipeline.tune.experiment import run_tune

    cfg = load_config(None, [f"storage.root={tmp_path}", "name=exp", "tune.name=sweep-b"])
    proc = _hold(tmp_path, "tune/sweep-b")
    try:
        with pytest.raises(LockHeld, match=f"pid {proc.pid}"):
            run_tune(cfg)
    finally:
        _release(proc)


def test_resume_refuses_a_run_in_use(tmp_path):
    from pipeline.config import dump_config, load_config
    from pipeline.train.experiment import resume_run

    cfg = load_config(None, [f"storage.root={tmp_path}", "name=exp"])
    run = tmp_path / "train" / "exp-fold1-20240101-000000-000000"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(cfg))
    proc = _hold(tmp_path, f"train/{run.name}")
    try:
        with pytest.raises(LockHeld, match=f"pid {proc.pid}"):
            resume_run(str(run))
    finally:
        _release(proc)
