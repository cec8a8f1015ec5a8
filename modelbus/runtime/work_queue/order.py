"""Which replies to a request count, and in what order: the rule both sides of a work queue agree on.

Only one worker's answer counts: the first that sent one. Its replies must come ``seq`` 0, 1, ... with no
gap. With the :attr:`~modelbus.schemas.jobs.CommitPoint.RESULT` commit point a worker that stopped before its
answer was whole had its request delivered again, so another worker's reply ``seq`` 0 starts the answer over;
with ``FIRST_REPLY`` the first reply committed the request, and anything from another worker is a late
duplicate.
"""

from __future__ import annotations

from modelbus.runtime.work_queue.errors import ReplyIncomplete
from modelbus.schemas.jobs import CommitPoint, JobReply

__all__ = ("ReplyOrder",)


class ReplyOrder:
    __slots__ = ("_next", "_restartable", "restarts", "worker_id")

    def __init__(self, commit: CommitPoint) -> None:
        self._restartable = commit is CommitPoint.RESULT
        self.worker_id: str | None = None
        self.restarts = 0
        self._next = 0

    def accept(self, reply: JobReply) -> bool:
        """Whether ``reply`` is the next one of the answer (False: ignore it). Raises ReplyIncomplete on a
        gap; a reply ``seq`` 0 that starts over (see the module docstring) counts ``restarts``."""
        if self.worker_id is not None and reply.worker_id != self.worker_id:
            if not (self._restartable and reply.seq == 0):
                return False
            self.restarts += 1
            self._next = 0
        self.worker_id = reply.worker_id
        if reply.seq != self._next:
            raise ReplyIncomplete(f"part {self._next} of the reply went missing (got part {reply.seq})")
        self._next += 1
        return True
