"""Submit stages to a Ray cluster as Ray jobs, and follow, inspect or stop them.

``dferclip submit [--address URL] STAGE --config FILE [--set K=V ...] [--env NAME ...]``
wraps Ray's ``JobSubmissionClient``: the job runs ``python -m stages.<stage> --config FILE``
in a copy of the project directory (the runtime environment's ``working_dir``, without
``.venv``, ``runs``, ``.git`` and caches), streams the job's output until it ends and exits 0 when
the job SUCCEEDED, 1 otherwise (printing Ray's status and message). ``--no-wait`` prints the
job id instead; ``dferclip jobs status|logs|stop ID`` follow it up later.

Secrets: ``--env NAME`` copies the caller's environment variable NAME into the job's
``env_vars``. The value is never written to a file by this command — but Ray keeps a job's
runtime environment in its GCS (visible to anyone who can query the cluster's job API), so
use a cluster you trust, with token authentication on.

Relative paths: a job runs in Ray's temporary copy of the project, so a relative
``storage.root``, ``dataset.root`` or ``dataset.annotations`` would point into that copy. When
every node of the cluster is this machine, they are made absolute (against the current
directory, as a local run resolves them) with ``--set``; otherwise submitting is refused
(:mod:`pipeline.jobpaths`).

Address: ``--address``, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``. Token
authentication (which ``ray start --head`` turns on in Ray 2.60): the token is read from
``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token`` — the
same places Ray's own CLI looks — and sent as a bearer header.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import shlex
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from pipeline.cli import COMMANDS, command_parser, run_cli
from pipeline.errors import UserError

if TYPE_CHECKING:
    from pipeline.config import ExperimentConfig

__all__ = [
    "CLI_TAKES_COMMAND",
    "absolute_roots",
    "cluster_node_ips",
    "DEFAULT_EXCLUDES",
    "auth_headers",
    "build_runtime_env",
    "cli",
    "connect",
    "entrypoint",
    "project_dependencies",
    "resolve_address",
    "submit",
    "wait_for_job",
]

logger = logging.getLogger(__name__)

# pipeline.cli passes ["submit", ...] or ["jobs", ...]: one module serves both subcommands.
CLI_TAKES_COMMAND = True

# Never uploaded with the working dir: the virtualenv alone is gigabytes, runs/ holds artifacts
# (the cluster reads those from the storage root, not from the upload).
DEFAULT_EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "runs",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    "*.egg-info",
    "build",
    ".whl",
]

_ADDRESS_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


def stage_modules() -> dict[str, str]:
    """Subcommand name -> module for every command that is a stage (``python -m stages.X``)."""
    return {name: module for name, (module, _help) in COMMANDS.items() if module.startswith("stages.")}


def resolve_address(address: str | None) -> str:
    """The job server address: the argument, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS."""
    for candidate in (address, *(os.environ.get(v) for v in _ADDRESS_VARS)):
        if candidate:
            return candidate
    raise UserError(
        "no cluster address: pass --address http://HEAD:8265 or set RAY_API_SERVER_ADDRESS "
        "(reach a remote dashboard through `ray dashboard cluster.yaml` or a port-forward)"
    )


def auth_headers() -> dict[str, str]:
    """A bearer header with the cluster's auth token, looked up where Ray's CLI looks; {} if none."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
        if os.environ.get("RAY_AUTH_TOKEN_PATH") and not Path(path).is_file():
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path}: no such file")
        if Path(path).is_file():
            token = Path(path).read_text().strip()
    # A cluster without authentication ignores the header, so sending it is always safe.
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextlib.contextmanager
def _without_address_env() -> Iterator[None]:
    # Ray's client lets RAY_ADDRESS override an explicit address; here the explicit one wins.
    saved = {v: os.environ.pop(v) for v in _ADDRESS_VARS if v in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str | None):
    """A ``JobSubmissionClient`` for the resolved address, authenticated when a token is known."""
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    try:
        with _without_address_env():
            return JobSubmissionClient(url, headers=auth_headers())
    except (ConnectionError, RuntimeError) as exc:
        raise UserError(f"cannot reach the Ray job server at {url}: {exc}") from None


def cluster_node_ips(url: str) -> list[str]:
    """The IP addresses of the cluster's alive nodes, from the State API behind the job server."""
    from ray.util.state.api import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    with _without_address_env():
        client = StateApiClient(url, headers=auth_headers())
        nodes = client.list(StateResource.NODES, ListApiOptions(timeout=30), raise_on_missing_output=False)
    return [n.node_ip for n in nodes if n.state == "ALIVE"]


def absolute_roots(
    cfg: ExperimentConfig, address: str, cwd: Path, node_ips: Callable[[str], list[str]] = cluster_node_ips
) -> list[str]:
    """``--set`` overrides making the relative paths of ``cfg`` absolute, for a cluster on this machine.

    A relative path in a job would resolve inside Ray's temporary copy of the project. For a
    cluster all of whose nodes are this machine, the path a local run would use (``cwd`` / path)
    is the same folder for the job; for any other cluster a local path means nothing there, so
    it is a :class:`UserError`. ``node_ips(address)``: the cluster's node addresses.
    """
    from pipeline.jobpaths import absolute_overrides, nodes_are_this_machine, relative_paths

    relative = relative_paths(cfg)
    if not relative:
        return []
    listed = ", ".join(f"{k}={v!r}" for k, v in relative.items())
    try:
        ips = node_ips(address)
    except Exception as exc:  # noqa: BLE001 - any failure only means "cannot tell": refuse, saying why
        raise UserError(
            f"{listed}: relative, and the nodes of the cluster at {address} could not be listed to tell whether "
            f"it runs on this machine ({exc.__class__.__name__}: {exc}); give absolute paths or URIs with --set"
        ) from None
    if not nodes_are_this_machine(ips):
        raise UserError(
            f"{listed}: a job would resolve a relative path inside Ray's temporary copy of the project on the "
            f"cluster at {address} (nodes {', '.join(ips) or 'none'}, not this machine); give a location the "
            "cluster can reach with --set, e.g. --set storage.root=s3://YOUR-BUCKET/dferclip"
        )
    overrides = absolute_overrides(relative, cwd)
    logger.info(f"the cluster runs on this machine: {listed} made absolute ({', '.join(overrides)})")
    return overrides


def project_dependencies(project_dir: Path) -> list[str]:
    """``[project].dependencies`` of ``pyproject.toml`` minus Ray: the job's pip list.

    Ray is left out on purpose: a job must run on the cluster's own Ray, and pip-installing
    another one into the job's environment would mismatch the running cluster.
    """
    pyproject = project_dir / "pyproject.toml"
    if not pyproject.is_file():
        raise UserError(f"--install-deps: {pyproject} not found")
    with pyproject.open("rb") as f:
        deps = tomllib.load(f).get("project", {}).get("dependencies", [])
    return [d for d in deps if re.split(r"[\s\[<>=!~;]", d, maxsplit=1)[0].lower() != "ray"]


def build_runtime_env(
    project_dir: Path, *, env_names: Sequence[str] = (), install_deps: bool = False, base_file: str | None = None
) -> dict:
    """Runtime environment for a stage job: working dir, excludes, optional pip, env vars by name.

    ``base_file`` (e.g. ``cluster/runtime_env.yaml``) is read first; what this function adds
    is merged over it. Values of ``env_names`` come from this process's environment only.
    """
    env: dict = {}
    if base_file:
        try:
            env = yaml.safe_load(Path(base_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"--runtime-env {base_file}: {exc}") from None
        if not isinstance(env, dict):
            raise UserError(f"--runtime-env {base_file}: expected a mapping at the top level")
    env["working_dir"] = str(project_dir)
    env["excludes"] = sorted(set(env.get("excludes", [])) | set(DEFAULT_EXCLUDES))
    if install_deps:
        env["pip"] = project_dependencies(project_dir)
    if env_names:
        missing = [n for n in env_names if n not in os.environ]
        if missing:
            raise UserError(f"--env {', '.join(missing)}: not set in this shell's environment")
        env["env_vars"] = {**env.get("env_vars", {}), **{n: os.environ[n] for n in env_names}}
    return env


def entrypoint(stage: str, config: str, overrides: Sequence[str] = (), extra: Sequence[str] = ()) -> str:
    """The shell command the job runs: ``python -m stages.<stage> --config ... --set ...``."""
    modules = stage_modules()
    if stage not in modules:
        raise UserError(f"unknown stage {stage!r}; choose from {', '.join(modules)}")
    argv = ["python", "-m", modules[stage], "--config", config]
    for item in overrides:
        argv += ["--set", item]
    return shlex.join([*argv, *extra])


def _job_config_path(config: str, project_dir: Path) -> str:
    """The config path as the job sees it: relative inside the uploaded dir, else unchanged."""
    path = Path(config).expanduser().resolve()
    if not path.is_file():
        logger.info(f"note: {config} is not a local file; the job will look for it on the cluster")
        return config
    try:
        return path.relative_to(project_dir).as_posix()
    except ValueError:
        logger.info(
            f"note: {config} is outside {project_dir}, so it is not uploaded; the job reads "
            f"{path} on the cluster (fine for a local cluster or shared storage)"
        )
        return str(path)


def submit(
    client,
    *,
    stage: str,
    config: str,
    overrides: Sequence[str] = (),
    extra: Sequence[str] = (),
    project_dir: Path,
    runtime_env: dict,
    submission_id: str | None = None,
) -> str:
    """Submit one stage as a Ray job and return its submission id."""
    command = entrypoint(stage, _job_config_path(config, project_dir), overrides, extra)
    deadline = time.monotonic() + 60.0
    while True:
        try:
            return client.submit_job(
                entrypoint=command,
                runtime_env=runtime_env,
                submission_id=submission_id,
                metadata={"dferclip_stage": stage, "config": config},
            )
        except RuntimeError as exc:
            # A head that has just started answers before its job agent registers; Ray says
            # "try again later", so do that for a minute rather than fail the submission.
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise UserError(f"job submission refused: {exc}") from None
            logger.info("the head's job agent is not up yet; retrying ...")
            time.sleep(2.0)


async def _stream_logs(client, job_id: str) -> None:
    # The job's output is this command's output: stdout, as it comes.
    async for chunk in client.tail_job_logs(job_id):
        print(chunk, end="", flush=True)


def wait_for_job(client, job_id: str, *, follow_logs: bool = True) -> int:
    """Stream the job's logs until it ends; 0 when it SUCCEEDED, 1 otherwise (status printed)."""
    from ray.job_submission import JobStatus

    if follow_logs:
        try:
            asyncio.run(_stream_logs(client, job_id))
        except RuntimeError as exc:  # the log socket dropped; the status below still tells the outcome
            logger.warning(f"the job's log stream was interrupted ({exc}); waiting for its status")
    while not (status := client.get_job_status(job_id)).is_terminal():
        time.sleep(1.0)
    info = client.get_job_info(job_id)
    line = f"job {job_id}: {status.value}"
    if info.message:
        line += f" — {info.message}"
    if status == JobStatus.SUCCEEDED:
        print(line, flush=True)
    else:
        logger.error(line)
    return 0 if status == JobStatus.SUCCEEDED else 1


def _submit_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "dferclip submit",
        __doc__,
        epilog="Arguments after `--` go to the stage unchanged, e.g. `dferclip submit train --config X -- --help`.",
    )
    parser.add_argument("stage", choices=sorted(stage_modules()), help="the stage to run as a job")
    parser.add_argument(
        "--address", help="job server, e.g. http://127.0.0.1:8265 (default: $RAY_API_SERVER_ADDRESS, then $RAY_ADDRESS)"
    )
    parser.add_argument("--config", required=True, help="experiment YAML; inside the project dir it is uploaded")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value in the job (repeatable)",
    )
    parser.add_argument(
        "--env",
        dest="env_names",
        action="append",
        default=[],
        metavar="NAME",
        help="pass this environment variable's value to the job (e.g. the LLM key); repeatable",
    )
    parser.add_argument(
        "--install-deps",
        action="store_true",
        help="pip-install pyproject.toml's dependencies in the job (clusters without the project)",
    )
    parser.add_argument("--runtime-env", metavar="FILE", help="base runtime-env YAML, e.g. cluster/runtime_env.yaml")
    parser.add_argument("--working-dir", default=".", help="project directory to upload (default: .)")
    parser.add_argument("--submission-id", help="job id to use instead of Ray's generated one")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    return parser


def _jobs_parser() -> argparse.ArgumentParser:
    parser = command_parser("dferclip jobs", "Status, logs or stop of a submitted job.")
    parser.add_argument("action", choices=["status", "logs", "stop", "wait", "list"])
    parser.add_argument("job_id", nargs="?", help="submission id (not needed for list)")
    parser.add_argument("--address", help="job server (default: $RAY_API_SERVER_ADDRESS, then $RAY_ADDRESS)")
    parser.add_argument("--follow", action="store_true", help="logs: keep streaming until the job ends")
    return parser


def _submit_cli(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = _submit_parser().parse_args(argv)
    project_dir = Path(args.working_dir).expanduser().resolve()
    if not (project_dir / "stages").is_dir():
        raise UserError(f"--working-dir {project_dir}: no stages/ folder there; run from the project root")
    overrides = list(args.overrides)
    cfg = None
    if Path(args.config).is_file():
        # Catch config mistakes here, before uploading anything.
        from pipeline.config import load_config

        cfg = load_config(args.config, overrides)
    runtime_env = build_runtime_env(
        project_dir, env_names=args.env_names, install_deps=args.install_deps, base_file=args.runtime_env
    )
    client = connect(args.address)
    if cfg is not None:
        overrides += absolute_roots(cfg, resolve_address(args.address), Path.cwd())
    job_id = submit(
        client,
        stage=args.stage,
        config=args.config,
        overrides=overrides,
        extra=extra,
        project_dir=project_dir,
        runtime_env=runtime_env,
        submission_id=args.submission_id,
    )
    if args.no_wait:
        print(job_id)
        return 0
    logger.info(f"submitted {job_id}; following its logs (Ctrl-C stops following, not the job)")
    try:
        return wait_for_job(client, job_id)
    except KeyboardInterrupt:
        logger.warning(f"stopped following; the job keeps running: dferclip jobs status|logs|stop {job_id}")
        return 130


def _jobs_cli(argv: list[str]) -> int:
    args = _jobs_parser().parse_args(argv)
    client = connect(args.address)
    if args.action == "list":
        for job in client.list_jobs():
            print(f"{job.submission_id}\t{job.status.value}\t{job.entrypoint}")
        return 0
    if not args.job_id:
        raise UserError(f"dferclip jobs {args.action}: give the job id")
    try:
        if args.action == "status":
            info = client.get_job_info(args.job_id)
            print(f"{args.job_id}: {info.status.value}" + (f" — {info.message}" if info.message else ""))
            return 0
        if args.action == "logs":
            if args.follow:
                asyncio.run(_stream_logs(client, args.job_id))
            else:
                print(client.get_job_logs(args.job_id), end="")
            return 0
        if args.action == "wait":
            return wait_for_job(client, args.job_id, follow_logs=False)
        stopped = client.stop_job(args.job_id)
        print(f"{args.job_id}: {'stop requested' if stopped else 'already finished'}")
        return 0
    except RuntimeError as exc:  # Ray's client raises RuntimeError for an unknown job id
        raise UserError(f"job {args.job_id}: {exc}") from None


def cli(argv: Sequence[str] | None = None) -> int:
    """``["submit", ...]`` or ``["jobs", ...]`` (as pipeline.cli passes them)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("submit", "jobs"):
        print("usage: dferclip submit ... | dferclip jobs ...", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    return run_cli(lambda: _submit_cli(rest) if command == "submit" else _jobs_cli(rest))


if __name__ == "__main__":
    raise SystemExit(cli())
