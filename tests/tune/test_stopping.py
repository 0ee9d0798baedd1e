"""Aborting a running Train run from the trial's side (what a full trial does when Tune stops it)."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.tune.stopping import TrainRunGuard


def _endless_loop(config):
    import ray.train

    step = 0
    while True:  # only an abort ends this run
        step += 1
        ray.train.report({"step": step})
        time.sleep(0.2)


def _live_placement_groups(ray) -> list[str]:
    return [pg for pg, info in ray.util.placement_group_table().items() if info["state"] != "REMOVED"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_abort_ends_train_run_and_frees_its_placement_group(ray_local, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray = ray_local
    guard = TrainRunGuard("trial-under-test")
    trainer = TorchTrainer(
        _endless_loop,
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="endless", storage_path=str(tmp_path), callbacks=[guard.callback()]),
    )
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = trainer.fit()
        except Exception as exc:  # noqa: BLE001 - recorded for the assertions
            outcome["error"] = exc
        finally:
            guard.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 180
    while ray.get(guard._slot.get.remote()) is None:  # the controller registers on its first report
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.5)
    assert _live_placement_groups(ray)  # the worker's placement group

    assert guard.abort(timeout_s=60)
    thread.join(30)
    assert not thread.is_alive() and guard.aborted and "error" in outcome  # fit() ended by the abort
    deadline = time.monotonic() + 10
    while _live_placement_groups(ray) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _live_placement_groups(ray) == []
    assert guard.abort()  # a second stop of an ended run is a no-op
