"""The describe stage end to end: the real `openai` client against a real HTTP server on 127.0.0.1.

Request counts come from the server's own log, so "zero requests on a re-run" means that no
request reached the endpoint, not that a counter in our code says so.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.datasets import CLASSES_7, CLASSES_11
from pipeline.errors import UserError
from pipeline.llm import load_description_set, read_description_set
from pipeline.llm.describe_run import write_descriptions

REPO = Path(__file__).resolve().parents[2]
KEY_ENV = "DFERCLIP_TEST_LLM_KEY"  # the variable the make_cfg fixture names in describe.api_key_env


def cache_files(root: Path) -> list[Path]:
    folder = root / "llm_cache"
    return sorted(p for p in folder.glob("*.json")) if folder.is_dir() else []


def test_first_run_requests_every_answer_and_rerun_requests_none(server, make_cfg, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pipeline")
    cfg = make_cfg("describe.samples=2", "describe.descriptions_per_answer=3", "describe.template=action_units")
    path = write_descriptions(cfg)
    assert len(server.chat_requests()) == 7 * 2
    dset = read_description_set(path)
    assert list(dset.classes) == list(CLASSES_7)
    assert all(len(v) == 6 for v in dset.classes.values())  # 2 samples x 3 distinct descriptions
    p = dset.provenance
    assert p["source"] == "llm" and p["model"] == "test-model"
    assert p["base_url_host"] == f"127.0.0.1:{server.port}"
    assert p["template"]["name"] == "action_units" and len(p["template"]["sha256"]) == 64
    assert p["answers"] == {"cached": 0, "new": 14} and p["requests"] == 14
    assert p["params"]["samples"] == 2 and p["params"]["temperature"] == 0.7
    # Each sample is asked with its own seed, so the samples are different answers.
    assert sorted(r.body["seed"] for r in server.chat_requests())[:2] == [0, 0]
    assert {r.body["seed"] for r in server.chat_requests()} == {0, 1}
    assert f"written to {path}" in caplog.text

    server.reset()
    path2 = write_descriptions(cfg)
    assert server.chat_requests() == []
    again = read_description_set(path2)
    assert again.classes == dset.classes and again.id == dset.id
    assert again.provenance["answers"] == {"cached": 14, "new": 0}


def test_refresh_ignores_the_cache(server, make_cfg):
    cfg = make_cfg()
    write_descriptions(cfg)
    server.reset()
    write_descriptions(cfg, refresh=True)
    assert len(server.chat_requests()) == 7


def test_only_new_classes_and_edited_templates_cost_requests(server, make_cfg, tmp_path):
    template = tmp_path / "mine.yaml"
    shutil.copy(REPO / "prompts/templates/visual_features.yaml", template)
    write_descriptions(make_cfg(f"describe.template={template}"))
    assert len(server.chat_requests()) == 7

    server.reset()  # 11 classes: the 7 are cached, only the 4 new ones are asked
    write_descriptions(make_cfg(f"describe.template={template}", "describe.class_set=mafw"))
    asked = server.chat_requests()
    assert len(asked) == 4
    assert {c for c in CLASSES_11[7:] if any(c in r.text for r in asked)} == set(CLASSES_11[7:])

    server.reset()  # another template is new work; going back to the first costs nothing
    write_descriptions(make_cfg("describe.template=action_units", "describe.descriptions_per_answer=2"))
    assert len(server.chat_requests()) == 7
    server.reset()
    write_descriptions(make_cfg(f"describe.template={template}"))
    assert server.chat_requests() == []

    text = template.read_text().replace("useful visual features", "the clearest visible signs")
    template.write_text(text)  # an edited template renders new messages: all its answers are new
    server.reset()
    path = write_descriptions(make_cfg(f"describe.template={template}"))
    assert len(server.chat_requests()) == 7
    assert "the clearest visible signs" in server.chat_requests()[0].text
    assert read_description_set(path).provenance["answers"] == {"cached": 0, "new": 7}


# Wall-time ratios belong to bench/describe.py; here the server's own count of overlapping
# requests shows the limit is both reached and never exceeded.
@pytest.mark.parametrize("limit", [1, 4])
def test_concurrency_limit_is_respected_and_used(server, make_cfg, limit):
    server.latency = 0.25
    write_descriptions(make_cfg(f"describe.concurrency={limit}"))
    assert len(server.chat_requests()) == 7
    assert server.max_in_flight == limit


def test_rate_limit_then_success_is_retried(server, make_cfg):
    server.script("429", "429", match="anger")
    path = write_descriptions(make_cfg())
    requests = server.chat_requests()
    assert len(requests) == 7 + 2
    assert [r.behaviour for r in requests if "anger" in r.text] == ["429", "429", "ok"]
    assert read_description_set(path).provenance["requests"] == 9


def test_server_errors_are_retried_up_to_max_attempts_then_fail_naming_the_class(server, make_cfg, tmp_path):
    server.script("500", "503", match="sadness")
    write_descriptions(make_cfg())  # two failures, then success within 4 attempts
    assert [r.behaviour for r in server.chat_requests() if "sadness" in r.text] == ["500", "503", "ok"]

    server.reset()
    server.always("500", match="disgust")
    with pytest.raises(UserError) as err:
        write_descriptions(make_cfg("describe.max_attempts=3", root=tmp_path / "other"))
    message = str(err.value)
    assert "'disgust'" in message and "HTTP 500" in message and "3 attempts" in message
    assert len([r for r in server.chat_requests() if "disgust" in r.text]) == 3
    # Every other class finished and was cached: the re-run asks only for disgust.
    assert len(cache_files(tmp_path / "other")) == 6
    server.reset()
    write_descriptions(make_cfg(root=tmp_path / "other"))
    assert len(server.chat_requests()) == 1 and "disgust" in server.chat_requests()[0].text


def test_timeout_is_retried(server, make_cfg):
    server.hang_s = 5.0
    server.script("hang", match="surprise")
    start = time.perf_counter()
    path = write_descriptions(make_cfg("describe.timeout_s=0.5"))
    assert time.perf_counter() - start < 4.0  # gave up on the hanging request instead of waiting 5 s
    assert [r.behaviour for r in server.chat_requests() if "surprise" in r.text] == ["hang", "ok"]
    assert len(read_description_set(path).classes["surprise"]) == 1


@pytest.mark.parametrize("fault", ["malformed", "too_few", "too_many", "empty", "truncated"])
def test_invalid_answer_is_asked_again_with_another_seed(server, make_cfg, fault):
    server.script(fault, match="fear")
    path = write_descriptions(make_cfg("describe.descriptions_per_answer=2"))
    fear = [r for r in server.chat_requests() if "fear" in r.text]
    assert [r.behaviour for r in fear] == [fault, "ok"]
    assert fear[0].body["seed"] != fear[1].body["seed"]
    assert len(read_description_set(path).classes["fear"]) == 2


def test_persistently_invalid_answers_fail_with_class_and_excerpt(server, make_cfg):
    server.always("malformed", match="neutral")
    with pytest.raises(UserError) as err:
        write_descriptions(make_cfg("describe.max_invalid_answers=2"))
    message = str(err.value)
    assert "'neutral'" in message and "not JSON" in message
    assert "Sure! Here are some descriptions" in message  # the excerpt of what came back
    assert len([r for r in server.chat_requests() if "neutral" in r.text]) == 2

    server.reset()
    server.always("too_few", match="neutral")
    with pytest.raises(UserError, match=r"(?s)'neutral'.*asked for exactly 3 description\(s\), got 2"):
        write_descriptions(make_cfg("describe.descriptions_per_answer=3", "describe.max_invalid_answers=2"))


def test_api_key_is_sent_but_never_written(server, make_cfg, tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG, logger="pipeline")
    secret = "sk-test-Zq8VbW3kP0uN7sEcRetKey"
    monkeypatch.setenv(KEY_ENV, secret)
    server.script("429", match="happiness")
    server.script("malformed", match="anger")
    root = tmp_path / "root"
    write_descriptions(make_cfg("describe.samples=2"))
    assert {r.authorization for r in server.chat_requests()} == {f"Bearer {secret}"}
    server.reset()
    server.script("401")
    with pytest.raises(UserError) as err:  # the server echoes the key in its error text
        write_descriptions(make_cfg("describe.samples=3"))
    assert "HTTP 401" in str(err.value) and secret not in str(err.value)
    out = capsys.readouterr()
    written = [p for p in root.rglob("*") if p.is_file()]
    assert len(written) >= 15  # 14 answers and the set
    for p in written:
        assert secret not in p.read_text(errors="replace"), p
    assert secret not in out.out + out.err + caplog.text


def test_missing_key_is_an_error_for_remote_endpoints_only(make_cfg, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(UserError, match=KEY_ENV):
        write_descriptions(make_cfg("describe.base_url=https://api.example.invalid/v1"))
    # A loopback endpoint gets a placeholder key (local servers ignore it).
    write_descriptions(make_cfg())


def test_auth_error_is_not_retried_and_stops_the_run(server, make_cfg):
    server.always("401")
    with pytest.raises(UserError, match="HTTP 401"):
        write_descriptions(make_cfg("describe.concurrency=1"))
    assert len(server.chat_requests()) == 1  # a 4xx is not retried and stops the others


def test_disabled_writes_the_shipped_set_with_provenance(tmp_path, caplog):
    from pipeline.config import load_config

    cfg = load_config(None, [f"storage.root={tmp_path}", "name=offline", "dataset.name=mafw"])
    caplog.set_level(logging.INFO, logger="pipeline")
    path = write_descriptions(cfg)
    assert path == str(tmp_path / "descriptions" / "offline.yaml")
    dset = read_description_set(path)
    assert dset.provenance["source"] == "shipped"
    assert dset.provenance["copied_from"].endswith("default-11.yaml")
    assert list(dset.classes) == list(CLASSES_11)
    assert dset.classes == load_description_set(None, list(CLASSES_11))
    assert str(path) in caplog.text


def test_disabled_with_a_user_set_copies_it(tmp_path):
    from pipeline.config import load_config

    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({c: [f"my words for {c}"] for c in CLASSES_7}))
    cfg = load_config(
        None, [f"storage.root={tmp_path / 'root'}", f"describe.description_set={mine}", "describe.output_name=copied"]
    )
    dset = read_description_set(write_descriptions(cfg))
    assert dset.name == "copied" and dset.provenance["source"] == "file"
    assert dset.classes["fear"] == ["my words for fear"]


def _write_config(tmp_path: Path, server, **describe_over) -> Path:
    cfg = {
        "name": "cli-set",
        "storage": {"root": str(tmp_path / "root")},
        "dataset": {"name": "dfew"},
        "describe": {
            "enabled": True,
            "base_url": server.base_url,
            "model": "test-model",
            "api_key_env": KEY_ENV,
            "backoff_s": 0.01,
            **describe_over,
        },
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict:
    env = dict(os.environ)
    env.pop(KEY_ENV, None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_module_entrypoint_and_diff_cli(server, tmp_path):
    config = _write_config(tmp_path, server)
    run = subprocess.run(
        [sys.executable, "-m", "stages.describe", "--config", str(config), "--set", "describe.samples=2"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    out_path = tmp_path / "root" / "descriptions" / "cli-set.yaml"
    assert f"written to {out_path}" in run.stdout + run.stderr  # a log line
    assert len(server.chat_requests()) == 14

    diff = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "describe", "--diff", "default-7", str(out_path)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert diff.returncode == 0, diff.stderr
    assert "== happiness (changed)" in diff.stdout and "raised cheeks" in diff.stdout
    assert "llm test-model @ 127.0.0.1" in diff.stdout and "7 changed" in diff.stdout

    bad = subprocess.run(
        [sys.executable, "-m", "stages.describe", "--config", str(config), "--set", "describe.template=nope"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown template 'nope'" in bad.stderr


def test_killed_run_keeps_finished_answers_and_resumes(server, make_cfg, tmp_path):
    server.latency = 0.3
    config = _write_config(tmp_path, server, samples=2, concurrency=2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.describe", "--config", str(config)],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    root = tmp_path / "root"
    deadline = time.monotonic() + 90  # a cold interpreter start is slow on a busy machine
    while len(cache_files(root)) < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    kept = cache_files(root)
    assert 4 <= len(kept) < 14, f"expected an interrupted run, cache has {len(kept)} answers"
    for p in kept:  # atomic writes: every file is a complete answer
        assert len(json.loads(p.read_text())["descriptions"]) == 1
    assert not (root / "descriptions").exists()

    server.reset()
    server.latency = 0.0
    path = write_descriptions(make_cfg("describe.samples=2", "describe.concurrency=2", "name=cli-set"))
    assert len(server.chat_requests()) == 14 - len(kept)
    assert read_description_set(path).provenance["answers"] == {"cached": len(kept), "new": 14 - len(kept)}


@pytest.mark.parametrize("mode", ["json_schema", "none"])
def test_response_format_modes(server, make_cfg, mode):
    path = write_descriptions(make_cfg(f"describe.response_format={mode}", "describe.descriptions_per_answer=2"))
    body = server.chat_requests()[0].body
    if mode == "none":
        assert "response_format" not in body
    else:
        schema = body["response_format"]["json_schema"]["schema"]["properties"]["descriptions"]
        assert schema["minItems"] == schema["maxItems"] == 2
    assert all(len(v) == 2 for v in read_description_set(path).classes.values())


def test_cached_answers_are_revalidated(server, make_cfg, tmp_path):
    cfg = make_cfg()
    write_descriptions(cfg)
    victim = cache_files(tmp_path / "root")[0]
    record = json.loads(victim.read_text())
    record["content"] = json.dumps({"descriptions": [" ".join(["word"] * 60)]})  # over max_words
    victim.write_text(json.dumps(record))
    server.reset()
    write_descriptions(cfg)
    assert len(server.chat_requests()) == 1
    assert server.chat_requests()[0].body["messages"] == record["messages"]
