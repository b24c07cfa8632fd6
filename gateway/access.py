"""Who may call what: bearer tokens for the admin and loop paths, an optional API key for
predictions. Secrets are compared in constant time and never echoed, logged or counted."""

from __future__ import annotations

import hmac

from gateway.errors import Forbidden, Unauthorized
from gateway.settings import GatewaySettings
from trainers.redaction import hide_in_logs, url_password

API_KEY_HEADER = "x-api-key"
"""The HTTP header, and the gRPC metadata key, that carries the prediction API key."""


def check_secret(given: str | None, expected: str, what: str) -> None:
    """Refuse unless ``given`` equals ``expected``: 401 when nothing was sent, 403 when something
    else was (``what`` says what to send; neither message repeats what was sent)."""
    if not given:
        raise Unauthorized(f"{what} is required")
    if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode()):
        raise Forbidden(f"{what} is not valid")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (``None`` for any other scheme)."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def is_prediction(method: str, path: str) -> bool:
    """Whether an HTTP request asks for predictions (the paths an API key guards)."""
    if method != "POST":
        return False
    if path in ("/predict", "/predict/bulk"):
        return True
    return path.startswith("/v2/models/") and path.endswith("/infer")


def hide_secrets(settings: GatewaySettings) -> None:
    """Keep the settings' tokens and the environment's passwords out of this process's logs."""
    tokens = (settings.reload_token, settings.alert_token, settings.feedback_token)
    passwords = (url_password(settings.store_url), url_password(settings.tracking_uri))
    hide_in_logs((*tokens, settings.api_key, *passwords))
