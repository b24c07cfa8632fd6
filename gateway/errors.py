"""Everything the gateway refuses, as one hierarchy. Each class carries its HTTP status and its
gRPC status code; a transport maps a refusal in one function — HTTP in
:func:`gateway.http.error_response`, gRPC in :func:`gateway.oip.grpc_server.refusal` — and
nothing else looks at the class.

.. code-block:: text

    GatewayError                        HTTP   gRPC
    ├── BadRequest                      400    INVALID_ARGUMENT     not JSON, nested too deep, …
    │   └── InvalidTensor               400    INVALID_ARGUMENT     an OIP tensor, named
    ├── InvalidInput                    422    INVALID_ARGUMENT     business objects, per field
    ├── Unauthorized                    401    UNAUTHENTICATED      no credential sent
    ├── Forbidden                       403    PERMISSION_DENIED    another credential sent
    ├── NotFound                        404    NOT_FOUND            a model or version not served
    │   └── Disabled                    404    NOT_FOUND            a feature switched off
    ├── RequestTimeout                  408    DEADLINE_EXCEEDED    the body came too slowly
    ├── PayloadTooLarge                 413    RESOURCE_EXHAUSTED
    ├── UnsupportedMediaType            415    INVALID_ARGUMENT
    ├── NotImplementedHere              501    UNIMPLEMENTED
    ├── Unavailable                     503    UNAVAILABLE          try again later
    │   ├── Overloaded                  503    RESOURCE_EXHAUSTED   the queue is full; Retry-After
    │   ├── ModelUnavailable            503    UNAVAILABLE          no model loaded (yet)
    │   │   └── loader.IntegrityError   503    UNAVAILABLE          bytes differ from their record
    │   └── StoreUnavailable            503    UNAVAILABLE          the shared store cannot answer
    └── AnswerTimeout                   504    DEADLINE_EXCEEDED    no answer in time

A refusal that tells the client when to come back sets ``retry_after`` (seconds): HTTP sends it
as ``Retry-After``, gRPC as ``retry-after`` metadata.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    status_code = 500
    grpc_code = "INTERNAL"
    """The name of the ``grpc.StatusCode`` (kept as text: this module imports nothing)."""

    retry_after: float | None = None

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
    """The body is not JSON, or not a JSON object, or otherwise not a request at all."""

    status_code = 400
    grpc_code = "INVALID_ARGUMENT"


class InvalidTensor(BadRequest):
    """An Open Inference Protocol request whose tensors do not describe valid objects; the
    message and ``details`` name the tensor."""

    def __init__(self, tensor: str, message: str) -> None:
        super().__init__(f"{tensor}: {message}", [{"field": tensor, "message": message}])
        self.tensor = tensor


class InvalidInput(GatewayError):
    """The JSON does not describe a valid business object; ``details`` name each field."""

    status_code = 422
    grpc_code = "INVALID_ARGUMENT"


class Unauthorized(GatewayError):
    """No credential was sent where one is required."""

    status_code = 401
    grpc_code = "UNAUTHENTICATED"


class Forbidden(GatewayError):
    """A credential was sent, and it is not the configured one."""

    status_code = 403
    grpc_code = "PERMISSION_DENIED"


class NotFound(GatewayError):
    """A model or version this server does not serve."""

    status_code = 404
    grpc_code = "NOT_FOUND"


class Disabled(NotFound):
    """A feature that is switched off in the settings: to a client, the route is not there."""


class RequestTimeout(GatewayError):
    """The request's body did not arrive in time (``GATEWAY_REQUEST_TIMEOUT_S``) or the client
    went away while sending it."""

    status_code = 408
    grpc_code = "DEADLINE_EXCEEDED"


class PayloadTooLarge(GatewayError):
    status_code = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class UnsupportedMediaType(GatewayError):
    status_code = 415
    grpc_code = "INVALID_ARGUMENT"


class NotImplementedHere(GatewayError):
    """The served pipeline cannot be offered this way."""

    status_code = 501
    grpc_code = "UNIMPLEMENTED"


class Unavailable(GatewayError):
    """The server cannot answer now; the same request may succeed later."""

    status_code = 503
    grpc_code = "UNAVAILABLE"


class Overloaded(Unavailable):
    """The serving queue is full; the caller should come back after ``retry_after`` seconds."""

    grpc_code = "RESOURCE_EXHAUSTED"

    def __init__(self, queued: int, limit: int, retry_after: float) -> None:
        super().__init__(
            f"overloaded: {queued} items are queued (limit {limit}); retry in {retry_after:.1f} s"
        )
        self.retry_after = max(1.0, float(round(retry_after)))


class ModelUnavailable(Unavailable):
    """No model could be loaded (yet)."""


class StoreUnavailable(Unavailable):
    """The shared store cannot answer now (it is down or refused); the caller may retry."""


class AnswerTimeout(GatewayError):
    """No answer within ``GATEWAY_REQUEST_TIMEOUT_S``."""

    status_code = 504
    grpc_code = "DEADLINE_EXCEEDED"
