"""Canonical status codes of `matta serve` and the HTTP codes TF Serving maps them to."""
from __future__ import annotations

# TF Serving's mapping of canonical status codes to HTTP (util/net_http + http_rest_api_handler).
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
    "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
    "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}


# Error messages are cut to this length: gRPC carries them in trailing metadata (8 KiB by
# default), and TF ops quote whole inputs in theirs.
MAX_ERROR_MESSAGE_CHARS = 2000


class ServingError(Exception):
    """An error with a canonical status code name (`NOT_FOUND`, `INVALID_ARGUMENT`, ...)."""

    def __init__(self, code: str, message: str):
        if len(message) > MAX_ERROR_MESSAGE_CHARS:  # e.g. an op quoting a whole bad input
            message = (message[:MAX_ERROR_MESSAGE_CHARS]
                       + f"... [{len(message) - MAX_ERROR_MESSAGE_CHARS} more characters]")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)
