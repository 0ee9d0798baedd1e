"""The request side's rules, each against values written by hand: which failures are retried,
how long to wait (the server's Retry-After, else capped exponential backoff with jitter), the
one-line error texts, the key lookup and the plain-http guard (pipeline/llm/client.py,
docs/describe.md). The exceptions are the ``openai`` client's own, built around real HTTP
requests and responses."""

from __future__ import annotations

import random
import ssl

import httpx2
import openai
import pytest

from pipeline.errors import UserError
from pipeline.llm.client import (
    PLACEHOLDER_KEY,
    check_transport,
    describe_error,
    endpoint_host,
    is_loopback,
    is_retryable,
    make_client,
    resolve_api_key,
    retry_delay,
)

URL = "http://127.0.0.1:8000/v1/chat/completions"
KEY_ENV = "DFERCLIP_TEST_CLIENT_KEY"


def status_error(code: int, headers: dict | None = None, message: str = "failed") -> openai.APIStatusError:
    request = httpx2.Request("POST", URL)
    return openai.APIStatusError(message, response=httpx2.Response(code, headers=headers, request=request), body=None)


def connection_error() -> openai.APIConnectionError:
    return openai.APIConnectionError(request=httpx2.Request("POST", URL))


def test_which_failures_are_retried():
    # 408 request timeout, 409 conflict, 429 rate limit and every 5xx: yes; other 4xx: no.
    codes = [400, 401, 403, 404, 407, 408, 409, 410, 422, 429, 430, 499, 500, 502, 503, 599]
    assert [c for c in codes if is_retryable(status_error(c))] == [408, 409, 429, 500, 502, 503, 599]
    assert is_retryable(connection_error())
    assert is_retryable(openai.APITimeoutError(request=httpx2.Request("POST", URL)))
    assert not is_retryable(ValueError("not an HTTP failure"))


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "7"}, 0.25),  # the finer one first
        ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),  # an unreadable one is skipped
        ({"retry-after": "-3"}, 0.0),  # never a negative wait
        ({"retry-after": "120"}, 30.0),  # capped at max_backoff_s
    ],
)
def test_the_servers_retry_after_is_taken(headers, expected):
    assert retry_delay(status_error(429, headers), 1, 0.5, 30.0) == expected


@pytest.mark.parametrize(
    "exc",
    [
        status_error(503, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}),  # an HTTP date
        status_error(503),  # no hint
        connection_error(),  # no response at all
    ],
    ids=["http-date", "no-header", "no-response"],
)
def test_without_a_usable_hint_backoff_doubles_up_to_the_cap_with_jitter(exc):
    # base = min(backoff * 2^(failures-1), cap), times a uniform draw in [0.5, 1.0).
    for failures, base in [(1, 0.5), (2, 1.0), (3, 2.0), (5, 5.0), (9, 5.0)]:
        random.seed(failures)
        u = random.Random(failures).random()
        assert retry_delay(exc, failures, 0.5, 5.0) == pytest.approx(base * (0.5 + 0.5 * u), rel=1e-12)


def test_error_texts_are_one_line():
    assert describe_error(openai.APITimeoutError(request=httpx2.Request("POST", URL))) == "request timed out"
    try:
        raise connection_error() from ConnectionRefusedError("refused")
    except openai.APIConnectionError as exc:
        assert describe_error(exc) == "connection failed (ConnectionRefusedError)"
    assert describe_error(connection_error()) == "connection failed (no response)"
    assert describe_error(status_error(503, message="Service \n  busy,\ttry later")) == (
        "HTTP 503: Service busy, try later"
    )
    assert describe_error(status_error(400, message="x" * 300)) == "HTTP 400: " + "x" * 200
    assert describe_error(status_error(500, message=None)) == "HTTP 500: "  # no text: the code alone
    assert describe_error(ValueError("bad answer")) == "ValueError: bad answer"


def test_endpoint_host_and_loopback():
    assert endpoint_host("http://user:pw@[::1]:8000/v1") == "[::1]:8000"
    assert endpoint_host("https://api.example.com/v1") == "api.example.com"
    with pytest.raises(UserError, match=r"^describe.base_url: 'http://' is not a URL like http://127.0.0.1:8000/v1$"):
        endpoint_host("http://")
    assert [is_loopback(u) for u in ("http://localhost/v1", "http://127.0.0.2:1/v1", "http://[::1]/v1")] == [True] * 3
    assert [is_loopback(u) for u in ("http://10.0.0.1/v1", "http://example.com/v1", "v1")] == [False] * 3


def test_the_key_comes_from_the_environment_or_is_a_placeholder_for_loopback_only(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-abc")
    assert resolve_api_key("https://api.example.com/v1", KEY_ENV) == "sk-abc"
    monkeypatch.setenv(KEY_ENV, "")  # set but empty: as if unset
    assert resolve_api_key("http://127.0.0.1:8000/v1", KEY_ENV) == PLACEHOLDER_KEY == "not-needed"
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(UserError) as err:
        resolve_api_key("https://user:pw@api.example.com:8443/v1", KEY_ENV)
    assert str(err.value) == (
        f"describe.api_key_env: the environment variable {KEY_ENV} is not set, and api.example.com:8443 is not a "
        f"local endpoint; export {KEY_ENV}=... (keys never go in the config file)"
    )


def test_plain_http_off_this_machine_is_refused_before_any_connection():
    with pytest.raises(UserError) as err:
        check_transport("HTTP://192.0.2.1:8000/v1")  # the scheme in any case
    assert str(err.value) == (
        "describe.base_url: 192.0.2.1:8000 is reached over plain http://, which would send the API key unencrypted "
        "across the network; use https://, or set describe.allow_insecure_http: true if the network path to that "
        "host is trusted (loopback endpoints need neither)"
    )
    check_transport("https://192.0.2.1:8000/v1")
    check_transport("http://127.0.0.1:8000/v1")
    check_transport("http://192.0.2.1:8000/v1", allow_insecure_http=True)


def _tls_context(client) -> ssl.SSLContext:
    # the httpx2 client's connection pool holds the TLS context it would handshake https with
    return client._client._transport._pool._ssl_context


def test_the_client_does_no_retries_of_its_own():
    client = make_client("http://127.0.0.1:8000/v1", "sk-abc", 7.5)
    assert (client.max_retries, client.timeout, client.api_key) == (0, 7.5, "sk-abc")
    assert str(client.base_url) == "http://127.0.0.1:8000/v1/"
    # Plain http loads no CA bundle, yet still verifies: a redirect to https fails closed.
    plain = _tls_context(client)
    assert plain.cert_store_stats()["x509_ca"] == 0
    assert (plain.verify_mode, plain.check_hostname) == (ssl.CERT_REQUIRED, True)
    # https keeps the client's own verified context with its CA bundle.
    tls = _tls_context(make_client("https://127.0.0.1:8000/v1", "sk-abc", 7.5))
    assert tls.cert_store_stats()["x509_ca"] > 0 and tls.verify_mode == ssl.CERT_REQUIRED
