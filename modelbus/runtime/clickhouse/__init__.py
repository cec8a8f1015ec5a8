"""ClickHouse access every process that holds an engine shares (NSQL workers, the history sink): the engine
and its read-only readers (``engine``), a data directory of one's own (``datadir``), identifiers
(``names``)."""
