"""The files in cluster/ parse, have what Ray and KubeRay require, and fit the experiment configs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.jobs import project_dependencies

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
IMAGE = re.compile(r"^rayproject/ray:(?P<version>\d+\.\d+\.\d+)-py(?P<py>\d+)(?P<gpu>-gpu|-cu\d+)?$")


def _ray_pin():
    """pyproject.toml's Ray requirement (the Ray minor the code is written for)."""
    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(r for r in map(Requirement, deps) if r.name == "ray")


def _load(rel: str):
    path = CLUSTER / rel
    assert path.is_file(), f"{path} is missing"
    return yaml.safe_load(path.read_text())


def _check_image(image: str, *, gpu: bool) -> None:
    import ray

    m = IMAGE.match(image)
    assert m, f"unexpected image {image!r}"
    # Job client and cluster must run the same Ray; the project targets Python 3.11.
    assert m["version"] == ray.__version__, f"{image}: Ray {m['version']}, the project uses {ray.__version__}"
    pin = _ray_pin()
    assert pin.specifier.contains(m["version"]), f"{image}: Ray {m['version']} is outside pyproject.toml's pin {pin}"
    assert m["py"] == "311"
    assert bool(m["gpu"]) == gpu, f"{image}: {'a GPU' if gpu else 'a CPU'} image expected"


def _gpu_configs():
    out = []
    for path in CONFIGS:
        cfg = load_config(path)
        if cfg.train.use_gpu or cfg.tune.gpus_per_trial > 0:
            out.append((path.name, cfg))
    return out


# ---------------------------------------------------------------- cluster launcher (AWS)


def test_launcher_yaml_head_without_gpu_autoscaling_gpu_workers():
    c = _load("aws.yaml")
    for key in (
        "cluster_name",
        "max_workers",
        "provider",
        "available_node_types",
        "head_node_type",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ):
        assert key in c, f"aws.yaml: {key} missing"
    assert c["provider"]["type"] == "aws" and c["provider"]["region"]
    types = c["available_node_types"]
    head = types[c["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = {n: t for n, t in types.items() if n != c["head_node_type"]}
    gpu_types = [t for t in workers.values() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types, "no GPU worker type"
    for t in workers.values():
        assert 0 <= t["min_workers"] < t["max_workers"], "workers must be able to scale"
        assert t["node_config"]["InstanceType"]
    # The global cap lets every type reach its own maximum, one at a time.
    assert (
        max(t["max_workers"] for t in workers.values())
        <= c["max_workers"]
        <= sum(t["max_workers"] for t in workers.values())
    )
    _check_image(c["docker"]["image"], gpu=True)
    _check_image(c["docker"]["head_image"], gpu=False)

    # The project gets installed on every node, and the dashboard is bound to loopback only.
    assert any("pip install" in cmd and "dferclip" in cmd for cmd in c["setup_commands"])
    head_cmd = " ".join(c["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmd and "--num-gpus=0" in head_cmd
    assert "RAY_AUTH_MODE=token" in head_cmd and "RAY_AUTH_MODE=token" in " ".join(c["worker_start_ray_commands"])
    assert "~/.ray/auth_token" in c["file_mounts"].values()


@pytest.mark.skipif(not CONFIGS, reason="configs/ has no experiment YAML yet")
def test_launcher_gpu_workers_fit_every_gpu_config():
    c = _load("aws.yaml")
    workers = [t for n, t in c["available_node_types"].items() if n != c["head_node_type"]]
    gpu_nodes = [t for t in workers if t["resources"].get("GPU", 0) > 0]
    node_gpus = max(t["resources"]["GPU"] for t in gpu_nodes)
    total_gpus = sum(t["resources"]["GPU"] * t["max_workers"] for t in gpu_nodes)
    node_cpus = max(t["resources"].get("CPU", 0) for t in workers)
    for name, cfg in _gpu_configs():
        t = cfg.train
        if t.use_gpu:
            assert t.gpus_per_worker <= node_gpus, f"{name}: train.gpus_per_worker > GPUs of one node"
            assert t.num_workers * t.gpus_per_worker <= total_gpus, (
                f"{name}: train needs more GPUs than max_workers give"
            )
            assert t.cpus_per_worker * (node_gpus // max(t.gpus_per_worker, 1e-9)) <= node_cpus, (
                f"{name}: train.cpus_per_worker leaves a GPU node's GPUs idle"
            )
        assert cfg.tune.gpus_per_trial <= node_gpus, f"{name}: tune.gpus_per_trial > GPUs of one node"
    for path in CONFIGS:
        cfg = load_config(path)
        assert cfg.preprocess.cpus_per_worker <= node_cpus, f"{path.name}: preprocess.cpus_per_worker too large"


# ---------------------------------------------------------------- KubeRay


def _pod_resources(group: dict) -> dict:
    (container,) = group["template"]["spec"]["containers"]
    return container


def _check_raycluster_spec(spec: dict, where: str) -> None:
    import ray

    assert spec["rayVersion"] == ray.__version__, f"{where}: rayVersion"
    assert spec["authOptions"]["mode"] == "token", f"{where}: token authentication"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: head reachable only by port-forward"
    assert head["rayStartParams"].get("num-cpus") == "0"
    head_c = _pod_resources(head)
    _check_image(head_c["image"], gpu=False)
    assert "nvidia.com/gpu" not in head_c["resources"]["limits"], f"{where}: the head has no GPU"
    gpu_groups = []
    for group in spec["workerGroupSpecs"]:
        for key in ("groupName", "minReplicas", "maxReplicas", "template"):
            assert key in group, f"{where}: worker group without {key}"
        assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
        c = _pod_resources(group)
        limits = c["resources"]["limits"]
        gpus = int(limits.get("nvidia.com/gpu", 0))
        _check_image(c["image"], gpu=gpus > 0)
        assert c["resources"]["requests"] == limits, f"{where}: requests != limits (Ray sizes itself by limits)"
        if gpus:
            gpu_groups.append((group, gpus, int(limits["cpu"])))
    assert gpu_groups, f"{where}: no GPU worker group"
    return gpu_groups


def test_kuberay_raycluster():
    doc = _load("kuberay/raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster" and doc["metadata"]["name"]
    spec = doc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    groups = _check_raycluster_spec(spec, "raycluster.yaml")
    assert any(g["minReplicas"] == 0 and g["maxReplicas"] > 1 for g, _, _ in groups), "GPU workers should autoscale"


def test_kuberay_rayjob_runs_train_with_an_existing_config():
    doc = _load("kuberay/rayjob.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob" and doc["metadata"]["name"]
    spec = doc["spec"]
    entry = spec["entrypoint"].split()
    assert entry[:3] == ["python", "-m", "stages.train"]
    config = entry[entry.index("--config") + 1]
    groups = _check_raycluster_spec(spec["rayClusterSpec"], "rayjob.yaml")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"]
    assert runtime_env["pip"]["packages"] == project_dependencies(ROOT)
    # The images of the job's cluster are the long-lived RayCluster's.
    rc = _load("kuberay/raycluster.yaml")["spec"]
    assert (
        _pod_resources(rc["headGroupSpec"])["image"] == _pod_resources(spec["rayClusterSpec"]["headGroupSpec"])["image"]
    )
    if not CONFIGS:
        pytest.skip("configs/ has no experiment YAML yet")
    cfg = load_config(ROOT / config)  # the entrypoint's config exists and is valid
    t = cfg.train
    assert t.use_gpu, f"{config}: the RayJob's cluster is a GPU cluster"
    max_gpus = sum(g["maxReplicas"] * gpus for g, gpus, _ in groups)
    per_pod = max(gpus for _, gpus, _ in groups)
    cpus_per_pod = max(cpus for _, _, cpus in groups)
    assert t.gpus_per_worker <= per_pod and t.num_workers * t.gpus_per_worker <= max_gpus
    assert t.cpus_per_worker <= cpus_per_pod


def test_runtime_env_file_has_the_project_dependencies_and_no_secrets():
    env = _load("runtime_env.yaml")
    assert set(env) <= {"excludes", "pip", "env_vars", "working_dir", "py_modules", "conda", "config"}
    assert env["pip"]["packages"] == project_dependencies(ROOT)
    assert not any(p.startswith("ray") for p in env["pip"]["packages"]), "Ray comes with the image"
    assert {".venv", "runs", ".git"} <= set(env["excludes"])
    for name in env.get("env_vars", {}):
        assert not re.search(r"KEY|TOKEN|SECRET|PASSWORD", name, re.I), (
            f"{name}: pass secrets with --env, not in a file"
        )
