"""Credentials in URIs: redacted from everything shown or stored, handed to MLflow through the environment.

A tracking URI may carry a password (`http://user:secret@host:5000`) or a token in its query
(`?token=...`). Nothing this package prints, logs, writes to a file, stores in a checkpoint or sends to
MLflow as a param holds it: `redact_uri` turns it into `http://***@host:5000` (and `?token=***`), and
`redact_tree` does that to every URI-like string of a config. At use time `use_uri` moves the userinfo of
an http(s) URI into MLflow's own variables, `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`
(this process's environment only), and returns the URI without it; a URI whose userinfo is the `***`
placeholder (one read back from a file we wrote) takes its credentials from those variables.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "***"
USER_ENV, PASSWORD_ENV, TOKEN_ENV = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
_SECRET_PARTS = ("token", "password", "passwd", "secret", "key", "auth", "signature", "credential")
_SECRET_NAMES = ("pwd", "pass", "sig")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")
_known: set[str] = set()  # secret values seen by this process: scrubbed from any text we show


def is_secret_param(name: str) -> bool:
    low = name.lower()
    return low in _SECRET_NAMES or any(part in low for part in _SECRET_PARTS)


def redact_uri(uri: str) -> str:
    """`uri` with its userinfo replaced by *** and the values of secret-looking query params by ***."""
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri.split("://", 1)[0] + "://" + MASK
    out = uri
    if "@" in parts.netloc:
        out = out.replace(parts.netloc, f"{MASK}@{parts.netloc.rsplit('@', 1)[1]}", 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(is_secret_param(k) for k, _ in pairs):
            hidden = "&".join(f"{k}={MASK if is_secret_param(k) else v}" for k, v in pairs)
            out = out.replace("?" + parts.query, "?" + hidden, 1)
    return out


def scrub(text: str) -> str:
    """Text for a message or log line: every URI in it redacted, every secret this process knows masked."""
    text = _URI.sub(lambda m: redact_uri(m.group(0)), text)
    for secret in sorted(_known | _env_secrets(), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def redact_tree(obj: Any) -> Any:
    """A copy of plain data (a config as dicts/lists) with every URI-like string redacted."""
    if isinstance(obj, dict):
        return {k: redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_tree(v) for v in obj)
    if isinstance(obj, str) and "://" in obj:
        return scrub(obj)
    return obj


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """(the http(s) URI without userinfo, user, password); user/password None when absent or `***`.

    Other schemes (sqlite, postgresql, ...) come back unchanged: their driver needs the URI as it is."""
    if not uri.startswith(("http://", "https://")):
        return uri, None, None
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    clean = uri.replace(parts.netloc, host, 1)
    if userinfo == MASK:
        return clean, None, None
    user, _, password = userinfo.partition(":")
    return clean, unquote(user), (unquote(password) if password else None)


def use_uri(uri: str) -> str:
    """The URI to hand to MLflow; userinfo moves to MLFLOW_TRACKING_USERNAME/PASSWORD (in-process)."""
    clean, user, password = split_credentials(uri)
    remember(uri)
    if user:
        os.environ[USER_ENV] = user
    if password:
        os.environ[PASSWORD_ENV] = password
    return clean


def remember(uri: str) -> None:
    """Note the secrets of `uri` (password, secret query values) so `scrub` masks them anywhere."""
    if "://" not in uri:
        return
    try:
        parts = urlsplit(uri)
    except ValueError:
        return
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        _, _, password = userinfo.partition(":")
        for value in (password, unquote(password)):
            if len(value) >= 3 and value != MASK:
                _known.add(value)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if is_secret_param(key) and len(value) >= 3:
            _known.add(value)


def auth_header() -> dict[str, str]:
    """The Authorization header MLflow's client would send, from its environment variables."""
    import base64

    user, password, token = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV), os.environ.get(TOKEN_ENV)
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    if token:
        return {"Authorization": f"Bearer {token}"}
    return {}


def _env_secrets() -> set[str]:
    return {v for k in (PASSWORD_ENV, TOKEN_ENV) if len(v := os.environ.get(k, "")) >= 3}
