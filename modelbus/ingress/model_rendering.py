"""Model views rendered as ``/v1/models`` bodies (JSON or CSV), cached until the views change.

The list is rendered once per store version and query shape (at most eight shapes), so serving it costs a
dictionary lookup; a change in the bucket bumps the version and the next request renders afresh.
"""

from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType

from modelbus.ingress.csv_format import render_csv
from modelbus.ingress.model_query import ModelQuery, OutputFormat
from modelbus.ingress.model_schemas import ModelEntry, ModelList, ModelMetadata, RetrievedModel
from modelbus.ingress.view_store import ModelViewStore
from modelbus.schemas.views import ModelView

__all__ = ("CSV_COLUMNS", "ModelRenderer", "model_entry", "retrieved_model")

CSV_COLUMNS = ("id", "object", "owned_by", "datasets", "status", "error", "error_message")

_encoder = msgspec.json.Encoder()


def _metadata(view: ModelView, query: ModelQuery) -> ModelMetadata | UnsetType:
    if not query.metadata:
        return UNSET
    return ModelMetadata(supports_responses_api=view.supports_responses_api)


def model_entry(view: ModelView, query: ModelQuery) -> ModelEntry:
    return ModelEntry(
        id=view.id,
        owned_by=view.owned_by,
        datasets=view.datasets or None,
        created=view.created,
        status=view.status if query.status else UNSET,
        error=view.error if query.status else UNSET,
        error_message=view.error_message if query.status else UNSET,
        metadata=_metadata(view, query),
    )


def retrieved_model(view: ModelView, query: ModelQuery) -> RetrievedModel:
    return RetrievedModel(
        id=view.id,
        created=view.created,
        owned_by=view.owned_by,
        status=view.status if query.status else UNSET,
        error=view.error if query.status else UNSET,
        error_message=view.error_message if query.status else UNSET,
        metadata=_metadata(view, query),
    )


def _csv_row(view: ModelView, query: ModelQuery) -> list[str]:
    row = [view.id, "model", view.owned_by, ",".join(view.datasets)]
    if query.status:
        row += [view.status.value, view.error.code if view.error else "", view.error_message or ""]
    else:
        row += ["", "", ""]
    flags = {"supports_responses_api": view.supports_responses_api}
    row += ["true" if flags[field] else "false" for field in query.metadata]
    return row


def render_list(views: tuple[ModelView, ...], query: ModelQuery) -> bytes:
    if query.format is OutputFormat.CSV:
        return render_csv(CSV_COLUMNS + query.metadata, (_csv_row(view, query) for view in views))
    return _encoder.encode(ModelList(data=tuple(model_entry(view, query) for view in views)))


class ModelRenderer:
    """Renders the store's current list for a query, reusing the bytes while the store is unchanged."""

    def __init__(self, views: ModelViewStore) -> None:
        self._views = views
        self._version = -1
        self._cache: dict[ModelQuery, bytes] = {}

    def list_body(self, query: ModelQuery) -> bytes:
        version = self._views.version
        if version != self._version:
            self._cache.clear()
            self._version = version
        body = self._cache.get(query)
        if body is None:
            body = self._cache[query] = render_list(self._views.views(), query)
        return body
