"""Logging: -v / -q change what reaches stderr, user errors stay `error: ...` with exit 2, file logs
keep everything, and a local Ray started by ensure_ray keeps its own chatter off the console."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import pytest

from pipeline import logs
from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]
# A debug line of pipeline.llm.sets on describe's path (the shipped set is read).
DEBUG_LINE = "read description set"


@pytest.fixture(autouse=True)
def restore_logging():
    """Each test leaves the process's logging as it found it (other tests share the process)."""
    names = ("", *logs.OWN_LOGGERS, "ray", "ray.data", "tests.logs")
    saved = {
        n: (list(logging.getLogger(n).handlers), logging.getLogger(n).level, logging.getLogger(n).propagate)
        for n in names
    }
    last_resort = logging.lastResort
    yield
    logs.setup_logging(logs.NORMAL)
    logging.lastResort = last_resort
    logging.captureWarnings(False)
    for n, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(n)
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


@pytest.fixture
def describe_config(tmp_path) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: logcheck
        storage:
          root: {tmp_path / "root"}
        dataset:
          name: demo
        describe:
          enabled: false
        """)
    )
    return path


def test_verbose_and_quiet_change_what_reaches_stderr(describe_config, capsys):
    assert main(["describe", "--config", str(describe_config)]) == 0
    out, err = capsys.readouterr()
    assert "written to" in out + err and DEBUG_LINE not in err

    assert main(["describe", "-v", "--config", str(describe_config)]) == 0
    out, err = capsys.readouterr()
    assert DEBUG_LINE in err and "written to" in out + err

    assert main(["-v", "describe", "--config", str(describe_config)]) == 0  # before the command too
    assert DEBUG_LINE in capsys.readouterr().err

    for argv in (
        ["describe", "--quiet", "--config", str(describe_config)],
        ["-q", "describe", "--config", str(describe_config)],
    ):
        assert main(argv) == 0
        assert capsys.readouterr().err == ""

    # The verbosity given to one command does not leak into the next.
    assert main(["describe", "--config", str(describe_config)]) == 0
    err = capsys.readouterr().err
    assert DEBUG_LINE not in err


def test_user_error_is_one_error_line_and_exit_2_even_when_quiet(describe_config, capsys):
    assert main(["-q", "describe", "--config", str(describe_config), "--set", "describe.bogus=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "describe.bogus" in err
    with pytest.raises(SystemExit) as exc:
        main(["describe", "-v", "-q", "--config", str(describe_config)])  # one or the other
    assert exc.value.code == 2


def test_console_script_verbose_and_user_error(describe_config):
    run = [sys.executable, "-m", "pipeline.cli"]
    ok = subprocess.run(
        [*run, "-v", "describe", "--config", str(describe_config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    assert DEBUG_LINE in ok.stderr
    bad = subprocess.run(
        [*run, "describe", "--config", str(describe_config), "--set", "describe.bogus=1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_console_format_levels_and_third_parties(capsys):
    logs.setup_logging(logs.NORMAL)
    own = logging.getLogger("pipeline.logcheck")
    ray_data = logs.route_logger("tests.logs")  # stands in for a third party such as ray.data
    ray_data.setLevel(logging.DEBUG)  # as Ray Data's own logging config does
    logs.demote("a known notice")
    own.debug("hidden debug")
    own.info("plain info")
    own.warning("careful")
    own.error("broken")
    ray_data.info("third-party info")
    ray_data.warning("third-party warning")
    ray_data.warning("a known notice, not for the console")
    assert capsys.readouterr().err.splitlines() == [
        "plain info",
        "warning: careful",
        "error: broken",
        "warning: tests: third-party warning",
    ]

    logs.setup_logging(logs.VERBOSE)
    own.debug("shown debug")
    ray_data.info("third-party info")
    ray_data.warning("a known notice, not for the console")
    assert capsys.readouterr().err.splitlines() == [
        "shown debug",
        "tests: third-party info",
        "warning: tests: a known notice, not for the console",
    ]

    logs.setup_logging(logs.QUIET)
    own.info("not shown")
    own.warning("shown warning")
    ray_data.warning("not shown either")
    ray_data.error("third-party error")
    assert capsys.readouterr().err.splitlines() == ["warning: shown warning", "error: tests: third-party error"]


def test_a_library_logging_through_the_root_adds_no_second_console(capsys):
    logs.setup_logging(logs.NORMAL)
    logging.info("a library's module-level call (logging.basicConfig if the root had no handler)")
    logging.getLogger("pipeline.logcheck").info("once")
    logging.getLogger("some.library").warning("a library warning")
    logging.getLogger("some.library").info("a library info: below the root's level")
    assert capsys.readouterr().err.splitlines() == ["once", "warning: some: a library warning"]


def test_python_warnings_are_third_party_warnings(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logs.setup_logging(logs.NORMAL)
        warnings.warn("a library's UserWarning", UserWarning, stacklevel=1)
        err = capsys.readouterr().err
        assert err.startswith("warning: ") and "UserWarning: a library's UserWarning" in err
        logs.setup_logging(logs.QUIET)
        warnings.warn("hidden when quiet", UserWarning, stacklevel=1)
        assert capsys.readouterr().err == ""


def test_file_handler_keeps_debug_lines_whatever_the_console_shows(tmp_path, capsys):
    logs.setup_logging(logs.QUIET)
    path = tmp_path / "run" / "run.log"
    handler = logs.add_file_handler(path)
    logger = logging.getLogger("pipeline.logcheck")
    logger.debug("detail for the file")
    logger.info("progress for the file")
    logs.remove_handler(handler)
    logger.info("after removal")
    assert capsys.readouterr().err == ""
    text = path.read_text()
    assert "DEBUG   pipeline.logcheck: detail for the file" in text and "progress for the file" in text
    assert "after removal" not in text


def test_progress_without_a_terminal_logs_a_few_lines(caplog):
    logs.setup_logging(logs.NORMAL)
    caplog.set_level(logging.DEBUG, logger="pipeline.logcheck")
    logger = logging.getLogger("pipeline.logcheck")
    with logs.progress(3, "work", unit="clip", logger=logger) as bar:  # stderr is captured: no TTY
        assert not bar.uses_bar
        bar.update(1)
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]  # no heartbeat within 30 s
    caplog.clear()
    bar = logs.Progress(3, "work", unit="clip", logger=logger, interval_s=0.0)
    bar.update(1)
    bar.update(1, postfix="1 errors")
    bar.update(1)  # the last one: the caller logs its own summary
    bar.close()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert messages[0].startswith("work: 1/3 clips (") and "1 errors" in messages[1] and len(messages) == 2


def test_quiet_ray_settings_without_starting_ray():
    import ray.data

    from pipeline.raycluster import quiet_ray

    logs.setup_logging(logs.NORMAL)
    quiet_ray()
    ctx = ray.data.DataContext.get_current()
    assert not ctx.print_on_execution_start and not ctx.enable_auto_log_stats and not ctx.verbose_stats_logs
    assert not ctx.enable_progress_bars and not ctx.enable_operator_progress_bars
    handlers = logging.getLogger("ray.data").handlers
    terminals = [h for h in handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    assert terminals == [] and any(type(h).__name__ == "SessionFileHandler" for h in handlers)
    assert not logging.getLogger("ray").propagate


_RAY_SCRIPT = """
import ray
from pipeline import logs
from pipeline.raycluster import ensure_ray

logs.setup_logging(int(__import__("sys").argv[1]))
ensure_ray(num_cpus=1, dashboard=False)

@ray.remote
def crash():
    print("worker-output-line", flush=True)
    raise ValueError("boom-in-the-worker")

assert ray.data.range(8, override_num_blocks=2).map_batches(lambda b: b).count() == 8
try:
    ray.get(crash.remote())
except Exception as exc:
    print("driver caught:", type(exc).__name__, "boom-in-the-worker" in str(exc), "crash" in str(exc))
ray.shutdown()
"""


@pytest.mark.timeout(300)
def test_local_ray_is_quiet_but_a_worker_error_still_reaches_the_driver():
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_TMPDIR": tmp}
    env.pop("RAY_ADDRESS", None)
    try:
        run = subprocess.run(
            [sys.executable, "-c", _RAY_SCRIPT, str(logs.NORMAL)],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=ROOT,
            env=env,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert run.returncode == 0, run.stdout + run.stderr
    # The worker's error, with its traceback's text, reaches the driver as an exception.
    assert "driver caught: RayTaskError(ValueError) True True" in run.stdout
    output = run.stdout + run.stderr
    # Without -v: the worker's own output stays in Ray's session logs; no plan/progress dumps.
    assert "worker-output-line" not in output
    for noise in ("Execution plan", "Starting execution", "execution finished", "Token authentication", " INFO "):
        assert noise not in output, output
