"""Console and file logging for every command, and progress bars for long work.

Library code logs; it never prints (only a command's *result* goes to stdout: predict's rows,
``dferclip models``, ``describe --diff``). Every module does::

    import logging
    logger = logging.getLogger(__name__)      # "pipeline.x" / "stages.x"
    logger.info("preprocess demo: 56 clips ...")   # the console shows it as is
    logger.debug("shard part-1.parquet: ...")       # console with -v; always in a file log
    logger.warning("...")                            # console: "warning: ..."

and `pipeline.cli` calls :func:`setup_logging` once per command (``-v``/``-q``), so a module
only ever asks for its logger. The console (stderr) shows, per verbosity:

=========  =======================  ==============================================
verbosity  pipeline / stages        other libraries: Ray, Python warnings, ...
=========  =======================  ==============================================
-1 (-q)    warnings and errors      errors
0          info and up              warnings and errors (not :func:`demote`'d ones)
1 (-v)     debug and up             info and up (as far as the library's level lets)
2 (-vv)    debug and up             debug and up (Ray sets its loggers to debug)
=========  =======================  ==============================================

Lines are plain for info/debug, ``warning: ...`` and ``error: ...`` above; a third-party
logger's lines name it (``warning: ray.data: ...``). Everything goes to stderr: stdout is
for results.

    setup_logging(verbosity=0)                    # the CLI does it; idempotent
    verbosity() -> int                            # QUIET, NORMAL, VERBOSE or DEBUG
    add_file_handler(path, level=logging.DEBUG) -> logging.Handler   # a run's detailed log
    run_log(storage, *parts)                      # the same, as a context manager, in a run folder
    remove_handler(handler)                       # detach and close it (end of the run)
    route_logger(name)                            # a third-party logger onto the same console/files
    demote(*fragments)                            # known third-party notices: console with -v only
    progress(total, desc, unit="it") -> Progress  # one bar per stage on a terminal, else log lines
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from pathlib import Path

__all__ = [
    "QUIET",
    "NORMAL",
    "VERBOSE",
    "DEBUG",
    "OWN_LOGGERS",
    "setup_logging",
    "verbosity",
    "add_file_handler",
    "run_log",
    "remove_handler",
    "route_logger",
    "demote",
    "progress",
    "Progress",
    "console_is_terminal",
]

QUIET, NORMAL, VERBOSE, DEBUG = -1, 0, 1, 2
OWN_LOGGERS = ("pipeline", "stages")
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_lock = threading.RLock()
_verbosity = NORMAL
_files: list[logging.Handler] = []
_routed: set[str] = set()
_demoted: list[str] = []
_bars: set = set()  # live tqdm bars: console lines are written around them


def _own(name: str) -> bool:
    return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


def _threshold(own: bool) -> int:
    """The lowest level the console shows, for our loggers or a third party's."""
    if own:
        return {QUIET: logging.WARNING, NORMAL: logging.INFO}.get(_verbosity, logging.DEBUG)
    return {QUIET: logging.ERROR, NORMAL: logging.WARNING, VERBOSE: logging.INFO}.get(_verbosity, logging.DEBUG)


def _origin(name: str) -> str:
    parts = name.split(".")
    return (
        ".".join(parts[:2])
        if parts[0] == "ray" and len(parts) > 1 and parts[1] in ("data", "train", "tune", "serve")
        else parts[0]
    )


class _ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "hide", False):  # Ray Data's "not for the console" marker
            return False
        own = _own(record.name)
        level = record.levelno
        if not own and level < logging.ERROR and _demoted:
            text = record.getMessage()
            if any(fragment in text for fragment in _demoted):
                level = logging.INFO
        return level >= _threshold(own)


class _Console(logging.Handler):
    """stderr as it is at emit time (so pytest's capture and redirections work), lines written
    around any live progress bar. ``format`` ignores ``setFormatter``: Ray's logging setup
    re-formats every handler of the "ray" logger it finds."""

    _plain = logging.Formatter()

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.addFilter(_ConsoleFilter())

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self._plain.formatException(record.exc_info)
        if record.name == "py.warnings":  # "file:line: Category: message" and the source line
            text = text.rstrip()
        elif not _own(record.name):
            text = f"{_origin(record.name)}: {text}"
        if record.levelno >= logging.ERROR:
            return f"error: {text}"
        if record.levelno >= logging.WARNING:
            return f"warning: {text}"
        return text

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + "\n"
            stream = sys.stderr
            if _bars:
                from tqdm import tqdm

                with tqdm.external_write_mode(file=stream):
                    stream.write(text)
            else:
                stream.write(text)
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


_CONSOLE = _Console()


def setup_logging(verbosity: int = NORMAL) -> None:
    """Configure the console for ``verbosity`` (QUIET -1, NORMAL 0, VERBOSE 1, DEBUG 2).

    Installs the console handler on the root logger once; a later call only changes the
    verbosity (and so what the console shows, for Ray's loggers too). The ``pipeline`` and
    ``stages`` loggers pass everything (DEBUG) on to it; other libraries' loggers keep their
    level (the root's WARNING unless they set one). One handler at the root: a library calling
    ``logging.info()`` cannot add a second one (``basicConfig``) that repeats every line, and
    pytest's ``caplog`` sees every record. Records that reach no handler at all (a logger that
    does not propagate, like Ray's during ``ray.init``) take the same console.
    """
    global _verbosity
    with _lock:
        _verbosity = max(QUIET, min(DEBUG, int(verbosity)))
        _own_levels()
        root = logging.getLogger()
        for handler in list(root.handlers):  # a basicConfig() from before: it would repeat our lines
            if type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.__stderr__):
                root.removeHandler(handler)
        _attach(root)
        logging.lastResort = _CONSOLE
        # Python warnings (a library's UserWarning) as third-party warnings: -q hides them and a
        # file log keeps them. Python's filters still show each one once per place.
        logging.captureWarnings(True)


def verbosity() -> int:
    """The verbosity :func:`setup_logging` set (NORMAL until then)."""
    return _verbosity


def console_is_terminal() -> bool:
    """True when stderr is an interactive terminal (progress bars make sense there)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _own_levels() -> None:
    for name in OWN_LOGGERS:  # the handlers decide; a file log wants the debug lines
        logging.getLogger(name).setLevel(logging.DEBUG)


def _attach(logger: logging.Logger) -> None:
    if _CONSOLE not in logger.handlers:
        logger.addHandler(_CONSOLE)
    for handler in _files:
        if handler not in logger.handlers:
            logger.addHandler(handler)


def _holders() -> list[logging.Logger]:
    """The loggers that hold our handlers: the root, and the routed ones (they do not propagate)."""
    return [logging.getLogger(), *(logging.getLogger(name) for name in sorted(_routed))]


def route_logger(name: str) -> logging.Logger:
    """Send a third-party logger (``"ray"``, ``"ray.data"``) to this console and the file logs.

    Its own terminal handlers (stream handlers that are not files, e.g. Ray's) are removed; its
    file handlers (Ray Data's session log) stay. It stops propagating so nothing shows twice.
    Call again after the library reconfigures its logging.
    """
    logger = logging.getLogger(name)
    with _lock:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                if handler not in _files:
                    logger.removeHandler(handler)
        _attach(logger)
        logger.propagate = False
        _routed.add(name)
    return logger


def demote(*fragments: str) -> None:
    """Show third-party warnings containing any of ``fragments`` on the console only with -v,
    like that party's info lines; file logs keep them. For notices this project's own settings
    cause or that ask nothing of the user."""
    with _lock:
        _demoted.extend(f for f in fragments if f not in _demoted)


def add_file_handler(path: str | Path, level: int = logging.DEBUG) -> logging.Handler:
    """Append every record of ``level`` and up (ours and routed third parties') to ``path``.

    A run's detailed log: timestamps, levels and logger names, whatever the console shows.
    ``path`` is a local file (its folder is created). Returns the handler for
    :func:`remove_handler`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    with _lock:
        _files.append(handler)
        _own_levels()
        for logger in _holders():
            logger.addHandler(handler)
    return handler


@contextlib.contextmanager
def run_log(storage, *parts: str):
    """While the block runs, keep the detailed log (ours and Ray's routed loggers, debug and up)
    in the run's own folder, ``storage.path(*parts)``. Local storage only: on object storage the
    log stays in Ray's session folder (a debug line says so)."""
    if not storage.is_local:
        logging.getLogger(__name__).debug("no run log file on %s; Ray's session logs keep the details", storage.uri())
        yield None
        return
    handler = add_file_handler(storage.path(*parts))
    try:
        yield storage.path(*parts)
    finally:
        remove_handler(handler)


def remove_handler(handler: logging.Handler) -> None:
    """Detach a handler from :func:`add_file_handler` from every logger and close it."""
    with _lock:
        if handler in _files:
            _files.remove(handler)
        for logger in _holders():
            logger.removeHandler(handler)
    handler.close()


class Progress:
    """A stage's progress: a tqdm bar on a terminal, else a log line every ``interval_s``.

    ``update(n)`` counts finished items; ``close()`` (or the ``with`` block's end) removes the
    bar. The caller logs its own summary line at the end: the bar leaves nothing behind.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "it",
        logger: logging.Logger | None = None,
        interval_s: float = 30.0,
        enabled: bool | None = None,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.logger = logger or logging.getLogger("pipeline.progress")
        self.interval_s = interval_s
        self.done = 0
        self.started = self._last = time.monotonic()
        self._bar = None
        if enabled is None:
            enabled = _verbosity >= NORMAL and console_is_terminal() and _CONSOLE in logging.getLogger().handlers
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm comes with open_clip; without it, log lines
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(
                    total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=0.5
                )
                _bars.add(self._bar)

    @property
    def uses_bar(self) -> bool:
        return self._bar is not None

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.done += n
        if self._bar is not None:
            if postfix is not None:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval_s and (self.total is None or self.done < self.total):
            self._last = now
            of = f"/{self.total}" if self.total is not None else ""
            extra = f", {postfix}" if postfix else ""
            self.logger.info(f"{self.desc}: {self.done}{of} {self.unit}s ({now - self.started:.0f} s{extra})")

    def close(self) -> None:
        if self._bar is not None:
            _bars.discard(self._bar)
            self._bar.close()
            self._bar = None
        of = f"/{self.total}" if self.total is not None else ""
        self.logger.debug(f"{self.desc}: {self.done}{of} {self.unit}s in {time.monotonic() - self.started:.1f} s")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(
    total: int | None, desc: str, *, unit: str = "it", logger: logging.Logger | None = None, interval_s: float = 30.0
) -> Progress:
    """One progress display for a long piece of work (use as a context manager).

    A tqdm bar on stderr when it is a terminal and the verbosity is not quiet; otherwise (a
    pipe, a log file, a Ray job, ``-q``) an info line every ``interval_s`` seconds, so a short
    stage adds no line at all and a long one a few.
    """
    return Progress(total, desc, unit=unit, logger=logger, interval_s=interval_s)
