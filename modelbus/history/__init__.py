"""Task history: spans of work recorded as events (``recorder``) and written to ClickHouse (``sink``)."""
