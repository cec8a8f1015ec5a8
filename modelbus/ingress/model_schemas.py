"""What ``/v1/models`` answers with: OpenAI's model objects plus Spice's datasets, status and metadata.

Fields a query did not ask for are ``UNSET`` and so absent from the JSON (not null); ``datasets`` is always
present in the list, null when the model has none.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import UNSET, UnsetType

from modelbus.schemas.status import ErrorInfo, ModelStatus

__all__ = ("ModelEntry", "ModelList", "ModelMetadata", "RetrievedModel")


class ModelMetadata(msgspec.Struct, frozen=True, kw_only=True):
    supports_responses_api: bool


class ModelEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One model in the list."""

    id: str
    object: Literal["model"] = "model"
    owned_by: str
    datasets: tuple[str, ...] | None
    created: int
    status: ModelStatus | UnsetType = UNSET
    error: ErrorInfo | UnsetType | None = UNSET
    error_message: str | UnsetType | None = UNSET
    metadata: ModelMetadata | UnsetType = UNSET


class ModelList(msgspec.Struct, frozen=True, kw_only=True):
    object: Literal["list"] = "list"
    data: tuple[ModelEntry, ...]


class RetrievedModel(msgspec.Struct, frozen=True, kw_only=True):
    """One model, as OpenAI's retrieve endpoint shows it."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    status: ModelStatus | UnsetType = UNSET
    error: ErrorInfo | UnsetType | None = UNSET
    error_message: str | UnsetType | None = UNSET
    metadata: ModelMetadata | UnsetType = UNSET
