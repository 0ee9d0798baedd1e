"""The endpoint side: API key lookup, the ``openai`` client, and which failures to retry.

The ``openai`` client's own retries are switched off (``max_retries=0``) so that every HTTP
request is one of ours: the retry policy, its bounds and its request counts are decided here,
and are the same against OpenAI, vLLM, Ollama or a test server.
"""

from __future__ import annotations

import ipaddress
import os
import random
from urllib.parse import urlsplit

from pipeline.errors import UserError

__all__ = [
    "endpoint_host",
    "is_loopback",
    "resolve_api_key",
    "make_client",
    "check_transport",
    "is_retryable",
    "retry_delay",
    "describe_error",
    "PLACEHOLDER_KEY",
]

# Local servers (vLLM, Ollama, llama.cpp) ignore the key, but the client needs a non-empty one.
PLACEHOLDER_KEY = "not-needed"


def endpoint_host(base_url: str) -> str:
    """``host[:port]`` of the endpoint — never the user-info part, which may hold credentials."""
    parts = urlsplit(base_url)
    if not parts.scheme or not parts.hostname:
        raise UserError(f"describe.base_url: {base_url!r} is not a URL like http://127.0.0.1:8000/v1")
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


def is_loopback(base_url: str) -> bool:
    host = urlsplit(base_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(base_url: str, env_name: str) -> str:
    """The key from ``$env_name``; a placeholder only for a loopback endpoint without one."""
    key = os.environ.get(env_name)
    if key:
        return key
    if is_loopback(base_url):
        return PLACEHOLDER_KEY
    raise UserError(
        f"describe.api_key_env: the environment variable {env_name} is not set, and "
        f"{endpoint_host(base_url)} is not a local endpoint; export {env_name}=... "
        f"(keys never go in the config file)"
    )


def check_transport(base_url: str, allow_insecure_http: bool = False) -> None:
    """Refuse to send the key in clear text off this machine: plain ``http://`` is for loopback
    endpoints unless ``describe.allow_insecure_http`` says otherwise. Checked before any connection."""
    if urlsplit(base_url).scheme.lower() != "http" or is_loopback(base_url) or allow_insecure_http:
        return
    raise UserError(
        f"describe.base_url: {endpoint_host(base_url)} is reached over plain http://, which would send the API key "
        "unencrypted across the network; use https://, or set describe.allow_insecure_http: true if the network "
        "path to that host is trusted (loopback endpoints need neither)"
    )


def make_client(base_url: str, api_key: str, timeout_s: float, *, allow_insecure_http: bool = False):
    """An ``AsyncOpenAI`` client with its own retries off (ours are bounded and counted).

    The key goes in every request's headers, so :func:`check_transport` runs first."""
    import ssl

    from openai import AsyncOpenAI, DefaultAsyncHttpxClient

    check_transport(base_url, allow_insecure_http)
    http_client = None
    if urlsplit(base_url).scheme == "http":
        # Plain HTTP (local vLLM / Ollama) never handshakes TLS, so skip loading the system CA
        # bundle (~0.3 s per client). The context trusts no CA: an https redirect fails closed.
        http_client = DefaultAsyncHttpxClient(verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    return AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0, http_client=http_client)


def is_retryable(exc: BaseException) -> bool:
    """Rate limits, server errors, timeouts and dropped connections are worth another try."""
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return False


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(float(value) * scale, 0.0)
            except ValueError:
                continue  # an HTTP date: fall back to our own backoff
    return None


def retry_delay(exc: BaseException, failures: int, backoff_s: float, max_backoff_s: float) -> float:
    """The server's Retry-After when it gives one, else exponential backoff with jitter."""
    hinted = _retry_after(exc)
    if hinted is not None:
        return min(hinted, max_backoff_s)
    base = min(backoff_s * 2 ** (failures - 1), max_backoff_s)
    return base * random.uniform(0.5, 1.0)  # jitter: concurrent retries do not arrive together


def describe_error(exc: BaseException) -> str:
    """One line for a failed request; never includes request headers (where the key travels)."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "request timed out"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return f"connection failed ({type(cause).__name__ if cause else 'no response'})"
    if isinstance(exc, openai.APIStatusError):
        message = exc.message if isinstance(exc.message, str) else ""
        return f"HTTP {exc.status_code}: {' '.join(message.split())[:200]}"
    return f"{type(exc).__name__}: {exc}"
