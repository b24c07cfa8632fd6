"""Secrets never reach a log line: every record a process logs is scrubbed of the values it was
given as secrets (tokens, API keys, the passwords in store and tracking URLs and in the
variables PostgreSQL and MLflow read them from)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

PASSWORD_VARIABLES = ("PGPASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
URL_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "GATEWAY_STORE_URL")
MASK = "***"
_hidden: set[str] = set()


def secrets_from_environment(extra: Iterable[str | None] = ()) -> set[str]:
    """``extra`` and the secrets this process's environment holds."""
    found = {*extra, *(os.environ.get(v) for v in PASSWORD_VARIABLES)}
    found.update(url_password(os.environ.get(v)) for v in URL_VARIABLES)
    return {s for s in found if s and len(s) >= 4}  # shorter values would mask ordinary text


def url_password(url: str | None) -> str | None:
    """The password in ``url``, if it has one."""
    try:
        return urlsplit(url or "").password
    except ValueError:
        return None


def hide(text: str) -> str:
    """``text`` with every hidden secret replaced by ``***``."""
    for secret in sorted(_hidden, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def hide_in_logs(secrets: Iterable[str | None] = ()) -> None:
    """From now on, scrub ``secrets`` (and the environment's) from every log record of this
    process: its message, and the traceback it carries."""
    first = not _hidden
    _hidden.update(secrets_from_environment(secrets))
    if not first or not _hidden:
        return
    make = logging.getLogRecordFactory()

    def scrubbed(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
            clean = hide(message)
            if clean != message:
                record.msg, record.args = clean, None
            if record.exc_info and record.exc_info[0] is not None:
                record.exc_text = hide(logging.Formatter().formatException(record.exc_info))
        except Exception:  # a record that cannot be formatted is logging's to report
            pass
        return record

    logging.setLogRecordFactory(scrubbed)
