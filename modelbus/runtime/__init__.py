"""What every modelbus process shares: logging, the NATS connection and embedded server, JetStream resources,
the work queues, task spans, ClickHouse access, a worker's presence on the bus, and the service lifecycle."""
