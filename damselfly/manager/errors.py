"""The one error the manager's layers raise for a caller's mistake: an HTTP status and one line."""

from __future__ import annotations


class ApiError(Exception):
    """Answered as ``{"error": message}`` with ``status``; ``headers`` go along (Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def not_found(what: str, id_: int) -> ApiError:
    return ApiError(404, f"no {what} with id {id_}")
