"""The Ray internals the pipeline relies on still exist, with the shape it expects.

``pipeline/tune/stopping.py`` and ``pipeline/raycluster.py`` use parts of Ray that are not
public API (private modules, undocumented hooks, a private actor's method); they change
between Ray minors without notice, so ``pyproject.toml`` pins one Ray minor. Each test here
names one internal; when a Ray upgrade breaks one, it fails naming the internal, the module
that uses it and the pinned range, instead of a sweep leaking placement groups much later.
No Ray cluster is started: these are import and signature checks.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _ray_requirement() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [d for d in deps if re.split(r"[\s\[<>=!~;]", d, maxsplit=1)[0].lower() == "ray"]
    return req


def _ray_range() -> str:
    """The version range of the Ray requirement, e.g. '>=2.60,<2.61'."""
    return re.sub(r"^ray(\[[^\]]*\])?\s*", "", _ray_requirement()).split(";")[0].strip()


def _broken(user: str, what: str, detail: str = "") -> str:
    import ray

    why = f" ({detail})" if detail else ""
    return (
        f"{user} relies on {what}, which Ray {ray.__version__} no longer has{why}; update {user} and the "
        f"pin in pyproject.toml (ray{_ray_range()}, the range this was written and tested for)"
    )


def _attr(user: str, dotted: str):
    """Import ``dotted`` (module path, then attributes), failing with :func:`_broken`'s message."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ImportError:
            continue
    else:
        pytest.fail(_broken(user, dotted, "cannot import it"))
    for name in parts[i:]:
        if not hasattr(obj, name):
            pytest.fail(_broken(user, dotted, f"{name!r} is missing"))
        obj = getattr(obj, name)
    return obj


def _params(fn) -> list[str]:
    # Once a process has run Ray Train, Ray's tracing hook has wrapped the actor class's methods
    # with an extra keyword-only ``_ray_trace_ctx``; it is Ray's, not part of the method's API.
    return [p for p in inspect.signature(fn).parameters if p != "_ray_trace_ctx"]


STOPPING = "pipeline/tune/stopping.py"
RAYCLUSTER = "pipeline/raycluster.py"


# ---------------------------------------------------------------- the pin itself


def test_installed_ray_is_the_pinned_one():
    import ray
    from packaging.requirements import Requirement

    req = Requirement(_ray_requirement())
    assert req.specifier.contains(ray.__version__, prereleases=True), (
        f"Ray {ray.__version__} is installed but pyproject.toml pins {req}: reinstall (`make install`), or move "
        f"the pin and check every internal in this file"
    )
    assert {"default", "train", "tune"} <= req.extras, f"{req}: the pipeline needs Ray's default, train and tune extras"


def test_stopping_names_the_same_range_as_pyproject():
    from pipeline.tune import stopping

    assert stopping.RAY_RANGE == _ray_range(), (
        f"{STOPPING}: RAY_RANGE {stopping.RAY_RANGE!r} but pyproject.toml pins ray{_ray_range()}; keep them equal"
    )


# ---------------------------------------------------------------- pipeline/tune/stopping.py


def test_train_user_callback_is_the_v2_class_with_after_report():
    cls = _attr(STOPPING, "ray.train.v2.api.callback.UserCallback")
    public = _attr(STOPPING, "ray.train.UserCallback")
    assert public is cls, _broken(
        STOPPING,
        "ray.train.v2.api.callback.UserCallback",
        "ray.train.UserCallback is another class: is Ray Train V2 off?",
    )
    after_report = _attr(STOPPING, "ray.train.v2.api.callback.UserCallback.after_report")
    assert _params(after_report) == ["self", "run_context", "metrics", "checkpoint"], _broken(
        STOPPING,
        "UserCallback.after_report(self, run_context, metrics, checkpoint)",
        f"its parameters are now {_params(after_report)}",
    )


def test_user_callbacks_run_in_the_train_controller_actor():
    # The callback takes ``current_actor`` for the controller: user callbacks must be called in
    # the controller actor that the trainer starts. (tests/tune/test_stopping.py checks it live.)
    controller = _attr(STOPPING, "ray.train.v2._internal.execution.controller.controller.TrainController")
    start = _attr(STOPPING, "ray.train.v2.api.data_parallel_trainer.DataParallelTrainer._initialize_and_run_controller")
    assert "TrainController" in inspect.getsource(start), _broken(
        STOPPING,
        "DataParallelTrainer._initialize_and_run_controller starting TrainController as an actor",
        "it no longer names TrainController",
    )
    _attr(STOPPING, "ray.train.v2._internal.callbacks.user_callback.UserCallbackHandler.after_report")
    assert inspect.isclass(controller)


def test_train_controller_abort_is_an_argument_free_actor_method():
    abort = _attr(STOPPING, "ray.train.v2._internal.execution.controller.controller.TrainController.abort")
    assert _params(abort) == ["self"], _broken(
        STOPPING, "TrainController.abort(self)", f"its parameters are now {_params(abort)}"
    )
    assert inspect.iscoroutinefunction(abort) or inspect.isfunction(abort), _broken(
        STOPPING, "TrainController.abort as a method", f"it is now {type(abort).__name__}"
    )


def test_tune_function_trainables_take_mixins_through_with_parameters_and_with_resources():
    # full.py sets ``fn.__mixins__`` on the function it gives Tune; Tune's wrap_function must put
    # the mixin before FunctionTrainable, so that its cleanup() runs and then calls Tune's.
    wrap_function = _attr(STOPPING, "ray.tune.trainable.function_trainable.wrap_function")
    function_trainable = _attr(STOPPING, "ray.tune.trainable.function_trainable.FunctionTrainable")
    from pipeline.tune.full import full_trainable
    from pipeline.tune.stopping import StopTrainRunWithTrial

    trainable = wrap_function(full_trainable(setup=None, driver_cpus=1.0))
    mro = trainable.__mro__
    ok = (
        StopTrainRunWithTrial in mro
        and function_trainable in mro
        and (mro.index(StopTrainRunWithTrial) < mro.index(function_trainable))
    )
    assert ok, _broken(
        STOPPING,
        "Tune's __mixins__ hook (wrap_function, kept by tune.with_parameters and tune.with_resources)",
        f"the trainable's bases are {[c.__name__ for c in mro]}",
    )


def test_trainable_stop_calls_cleanup_and_knows_its_trial_id():
    trainable = _attr(STOPPING, "ray.tune.Trainable")
    assert "self.cleanup()" in inspect.getsource(trainable.stop), _broken(
        STOPPING, "Trainable.stop() calling self.cleanup()", "stop() no longer calls it"
    )
    assert isinstance(inspect.getattr_static(trainable, "trial_id", None), property), _broken(
        STOPPING, "the Trainable.trial_id property"
    )


def test_tune_waits_longer_for_a_stopping_trial_than_the_abort_takes():
    from pipeline.tune.stopping import ABORT_TIMEOUT_S

    controller = _attr(STOPPING, "ray.tune.execution.tune_controller")
    found = re.search(r"TUNE_FORCE_TRIAL_CLEANUP_S\"\s*,\s*\"(\d+)\"", inspect.getsource(controller))
    assert found, _broken(STOPPING, "TUNE_FORCE_TRIAL_CLEANUP_S in ray.tune.execution.tune_controller")
    assert ABORT_TIMEOUT_S < float(found[1]), (
        f"{STOPPING}: ABORT_TIMEOUT_S ({ABORT_TIMEOUT_S:g} s) must stay below Tune's TUNE_FORCE_TRIAL_CLEANUP_S "
        f"default ({found[1]} s) in Ray {sys.modules['ray'].__version__}"
    )


# ---------------------------------------------------------------- pipeline/raycluster.py


def test_cluster_config_from_the_private_gcs_state():
    # check_resources falls back to live nodes when this is missing: no crash, but an autoscaling
    # cluster's GPU workers (min 0) would then be refused. Hence a test rather than a silent fallback.
    state = _attr(RAYCLUSTER, "ray._private.state.state")
    assert callable(getattr(state, "get_cluster_config", None)), _broken(
        RAYCLUSTER, "ray._private.state.state.get_cluster_config()"
    )
    assert _params(state.get_cluster_config) == [], _broken(
        RAYCLUSTER,
        "ray._private.state.state.get_cluster_config()",
        f"its parameters are now {_params(state.get_cluster_config)}",
    )
    config = _attr(RAYCLUSTER, "ray.core.generated.autoscaler_pb2.ClusterConfig")
    groups = config.DESCRIPTOR.fields_by_name.get("node_group_configs")
    fields = set(groups.message_type.fields_by_name) if groups is not None and groups.message_type else set()
    assert {"resources", "max_count"} <= fields, _broken(
        RAYCLUSTER,
        "autoscaler_pb2.ClusterConfig.node_group_configs[].resources / .max_count",
        f"the node group fields are {sorted(fields)}",
    )


def test_parquet_footer_actor_count_is_still_read_by_ray_data():
    # local_ray_env sets it; if Ray Data stops reading it, every local read starts 32 actors again.
    import ray.data

    name = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
    data_dir = Path(ray.data.__file__).parent
    assert any(name in p.read_text(errors="ignore") for p in data_dir.rglob("*.py")), _broken(
        RAYCLUSTER, f"the {name} environment variable of Ray Data", "no module of ray.data reads it"
    )
