"""Errors the API maps to status codes (``status``); the worker and the CLI see the same ones."""

from __future__ import annotations


class AppError(Exception):
    status = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Forbidden(AppError):
    status = 403


class NotFound(AppError):
    status = 404


class Conflict(AppError):
    status = 409


class Unavailable(AppError):
    status = 503

    def __init__(self, component: str, detail: str | None = None) -> None:
        super().__init__(detail or f"{component} is unavailable")
        self.component = component


class ModelMismatch(Conflict):
    pass
