"""The small runtime every modelbus process shares: logging, NATS connection, embedded server, lifecycle."""
