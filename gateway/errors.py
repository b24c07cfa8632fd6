"""One error type for everything the gateway refuses, carrying its HTTP status."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    status_code = 500

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(GatewayError):
    """The body is not JSON, or not a JSON object."""

    status_code = 400


class UnsupportedMediaType(GatewayError):
    status_code = 415


class PayloadTooLarge(GatewayError):
    status_code = 413


class RequestTimeout(GatewayError):
    """The request's body did not arrive in time (``GATEWAY_REQUEST_TIMEOUT_S``) or the client
    went away while sending it."""

    status_code = 408


class AnswerTimeout(GatewayError):
    """No answer within ``GATEWAY_REQUEST_TIMEOUT_S`` (gRPC: ``DEADLINE_EXCEEDED``)."""

    status_code = 504


class InvalidInput(GatewayError):
    """The JSON does not describe a valid business object; ``details`` name each field."""

    status_code = 422


class ModelUnavailable(GatewayError):
    """No model could be loaded (yet)."""

    status_code = 503


class StoreUnavailable(GatewayError):
    """The shared store cannot answer now (it is down or refused); the caller may retry."""

    status_code = 503


class Unavailable(GatewayError):
    """A feature that is switched off in the settings."""

    status_code = 404


class Unauthorized(GatewayError):
    """No credential was sent where one is required (gRPC: ``UNAUTHENTICATED``)."""

    status_code = 401


class Forbidden(GatewayError):
    """A credential was sent, and it is not the configured one (gRPC: ``PERMISSION_DENIED``)."""

    status_code = 403


class InvalidTensor(GatewayError):
    """An Open Inference Protocol request whose tensors do not describe valid objects; the
    message and ``details`` name the tensor (gRPC: ``INVALID_ARGUMENT``)."""

    status_code = 400

    def __init__(self, tensor: str, message: str) -> None:
        super().__init__(f"{tensor}: {message}", [{"field": tensor, "message": message}])
        self.tensor = tensor


class NotFound(GatewayError):
    """A model or version this server does not serve (gRPC: ``NOT_FOUND``)."""

    status_code = 404


class NotImplementedHere(GatewayError):
    """The served pipeline cannot be offered this way (gRPC: ``UNIMPLEMENTED``)."""

    status_code = 501
