"""One HTTP request's span in the task history (``chat``, ``chat_stream``, ``nsql``), finished once.

A :class:`~modelbus.runtime.tasks.span.TaskSpan` (the one every process records its work with) that starts
from the client's ``traceparent`` header and finishes with the status the client got. The usage, when a
response carries one, is also left in the request's state as ``usage`` (prompt, completion) for the metrics.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.response import Stream

from modelbus.ingress.errors import ApiError
from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.tasks.span import TaskSpan
from modelbus.runtime.tasks.summaries import Usage
from modelbus.runtime.work_queue.errors import BusFailure

__all__ = ("RequestTask",)


class RequestTask(TaskSpan):
    __slots__ = ("request",)

    def __init__(
        self,
        recorder: TaskRecorder,
        request: Request[Any, Any, Any],
        *,
        task: str,
        model: str,
        input: str | None,
    ) -> None:
        super().__init__(
            recorder, task=task, traceparent=request.headers.get("traceparent"), model=model, input=input
        )
        self.request = request

    def set_usage(self, usage: Usage | None) -> None:
        super().set_usage(usage)
        if self.usage is not None:
            self.request.state.usage = (self.usage.prompt_tokens or 0, self.usage.completion_tokens or 0)

    async def around(self, answer: Callable[[], Awaitable[Response[Any]]]) -> Response[Any]:
        """Run the handler's work and finish the span with its outcome (a stream finishes it itself)."""
        try:
            response = await answer()
        except HTTPException as exc:  # ApiError and Litestar's own (413 for a body over the limit)
            code = exc.code if isinstance(exc, ApiError) else None
            await self.finish(exc.status_code or 500, error_code=code, error_message=exc.detail)
            raise
        except BusFailure as exc:
            await self.finish(exc.status, error_code=exc.code, error_message=exc.message)
            raise
        except BaseException:
            await self.finish(499, error_code="client_closed")
            raise
        if not isinstance(response, Stream):
            await self.finish(response.status_code or 200)
        return response
