"""The files in cluster/ parse, have what Ray and KubeRay require, and fit the experiment configs."""

from __future__ import annotations

import copy
import ipaddress
import json
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


def test_launcher_yaml_passes_rays_own_schema():
    # What `ray up` does first: fill in the provider's defaults, then validate against Ray's
    # ray-schema.json (an unknown key or a wrong type in a node type fails here, not on AWS).
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(_load("aws.yaml"))))


def _policy(name: str) -> list[dict]:
    doc = json.loads((CLUSTER / "iam" / name).read_text())
    assert doc["Version"] == "2012-10-17"
    return [
        dict(st, Action=_as_list(st["Action"]), Resource=_as_list(st.get("Resource", []))) for st in doc["Statement"]
    ]


def _as_list(x) -> list:
    return x if isinstance(x, list) else [x]


def test_launcher_nodes_get_scoped_instance_profiles_and_a_closed_security_group():
    c = _load("aws.yaml")
    head_type = c["head_node_type"]
    for name, node_type in c["available_node_types"].items():
        nc = node_type["node_config"]
        # Ray gives a head without a profile ray-autoscaler-v1 (AmazonEC2FullAccess +
        # AmazonS3FullAccess), and a worker without one gets no AWS credentials at all.
        role = "head" if name == head_type else "worker"
        assert nc.get("IamInstanceProfile", {}).get("Arn") == (
            f"arn:aws:iam::ACCOUNT_ID:instance-profile/dferclip-{role}"
        ), f"{name}: IamInstanceProfile.Arn"
        # Ray creates a security group for any node type without SecurityGroupIds, and always
        # opens SSH to 0.0.0.0/0 in it (provider.security_group rules only add to that).
        assert nc.get("SecurityGroupIds"), f"{name}: SecurityGroupIds (else Ray opens SSH to the world)"
        assert nc.get("MetadataOptions", {}).get("HttpTokens") == "required", f"{name}: IMDSv2 only"
    for perm in c["provider"].get("security_group", {}).get("IpPermissions", []):
        for r in perm.get("IpRanges", []) + perm.get("Ipv6Ranges", []):
            cidr = ipaddress.ip_network(r.get("CidrIp") or r.get("CidrIpv6"))
            assert cidr.prefixlen > 0, f"provider.security_group opens {cidr} to the world"


def test_iam_policies_scope_s3_to_one_bucket_and_ec2_to_this_cluster():
    c = _load("aws.yaml")
    region, cluster = c["provider"]["region"], c["cluster_name"]
    storage = _policy("storage-policy.json")
    for st in storage:
        assert st["Effect"] == "Allow"
        assert all(a.startswith("s3:") and "*" not in a for a in st["Action"]), st["Action"]
        assert st["Resource"] and all(
            r in ("arn:aws:s3:::YOUR-BUCKET", "arn:aws:s3:::YOUR-BUCKET/*") for r in st["Resource"]
        )
    assert {a for st in storage for a in st["Action"]} >= {"s3:ListBucket", "s3:GetObject", "s3:PutObject"}

    head = _policy("head-policy.json")
    by_sid = {st["Sid"]: st for st in head}
    for st in head:
        for a in st["Action"]:
            assert "*" not in a and not a.startswith("s3:"), f"head policy: {a} (S3 comes from the storage policy)"
        if "*" in st["Resource"]:  # only the Describe calls, which have no resource-level permissions
            assert all(a.startswith("ec2:Describe") for a in st["Action"]), st
            assert st["Condition"]["StringEquals"]["aws:RequestedRegion"] == region
        for r in st["Resource"]:
            assert r == "*" or r.startswith((f"arn:aws:ec2:{region}:", "arn:aws:iam::")), r
    launch = by_sid["LaunchOnlyInstancesTaggedForThisCluster"]
    assert launch["Condition"]["StringEquals"] == {"aws:RequestTag/ray-cluster-name": cluster}
    manage = by_sid["ManageOnlyThisClustersInstances"]
    assert "ec2:TerminateInstances" in manage["Action"]
    assert manage["Condition"]["StringEquals"] == {"ec2:ResourceTag/ray-cluster-name": cluster}
    # The head may hand workers their own role and nothing else (not its own, with EC2 rights).
    (pass_role,) = [st for st in head if "iam:PassRole" in st["Action"]]
    assert pass_role["Resource"] == ["arn:aws:iam::ACCOUNT_ID:role/dferclip-worker"]

    # docs/cluster.md creates the roles and the security group with the aws CLI: the worker
    # (and the EKS pods') role gets the storage policy and nothing else, SSH a single address.
    doc = (ROOT / "docs" / "cluster.md").read_text()

    def policies(role: str) -> list[str]:
        return sorted(re.findall(rf"put-role-policy --role-name {role} .*?cluster/iam/([\w.-]+\.json)", doc))

    assert policies("dferclip-worker") == policies("dferclip-storage") == ["storage-policy.json"]
    assert policies("dferclip-head") == ["head-policy.json", "storage-policy.json"]
    rules = re.findall(r"authorize-security-group-ingress(.*?)(?:\n(?!\s)|$)", doc, re.S)
    ssh = [r for r in rules if "--port 22" in r]
    assert len(ssh) == 1 and re.search(r'--cidr "\$\(curl -s https://checkip\.amazonaws\.com\)/32"', ssh[0]), ssh
    assert not re.search(r"0\.0\.0\.0/0|::/0", "".join(rules)), "docs/cluster.md opens a port to the world"


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


def test_kuberay_pods_use_irsa_service_accounts():
    accounts = {}
    for doc in yaml.safe_load_all((CLUSTER / "kuberay" / "serviceaccounts.yaml").read_text()):
        assert doc["kind"] == "ServiceAccount"
        role = doc["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert re.fullmatch(r"arn:aws:iam::ACCOUNT_ID:role/[\w+=,.@-]+", role), role
        accounts[doc["metadata"]["name"]] = doc
    specs = {
        "raycluster.yaml": _load("kuberay/raycluster.yaml")["spec"],
        "rayjob.yaml": _load("kuberay/rayjob.yaml")["spec"]["rayClusterSpec"],
    }
    for where, spec in specs.items():
        head_sa = spec["headGroupSpec"]["template"]["spec"].get("serviceAccountName")
        assert head_sa in accounts, f"{where}: the head pod's service account"
        for group in spec["workerGroupSpecs"]:
            sa = group["template"]["spec"].get("serviceAccountName")
            assert sa in accounts, f"{where}: group {group['groupName']} without an IRSA service account"
            # KubeRay binds the autoscaler's Kubernetes Role to the head's account only.
            assert sa != head_sa, f"{where}: workers must not share the head's (autoscaler) account"
    # The role's trust policy lets exactly these accounts assume it.
    (trust,) = _policy("eks-irsa-trust-policy.json")
    subjects = trust["Condition"]["StringEquals"]["OIDC_PROVIDER:sub"]
    assert sorted(subjects) == sorted(f"system:serviceaccount:NAMESPACE:{n}" for n in accounts)


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
