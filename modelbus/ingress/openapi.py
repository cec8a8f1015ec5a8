"""The OpenAPI document: title, the API-key security schemes, and responses with more than one media type."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Schema,
    SecurityScheme,
)
from litestar.openapi.spec.security_requirement import SecurityRequirement

from modelbus.runtime.version import package_version

__all__ = ("API_KEY_SECURITY", "openapi_config", "operation_with_content")

API_KEY_SECURITY: list[SecurityRequirement] = [{"ApiKey": []}, {"Bearer": []}]
_SCHEMES = {
    "ApiKey": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header"),
    "Bearer": SecurityScheme(type="http", scheme="bearer", description="the API key as a bearer token"),
}


def openapi_config(*, auth: bool, version: str | None = None) -> OpenAPIConfig:
    return OpenAPIConfig(
        title="modelbus",
        version=version or package_version(),
        description="Spice AI's LLM HTTP API, served by NATS workers.",
        components=Components(security_schemes=dict(_SCHEMES)) if auth else Components(),
    )


def operation_with_content(extra: Mapping[str, Mapping[str, OpenAPIMediaType]]) -> type[Operation]:
    """An Operation class that adds media types to responses Litestar generated (e.g. CSV beside JSON)."""

    @dataclass
    class _Operation(Operation):
        def __post_init__(self) -> None:
            for status, content in extra.items():
                response = (self.responses or {}).get(status)
                if isinstance(response, OpenAPIResponse):
                    response.content = {**(response.content or {}), **content}

    return _Operation


def sse_media_type(description: str, *, event_pattern: str | None = None) -> OpenAPIMediaType:
    """``text/event-stream`` content, by the OpenAPI 3.1 convention for event streams: the schema describes
    each event (``event`` ``message`` or ``error``, or matching ``event_pattern``, and its ``data``)."""
    event = (
        Schema(type=OpenAPIType.STRING, pattern=event_pattern)
        if event_pattern
        else Schema(type=OpenAPIType.STRING, enum=["message", "error"])
    )
    return OpenAPIMediaType(
        schema=Schema(
            type=OpenAPIType.OBJECT,
            description=description,
            required=["data"],
            properties={
                "event": event,
                "data": Schema(type=OpenAPIType.STRING),
            },
        )
    )
