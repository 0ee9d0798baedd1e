"""Credentials written into a URL: found, described and redacted, never echoed.

A config value such as ``storage.root: s3://KEY:SECRET@bucket/runs`` or
``describe.base_url: https://proxy/v1?api_key=...`` would be copied into every run's
``config.yaml``, every checkpoint, ``best_config.yaml``, the logs and job entry points. The
config refuses them (:func:`credentials_problem`); each field's message says where that kind of
credential belongs instead (environment variables, the client's own credential files).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote_plus, urlsplit

__all__ = ["url_credentials", "redact_url", "credentials_problem"]

# Query parameter names (lower case, without '-' and '_') that carry a secret themselves.
_SECRET_NAMES = frozenset(
    {"key", "sig", "pwd", "pass", "auth", "authorization", "code", "sas", "jwt", "bearer", "session"}
)
# ... or that contain one of these words (api_key, access_token, X-Amz-Security-Token, sslpassword).
_SECRET_WORDS = ("secret", "password", "passwd", "token", "signature", "credential", "apikey", "accesskey")
# Pre-signed URLs (S3, GCS) are credentials as a whole: every one of their parameters is dropped.
_SIGNED_PREFIXES = ("xamz", "xgoog")
# The user part of an http(s) URL is where tokens get pasted (https://TOKEN@host); other schemes
# (postgresql://user@host/db) name a user whose password comes from the environment or a file.
_NO_USER_SCHEMES = ("http", "https")
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@]*:[^/?#@]*@")


def _has_scheme(url: str) -> bool:
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", url)
    return bool(m) and len(m[1]) > 1  # one letter: a Windows drive (C:\data), not a scheme


def _secret_param(name: str) -> bool:
    norm = re.sub(r"[-_.]", "", name.lower())
    if norm.startswith(_SIGNED_PREFIXES) or norm in _SECRET_NAMES or any(w in norm for w in _SECRET_WORDS):
        return True
    # api_key, secret_key, subscription-key; but libpq's / SQLAlchemy's sslkey is a file path.
    return norm.endswith("key") and not norm.startswith("ssl")


def url_credentials(url: str) -> list[str]:
    """What in ``url`` is a credential, in words (no values): empty for a URL without any.

    Plain paths (``runs``, ``/data/dfew``, ``C:\\data``) carry none: only a ``scheme:`` URL is
    parsed.
    """
    if not isinstance(url, str) or not _has_scheme(url.strip()):
        return []
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # unparsable (an unclosed IPv6 bracket): look for user:password@ by pattern
        return ["a password in its user part (user:password@)"] if _USERINFO.match(url.strip()) else []
    found = []
    if parts.password is not None:
        found.append("a password in its user part (user:password@)")
    elif parts.username and parts.scheme.lower() in _NO_USER_SCHEMES:
        found.append("a user part (user@), where tokens are pasted")
    names = [name for name, _ in parse_qsl(parts.query, keep_blank_values=True) if _secret_param(name)]
    if names:
        found.append("the query parameter" + ("s " if len(names) > 1 else " ") + ", ".join(sorted(set(names))))
    return found


def redact_url(url: str) -> str:
    """``url`` with the user part and every secret-looking query value replaced by ``***``."""
    if not url_credentials(url):
        return url  # as written (urlsplit's round trip would normalise sqlite:////abs to sqlite://abs)
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return _USERINFO.sub(r"\1***@", url.strip())
    netloc = parts.netloc
    if parts.password is not None or (parts.username and parts.scheme.lower() in _NO_USER_SCHEMES):
        netloc = "***@" + netloc.rpartition("@")[2]
    # The raw query, item by item, so everything but the redacted values stays as written.
    items = []
    for item in parts.query.split("&") if parts.query else []:
        name, sep, _value = item.partition("=")
        items.append(f"{name}=***" if sep and _secret_param(unquote_plus(name)) else item)
    query = "&".join(items)
    return parts._replace(netloc=netloc, query=query).geturl()


def credentials_problem(url: str | None, put_them: str) -> str | None:
    """The config problem for a URL that carries credentials, or None.

    ``put_them`` completes "credentials never go in the config; ..." with where this field's
    credentials belong. The message shows the URL redacted, never the secret.
    """
    if url is None:
        return None
    found = url_credentials(url)
    if not found:
        return None
    return (
        f"{redact_url(url)!r} carries credentials ({'; '.join(found)}). The config is copied into every "
        f"run's config.yaml, checkpoints and logs, so credentials never go in it; {put_them}"
    )
