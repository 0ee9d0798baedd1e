"""with_lone_retries: which inputs run again alone, and which are left over. (The Ray Data side,
map_batches_retried, runs for real in the preprocess and batch-predict kill tests.)"""

from __future__ import annotations

from pipeline.raydata import with_lone_retries


def test_only_the_lost_inputs_run_again_alone_and_those_lost_again_are_returned():
    calls: list[tuple[list[str], bool]] = []
    told: list[list[str]] = []

    def one_pass(items: list[str], alone: bool) -> set[str]:
        calls.append((list(items), alone))
        # Together, the batch of "b" and "c" died; alone, only "c" kills its actor.
        return {"a", "d"} if not alone else {i for i in items if i != "c"}

    left = with_lone_retries(["a", "b", "c", "d"], lambda s: s, one_pass, announce=told.append)
    assert calls == [(["a", "b", "c", "d"], False), (["b", "c"], True)]
    assert told == [["b", "c"]] and left == ["c"]


def test_settled_inputs_are_not_run_again_and_nothing_lost_runs_once():
    calls: list[bool] = []

    def one_pass(items: list[dict], alone: bool) -> list[int]:
        calls.append(alone)
        return [it["id"] for it in items if it["id"] != 2]

    items = [{"id": 1}, {"id": 2}]
    # "2" finished before its actor died (settle finds its output): no lone pass.
    assert with_lone_retries(items, lambda it: it["id"], one_pass, settle=lambda lost: []) == []
    assert calls == [False]
    calls.clear()
    assert with_lone_retries([{"id": 1}], lambda it: it["id"], one_pass) == [] and calls == [False]
