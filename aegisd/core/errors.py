"""A small exception hierarchy. Each error carries a stable wire code and the HTTP status it maps to;
the mapping to a surface (HTTP envelope, control-socket frame, CLI exit) happens in exactly one place each."""

from __future__ import annotations

from typing import Any, ClassVar


class AegisError(Exception):
    code: ClassVar[str] = "INTERNAL_ERROR"
    status: ClassVar[int] = 500
    spread_details: ClassVar[bool] = False  # HTTP: details' fields also at the top level (a result body)

    def __init__(self, message: str = "", *, details: Any = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details


class ValidationError(AegisError):
    code = "VALIDATION_ERROR"
    status = 400


class InvalidModel(ValidationError):
    """The agent offers no such model (details: {models}), or no way to choose one."""

    code = "INVALID_MODEL"


class InvalidWorkDir(AegisError):
    code = "INVALID_WORKDIR"
    status = 400


class Unauthorized(AegisError):
    code = "UNAUTHORIZED"
    status = 401


class Forbidden(AegisError):
    code = "FORBIDDEN"
    status = 403


class SessionForbidden(Forbidden):
    code = "SESSION_FORBIDDEN"


class OriginNotAllowed(Forbidden):
    """A browser request from a web origin that is neither the daemon's own nor in allowedOrigins."""

    code = "ORIGIN_NOT_ALLOWED"


class NotFound(AegisError):
    code = "NOT_FOUND"
    status = 404


class SessionNotFound(NotFound):
    code = "SESSION_NOT_FOUND"


class UnknownOperation(NotFound):
    code = "UNKNOWN_OPERATION"


class Conflict(AegisError):
    code = "CONFLICT"
    status = 409


class NoPendingPermission(Conflict):
    code = "NO_PENDING_PERMISSION"


class PermissionRequestMismatch(Conflict):
    """Approve/reject named a permission request that is not the one pending (decided, newer, unknown): the
    caller decided on something its user never saw, so nothing is decided."""

    code = "PERMISSION_REQUEST_MISMATCH"


class SessionNotLive(Conflict):
    code = "SESSION_NOT_LIVE"


class SessionBusy(Conflict):
    code = "SESSION_BUSY"


class IllegalTransition(Conflict):
    code = "ILLEGAL_TRANSITION"


class AmbiguousId(Conflict):
    code = "AMBIGUOUS_ID"


class PayloadTooLarge(AegisError):
    code = "PAYLOAD_TOO_LARGE"
    status = 413


class UnsupportedMediaType(AegisError):
    """A request body that is not JSON (what a web page can send without a CORS preflight)."""

    code = "UNSUPPORTED_MEDIA_TYPE"
    status = 415


class HostNotAllowed(AegisError):
    """A Host header that is not a local name, an IP address or in allowedHosts (DNS rebinding)."""

    code = "HOST_NOT_ALLOWED"
    status = 421


class RateLimited(AegisError):
    code = "RATE_LIMITED"
    status = 429


class CapacityExceeded(AegisError):
    code = "CAPACITY_EXCEEDED"
    status = 429


class QuotaExceeded(AegisError):
    """A per-key quota (concurrent sessions, tokens or spend in a window) is used up."""

    code = "QUOTA_EXCEEDED"
    status = 429


class DeliveryFailed(AegisError):
    """An outbound notification (alert webhook) could not be delivered."""

    code = "DELIVERY_FAILED"
    status = 502


class VerificationFailed(AegisError):
    """The project's checks failed (the result is in details, and at the top level over HTTP)."""

    code = "VERIFICATION_FAILED"
    status = 422
    spread_details = True


class NotImplementedYet(AegisError):
    code = "NOT_IMPLEMENTED"
    status = 501


class Unavailable(AegisError):
    code = "UNAVAILABLE"
    status = 503


class StoreUnavailable(Unavailable):
    """The store cannot make a write durable now (its server is down, its directory is gone): the operation did
    not take effect; try again after ``retry_after`` seconds (HTTP: 503 with Retry-After; details: retryAfter)."""

    code = "STORE_UNAVAILABLE"
    retry_after: ClassVar[int] = 5

    def __init__(self, message: str = "", *, details: Any = None, retry_after: int | None = None) -> None:
        after = self.retry_after if retry_after is None else retry_after
        if details is None:
            details = {"retryAfter": after}
        super().__init__(message, details=details)


class SessionFenced(Unavailable):
    """This node no longer owns the session (its lease was lost, another node adopted it): nothing was written for
    it; the caller tries again and reaches the session's new owner (details: retryAfter)."""

    code = "SESSION_MOVED"

    def __init__(self, message: str = "", *, details: Any = None) -> None:
        super().__init__(message, details=details if details is not None else {"retryAfter": 1})


class ResourceExhausted(Unavailable):
    """The daemon or the machine ran out of open files, processes or memory: this one request is refused
    (details: {resource, retryAfter}); the sessions already running go on."""

    code = "RESOURCE_EXHAUSTED"


class AgentError(AegisError):
    """The agent process failed or broke the protocol (the session crashes, the daemon does not)."""

    code = "AGENT_ERROR"
    status = 502


class ProtocolError(AgentError):
    code = "ACP_PROTOCOL_ERROR"


class RequestTimeout(AgentError):
    code = "ACP_REQUEST_TIMEOUT"
    status = 504


_BY_CODE: dict[str, type[AegisError]] = {}


def _index(cls: type[AegisError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _index(sub)


def error_from_code(code: str, message: str) -> AegisError:
    """Rebuild a domain error from its wire code (used by clients of the control protocol)."""
    if not _BY_CODE:
        _index(AegisError)
    cls = _BY_CODE.get(code, AegisError)
    err = cls(message)
    if cls is AegisError:
        err.code = code  # type: ignore[misc]
    return err
