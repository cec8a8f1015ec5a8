"""Model statuses and the structured error a model in ``error`` carries (the seed's ``error`` object)."""

from __future__ import annotations

import enum

import msgspec

__all__ = ("ErrorCategory", "ErrorInfo", "ErrorType", "ModelStatus")


class ModelStatus(enum.StrEnum):
    READY = "ready"
    LOADING = "loading"
    ERROR = "error"


class ErrorCategory(enum.StrEnum):
    MODEL = "model"
    DATASET = "dataset"
    WORKER = "worker"
    RUNTIME = "runtime"


class ErrorType(enum.StrEnum):
    AUTH = "auth"
    CONNECTION = "connection"
    TIMEOUT = "timeout"
    VALIDATION = "validation"
    NOT_FOUND = "not_found"
    PERMISSION = "permission"
    RATE_LIMIT = "rate_limit"
    LOADING = "loading"
    INTERNAL = "internal"
    UNKNOWN = "unknown"


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """``{category, type, code}``; ``code`` is always ``"{category}.{type}"``."""

    category: ErrorCategory
    type: ErrorType
    code: str

    @classmethod
    def of(cls, category: ErrorCategory, type_: ErrorType) -> ErrorInfo:
        return cls(category=category, type=type_, code=f"{category.value}.{type_.value}")
