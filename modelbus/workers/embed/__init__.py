"""Embedding workers: host embedding models, batch concurrent requests into one engine call, answer on the
bus (``modelbus.v1.embed.<model>``)."""
