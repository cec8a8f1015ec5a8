"""One JSON request to an OpenAI-compatible upstream, with its failures classified the one way
(:mod:`modelbus.workers.model.providers.errors`): shared by the chat provider and the embedding provider."""

from __future__ import annotations

import aiohttp

from modelbus.workers.model.providers.base import CheckFailed
from modelbus.workers.model.providers.errors import (
    UpstreamResponse,
    classify_response,
    classify_transport,
    transport_error,
    upstream_error,
    upstream_message,
)

__all__ = ("post_answer", "probe", "upstream_session")


def upstream_session(connector: aiohttp.BaseConnector, headers: dict[str, str]) -> aiohttp.ClientSession:
    """A session to one upstream. No cookie jar: a provider's cookies must not pass from one client's request
    to another's (and none is kept, filtered or merged on every call)."""
    return aiohttp.ClientSession(connector=connector, headers=headers, cookie_jar=aiohttp.DummyCookieJar())


async def probe(
    session: aiohttp.ClientSession, url: str, data: bytes, *, timeout: float, where: str, secret: str | None
) -> None:
    """A readiness check: raise CheckFailed (the model's status error) unless the upstream answers 2xx."""
    try:
        async with session.post(url, data=data, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            body = await response.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise CheckFailed(classify_transport(exc), f"{type(exc).__name__} calling {where}: {exc}") from exc
    if response.status >= 400:
        failed = UpstreamResponse(response.status, body)
        raise CheckFailed(classify_response(failed), upstream_message(failed, secret))


async def post_answer(
    session: aiohttp.ClientSession, url: str, data: bytes, *, timeout: aiohttp.ClientTimeout, where: str,
    secret: str | None,
) -> bytes:  # fmt: skip
    """A plain answer's body; a failure is the ProviderError the client gets."""
    try:
        async with session.post(url, data=data, timeout=timeout) as response:
            body: bytes = await response.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise transport_error(exc, where) from exc
    if response.status >= 400:
        raise upstream_error(UpstreamResponse(response.status, body), secret)
    return body
