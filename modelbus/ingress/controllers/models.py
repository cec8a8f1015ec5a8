"""``GET /v1/models`` (Spice's list, JSON or CSV) and ``GET /v1/models/{model_id}`` (OpenAI's retrieve).

Both answer from the in-memory :class:`~modelbus.ingress.view_store.ModelViewStore`; until its first view has
arrived they answer 500 ``App not initialized`` (Spice's message, in the JSON error shape, with
``Retry-After``).
"""

from __future__ import annotations

from typing import Annotated

from litestar import MediaType, Response, Router, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Schema
from litestar.openapi.spec.security_requirement import SecurityRequirement
from litestar.params import Parameter, QueryParameter

from modelbus.ingress.csv_format import CSV_MEDIA_TYPE
from modelbus.ingress.errors import ApiError, error_spec
from modelbus.ingress.model_query import (
    METADATA_FIELDS,
    ModelQuery,
    OutputFormat,
    parse_bool,
    parse_format,
    parse_metadata_fields,
)
from modelbus.ingress.model_rendering import CSV_COLUMNS, ModelRenderer, retrieved_model
from modelbus.ingress.model_schemas import ModelList, RetrievedModel
from modelbus.ingress.openapi import operation_with_content
from modelbus.ingress.view_store import ModelViewStore

__all__ = ("models_router",)

StatusParam = Annotated[
    str,
    QueryParameter(
        name="status",
        description="Include each model's status, error and error_message (true/false or 1/0).",
        schema_extra={"type": "boolean", "default": False},
    ),
]
FormatParam = Annotated[
    str,
    QueryParameter(
        name="format",
        description="Response format (case-insensitive).",
        schema_extra={"enum": [f.value for f in OutputFormat]},
    ),
]
MetadataParam = Annotated[
    str,
    QueryParameter(
        name="metadata_fields",
        description=f"Comma-separated metadata fields to include; known: {', '.join(METADATA_FIELDS)}. "
        "Empty means none.",
    ),
]

_CSV_EXAMPLE = (
    ",".join(CSV_COLUMNS) + "\r\nqwen2.5-coder,model,local:qwen2.5-coder-0.5b-instruct,"
    '"sales,orders",ready,,\r\n'
)
_CSV_CONTENT = {
    CSV_MEDIA_TYPE: OpenAPIMediaType(
        schema=Schema(
            type=OpenAPIType.STRING,
            description=f"RFC 4180 CSV with the header {','.join(CSV_COLUMNS)} plus one column per requested "
            "metadata field; datasets are comma-joined in one cell, error holds the error code.",
        ),
        example=_CSV_EXAMPLE,
    )
}


def _not_initialized() -> ApiError:
    return ApiError(500, "App not initialized", code="app_not_initialized", headers={"Retry-After": "1"})


def models_router(
    views: ModelViewStore, renderer: ModelRenderer, *, security: list[SecurityRequirement] | None = None
) -> Router:
    """The models routes, serving ``views`` (lists rendered by ``renderer``, which the ingress's fast lane
    shares); ``security`` documents the API-key requirement when on."""
    errors: dict[int, ResponseSpec] = {
        400: error_spec("A query parameter has a value that is not allowed"),
        500: error_spec("App not initialized (no model view has arrived yet; retry), or an unexpected error"),
    }
    if security:
        errors[401] = error_spec("Missing or invalid API key")

    @get(
        "/v1/models",
        summary="List models",
        description="Every model the registry knows, sorted by id, with optional status and metadata, "
        "as JSON (OpenAI's list envelope) or CSV.",
        operation_id="listModels",
        tags=["models"],
        sync_to_thread=False,
        responses={
            200: ResponseSpec(ModelList, description="The models", generate_examples=False),
            **errors,
        },
        operation_class=operation_with_content({"200": _CSV_CONTENT}),
    )
    def list_models(
        status: StatusParam = "false", format_: FormatParam = "json", metadata_fields: MetadataParam = ""
    ) -> Response[bytes]:
        query = ModelQuery(
            status=parse_bool("status", status),
            format=parse_format(format_),
            metadata=parse_metadata_fields(metadata_fields),
        )
        if not views.initialized:
            raise _not_initialized()
        if query.format is OutputFormat.CSV:
            return Response(renderer.list_body(query), media_type=CSV_MEDIA_TYPE)
        return Response(renderer.list_body(query), media_type=MediaType.JSON)

    @get(
        "/v1/models/{model_id:path}",
        summary="Retrieve a model",
        description="One model, as OpenAI's retrieve endpoint shows it, with optional status and metadata. "
        "Model ids may contain dots and slashes.",
        operation_id="retrieveModel",
        tags=["models"],
        sync_to_thread=False,
        responses={
            200: ResponseSpec(RetrievedModel, description="The model", generate_examples=False),
            404: error_spec("No model has this id"),
            **errors,
        },
    )
    def retrieve_model(
        model_id: Annotated[str, Parameter(description="The model id")],
        status: StatusParam = "false",
        metadata_fields: MetadataParam = "",
    ) -> RetrievedModel:
        model_id = model_id.removeprefix("/")
        query = ModelQuery(
            status=parse_bool("status", status), metadata=parse_metadata_fields(metadata_fields)
        )
        if not views.initialized:
            raise _not_initialized()
        view = views.get(model_id)
        if view is None:
            raise ApiError(
                404,
                f"The model '{model_id}' does not exist.",
                code="model_not_found",
                param="model",
            )
        return retrieved_model(view, query)

    return Router(path="/", route_handlers=[list_models, retrieve_model], security=security)
