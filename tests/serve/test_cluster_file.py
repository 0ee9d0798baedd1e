"""cluster/serve.yaml: a Serve config file Ray accepts, naming this project's app builder with
arguments and overrides it accepts; the cluster can place what it asks for."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def _doc() -> dict:
    return yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())


def test_rays_own_schema_accepts_it():
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(_doc())
    (app,) = schema.applications
    assert app.import_path == "pipeline.serve.app:app_builder"
    assert schema.http_options.host == "0.0.0.0"


def test_its_args_are_the_builders_and_its_overrides_valid():
    from pipeline.serve.app import APP_ARGS

    (app,) = _doc()["applications"]
    module, name = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), name))
    assert set(app["args"]) <= set(APP_ARGS)
    serve = load_config(None, app["args"]["set"]).serve  # checked as `--set` would be
    assert serve.gpus_per_model == 1 and serve.decoders == 4
    # The proxy's cut-off is past the app's own, so a slow request gets the app's 504 message.
    assert _doc()["http_options"]["request_timeout_s"] > serve.request_timeout_s


def test_the_aws_cluster_can_place_the_replicas():
    aws = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    serve = load_config(None, _doc()["applications"][0]["args"]["set"]).serve
    nodes = aws["available_node_types"].values()
    gpu = max(n["resources"].get("GPU", 0) for n in nodes)
    cpu = max(n["resources"].get("CPU", 0) for n in nodes)
    assert gpu >= serve.gpus_per_model and cpu >= serve.cpus_per_decoder


def test_unknown_builder_args_are_refused():
    from pipeline.errors import UserError
    from pipeline.serve.app import app_builder

    with pytest.raises(UserError, match=r"unknown application args \['chekpoint'\]"):
        app_builder({"chekpoint": "model.pt"})


def test_the_kuberay_rayservice_runs_the_same_application():
    from tests.jobs.test_cluster_configs import _check_raycluster_spec

    doc = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService" and doc["metadata"]["name"]
    assert yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"] == _doc()["applications"]
    spec = doc["spec"]["rayClusterConfig"]
    groups = _check_raycluster_spec(spec, "rayservice.yaml")  # the same rules as the other KubeRay files
    serve = load_config(None, _doc()["applications"][0]["args"]["set"]).serve
    assert max(gpus for _, gpus, _ in groups) >= serve.gpus_per_model
    head_ports = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    assert {"containerPort": 8000, "name": "serve"} in head_ports
