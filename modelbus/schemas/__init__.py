"""Wire contracts of modelbus: every message on NATS is a tagged, versioned msgspec Struct defined here.

Nothing in this package does I/O. New fields always get defaults so that old and new processes can run
side by side (msgspec skips unknown fields when decoding).
"""
