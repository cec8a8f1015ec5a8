"""The task-history sink: the recorded spans and status changes, written to ClickHouse's ``task_history``.
Recording them is the runtime's (``modelbus.runtime.tasks``)."""
