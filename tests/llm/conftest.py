"""Fixtures for the LLM tests: a real OpenAI-compatible server on 127.0.0.1 and a tiny config."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ExperimentConfig, load_config
from tests.llm.openai_server import ChatServer

KEY_ENV = "DFERCLIP_TEST_LLM_KEY"


@pytest.fixture
def server():
    with ChatServer(latency=0.0, hang_s=3.0) as s:
        yield s


@pytest.fixture
def make_cfg(tmp_path, server):
    """Config builder: the server's endpoint, short timeouts and backoff so retries take ms."""

    def build(*overrides: str, root: Path | None = None) -> ExperimentConfig:
        base = [
            f"storage.root={root or tmp_path / 'root'}",
            "name=test-set",
            "dataset.name=dfew",
            "describe.enabled=true",
            f"describe.base_url={server.base_url}",
            "describe.model=test-model",
            f"describe.api_key_env={KEY_ENV}",
            "describe.backoff_s=0.01",
            "describe.max_backoff_s=0.05",
            "describe.timeout_s=2.0",
        ]
        return load_config(None, [*base, *overrides])

    return build
