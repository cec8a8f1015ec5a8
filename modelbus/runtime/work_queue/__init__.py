"""Jobs on JetStream work queues, the same for every kind (see docs/architecture.md, "Work queues"): the
client (``client``, ``order``), the consumer (``consumer``, ``reader``, ``cancellation``) and the failures
(``errors``)."""
