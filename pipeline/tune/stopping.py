"""Ending a full trial's Ray Train run when Tune stops the trial (ASHA, Ctrl+C, sweep end).

Why this exists (Ray 2.60). A full trial is a Tune function trainable whose thread calls
``TorchTrainer.fit()``; that call starts the Train *controller* as an ordinary actor owned by
the trial's actor, and the controller creates the placement group of the Train workers
(``ray/train/v2/api/data_parallel_trainer.py``, ``_initialize_and_run_controller``). When Tune
stops a trial it calls ``Trainable.stop()`` on the trial's actor and then lets the actor go
(``ray/tune/execution/tune_controller.py``, ``_schedule_trial_stop`` / ``_remove_actor``). The
controller dies with its owner, without shutting its worker group down, and the workers'
placement group — created by a non-detached actor, so scoped to the job, not to that actor —
stays, holding its CPUs. Ray Train's backstop is a detached ``PlacementGroupCleaner`` that asks
the State API whether the controller is alive (``ray/train/v2/_internal/execution/controller/
placement_group_cleaner.py``, ``_monitor_loop``). That fails on two counts here: without the
dashboard every query raises ``RayStateApiException`` and the cleaner retries forever; and the
State API client, given no address, resolves "the" cluster by scanning the machine for GCS
processes (``ray/_private/services.py``, ``canonicalize_bootstrap_address_or_die``), so with a
second Ray instance on the machine (another user's, another test session's) it raises
``ConnectionError: Found multiple active Ray instances``, which the cleaner does not catch: its
monitor thread dies and the placement group is never removed. Either way the next trial's Ray
Data reads find no free CPU and the sweep stalls.

The fix does not depend on the State API: the trial aborts its own Train run before its actor
goes. :class:`StopTrainRunWithTrial` is mixed into the trial's function trainable (Tune's
``__mixins__`` hook); its ``cleanup()`` — called by ``Trainable.stop()`` — calls the
controller's ``abort()``, which shuts the worker group down, removes its placement group and
stops the cleaner (``controller.py``, ``abort``), and waits for that. The controller's handle
reaches the trial through :class:`_ControllerSlot`, filled by a Train callback on the run's
first report; a trial stopped before its first report (Ctrl+C during epoch 1) is left to Train's
cleaner and to the end of the Ray job.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["StopTrainRunWithTrial", "TrainRunGuard"]

logger = logging.getLogger(__name__)

ABORT_TIMEOUT_S = 120.0  # Tune waits up to TUNE_FORCE_TRIAL_CLEANUP_S (600 s) for a stopping trial

# The Train run each trial of this process is running (trial id -> guard). A trial's function
# runs in a thread of its Tune actor; stop() comes on the actor's main thread.
_RUNS: dict[str, TrainRunGuard] = {}
_RUNS_LOCK = threading.Lock()

# The Ray this module was written against; tests/tune/test_ray_internals.py checks every Ray
# internal used here (and pyproject.toml pins the same range).
RAY_RANGE = ">=2.60,<2.61"


def _missing_ray_internal(what: str) -> RuntimeError:
    import ray

    return RuntimeError(
        f"pipeline/tune/stopping.py relies on {what}, which Ray {ray.__version__} does not have; "
        f"it was written for Ray {RAY_RANGE} (pyproject.toml): install that Ray, or update "
        "stopping.py and the pin"
    )


class _ControllerSlot:
    """Tiny Ray actor (owned by the trial) holding the handle of the trial's Train controller."""

    def __init__(self) -> None:
        self._handle = None

    def set(self, handle) -> None:
        self._handle = handle

    def get(self):
        return self._handle


def _report_controller_callback(slot):
    """A Train ``UserCallback`` that, on the first report, puts its controller's handle in ``slot``.

    Runs in the controller, so ``current_actor`` is the controller. Listed before
    ``TuneReportCallback``: the handle is in place before Tune sees (and can act on) a result.
    """
    import ray

    try:
        from ray.train.v2.api.callback import UserCallback
    except ImportError as exc:
        raise _missing_ray_internal("ray.train.v2.api.callback.UserCallback") from exc

    class ReportController(UserCallback):
        def __init__(self):
            self._sent = False

        def after_report(self, run_context, metrics, checkpoint):
            if not self._sent:
                ray.get(slot.set.remote(ray.get_runtime_context().current_actor))
                self._sent = True

    return ReportController()


class TrainRunGuard:
    """The trial side of one Train run: ``callback()`` for ``fit``, ``abort()`` from ``cleanup()``.

    Used by the trial function around ``fit``::

        guard = TrainRunGuard(trial_id)
        try:
            fit(job, callbacks=[guard.callback(), TuneReportCallback()])
        except Exception:
            if not guard.aborted:
                raise
        finally:
            guard.close()
    """

    def __init__(self, trial_id: str) -> None:
        import ray

        self.trial_id = trial_id
        self.aborted = False
        self._done = threading.Event()
        self._slot = ray.remote(num_cpus=0)(_ControllerSlot).remote()
        with _RUNS_LOCK:
            _RUNS[trial_id] = self

    def callback(self):
        return _report_controller_callback(self._slot)

    def close(self) -> None:
        """The Train run has ended (``fit`` returned or raised)."""
        import ray

        with _RUNS_LOCK:
            if _RUNS.get(self.trial_id) is self:
                del _RUNS[self.trial_id]
        self._done.set()
        ray.kill(self._slot)

    def abort(self, timeout_s: float = ABORT_TIMEOUT_S) -> bool:
        """Abort the Train run if it is still running; True once it has ended."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        if self._done.is_set():
            return True
        try:
            controller = ray.get(self._slot.get.remote(), timeout=timeout_s)
        except (RayActorError, GetTimeoutError):
            controller = None
        if controller is None:  # stopped before its first report, or ended meanwhile
            return self._done.is_set()
        if not hasattr(controller, "abort"):  # an actor handle has its actor's methods only
            raise _missing_ray_internal("the abort() method of Ray Train's controller actor (TrainController.abort)")
        self.aborted = True
        try:
            # abort() shuts the worker group down (removing its placement group), then exits
            # the controller, so the call itself ends in RayActorError.
            ray.get(controller.abort.remote(), timeout=timeout_s)
        except RayActorError:
            pass
        except GetTimeoutError:
            logger.warning("trial %s: its Train run did not abort within %.0f s", self.trial_id, timeout_s)
            return False
        return self._done.wait(timeout_s)


class StopTrainRunWithTrial:
    """Mixin for the full trial's function trainable: stopping the trial aborts its Train run.

    Attach with ``fn.__mixins__ = (StopTrainRunWithTrial,)`` on the function given to Tune
    (``tune.with_parameters`` keeps it; Tune's ``wrap_function`` puts it before
    ``FunctionTrainable`` in the trainable's bases).
    """

    def cleanup(self):
        with _RUNS_LOCK:
            guard = _RUNS.get(self.trial_id)
        if guard is not None:
            guard.abort()
        super().cleanup()
