"""The API key travels over plain http:// only to this machine, unless the config opts in.

The server listens on this machine's own non-loopback address: to the client it is "another
host" reached over http, yet the test needs no network. Its request log shows that a refused
run never connected, and that an opted-in run sent the key.
"""

from __future__ import annotations

import socket

import pytest

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.llm.client import check_transport, make_client
from pipeline.llm.describe_run import write_descriptions
from tests.llm.openai_server import ChatServer

KEY_ENV = "DFERCLIP_TEST_LLM_KEY"
SECRET = "sk-test-plain-http-Zq8VbW3k"


def _own_address() -> str | None:
    """A non-loopback IPv4 address of this machine, or None."""
    candidates = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.254.254.254", 9))  # UDP: picks the outward interface, sends nothing
            candidates.append(s.getsockname()[0])
    except OSError:
        pass
    try:
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        pass
    return next((a for a in candidates if not a.startswith("127.") and a != "0.0.0.0"), None)


@pytest.fixture
def lan_server():
    address = _own_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to listen on")
    server = ChatServer(latency=0.0, hang_s=3.0).start(host=address)
    try:
        yield server
    finally:
        server.stop()


def _cfg(tmp_path, server, *overrides):
    return load_config(
        None,
        [
            f"storage.root={tmp_path / 'root'}",
            "name=plain-http",
            "describe.enabled=true",
            f"describe.base_url={server.base_url}",
            "describe.model=test-model",
            f"describe.api_key_env={KEY_ENV}",
            "describe.timeout_s=2.0",
            "describe.backoff_s=0.01",
            *overrides,
        ],
    )


def test_key_is_not_sent_over_http_to_another_host(lan_server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with pytest.raises(UserError, match=r"plain http://.*allow_insecure_http: true") as err:
        write_descriptions(_cfg(tmp_path, lan_server))
    assert lan_server.base_url.split("//")[1].split("/")[0] in str(err.value)
    assert SECRET not in str(err.value)
    assert lan_server.requests == []  # refused before any connection


def test_opting_in_sends_the_key_over_http(lan_server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    write_descriptions(_cfg(tmp_path, lan_server, "describe.allow_insecure_http=true"))
    requests = lan_server.chat_requests()
    assert len(requests) == 7 and {r.authorization for r in requests} == {f"Bearer {SECRET}"}


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000/v1", "http://127.8.9.10:8000/v1", "http://localhost:11434/v1", "http://[::1]:8000/v1"],
)
def test_loopback_http_and_https_need_no_opt_in(url):
    check_transport(url)
    check_transport("https://api.example.invalid/v1")


def test_make_client_refuses_too():
    # The guard sits where the key is attached, whoever builds the client.
    with pytest.raises(UserError, match="plain http://"):
        make_client("http://192.0.2.1:8000/v1", SECRET, 1.0)
    make_client("http://192.0.2.1:8000/v1", SECRET, 1.0, allow_insecure_http=True)
