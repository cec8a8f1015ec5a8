"""One HTTP request's span in the task history (``chat``, ``chat_stream``, ``nsql``), finished once.

A :class:`~modelbus.runtime.tasks.span.TaskSpan` (the one every process records its work with) that starts
from the client's ``traceparent`` header and finishes with the status the client got. The usage, when a
response carries one, is also left in the request's state as ``usage`` (prompt, completion) for the metrics.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Response
from litestar.exceptions import HTTPException
from litestar.response import Stream
from litestar.types import Scope

from modelbus.ingress.errors import ApiError
from modelbus.ingress.scope_headers import header
from modelbus.runtime.tasks.recorder import TaskRecorder
from modelbus.runtime.tasks.span import TaskSpan
from modelbus.runtime.tasks.summaries import Usage
from modelbus.runtime.work_queue.errors import BusFailure

__all__ = ("RequestTask",)


class RequestTask(TaskSpan):
    __slots__ = ("state",)

    def __init__(
        self,
        recorder: TaskRecorder,
        scope: Scope,
        *,
        task: str,
        model: str,
        input: str | None,
    ) -> None:
        super().__init__(recorder, task=task, traceparent=_traceparent(scope), model=model, input=input)
        self.state: dict[str, Any] = scope.setdefault("state", {})

    def set_usage(self, usage: Usage | None) -> None:
        super().set_usage(usage)
        if self.usage is not None:
            self.state["usage"] = (self.usage.prompt_tokens or 0, self.usage.completion_tokens or 0)

    async def fail(self, exc: BaseException) -> None:
        """Finish with what ``exc``, raised before any response, tells the client (anything but an HTTP
        error or a bus failure means the client left)."""
        if isinstance(exc, HTTPException):  # ApiError and Litestar's own (413 for a body over the limit)
            code = exc.code if isinstance(exc, ApiError) else None
            await self.finish(exc.status_code or 500, error_code=code, error_message=exc.detail)
        elif isinstance(exc, BusFailure):
            await self.finish(exc.status, error_code=exc.code, error_message=exc.message)
        else:
            await self.finish(499, error_code="client_closed")

    async def around(self, answer: Callable[[], Awaitable[Response[Any]]]) -> Response[Any]:
        """Run the handler's work and finish the span with its outcome (a stream finishes it itself)."""
        try:
            response = await answer()
        except BaseException as exc:
            await self.fail(exc)
            raise
        if not isinstance(response, Stream):
            await self.finish(response.status_code or 200)
        return response


def _traceparent(scope: Scope) -> str | None:
    value = header(scope, b"traceparent")
    return value.decode("latin-1") if value is not None else None
