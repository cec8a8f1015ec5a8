"""What the two routes answered by chat jobs (``/v1/chat/completions``, ``/v1/responses``) share: their error
table, and waiting for a job's first reply while watching the client."""

from __future__ import annotations

import anyio
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec.security_requirement import SecurityRequirement
from litestar.types import Receive

from modelbus.ingress.disconnect import unless_disconnected
from modelbus.ingress.errors import error_spec, failure_error
from modelbus.runtime.work_queue.client import Pending
from modelbus.schemas.chat import ChatFailure, ChatReply, ChatResult

__all__ = ("chat_job_errors", "first_reply")


def chat_job_errors(security: list[SecurityRequirement] | None) -> dict[int, ResponseSpec]:
    errors = {
        400: error_spec("Malformed or invalid request"),
        404: error_spec("Unknown model"),
        413: error_spec("The request body is too large"),
        429: error_spec("The model's queue is full (see Retry-After)"),
        502: error_spec("The upstream provider failed"),
        503: error_spec("The model has no ready worker, or the bus is unavailable"),
        504: error_spec("The deadline passed"),
    }
    if security:
        errors[401] = error_spec("Missing or invalid API key")
    return errors


async def first_reply(receive: Receive, pending: Pending[ChatReply]) -> ChatReply | None:
    """The job's first reply; None when the client left first (the job is cancelled, so a queued one never
    starts). A failure is raised as the client's error; a result closes the job's route; a chunk leaves it
    open for the stream."""
    try:
        first = await unless_disconnected(receive, pending.next)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await pending.close(cancel=True)
        raise
    if first is None:
        await pending.close(cancel=True)
        return None
    if isinstance(first, ChatFailure):
        await pending.close(cancel=False)
        raise failure_error(first)
    if isinstance(first, ChatResult):
        await pending.close(cancel=False)
    return first
