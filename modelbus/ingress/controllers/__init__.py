"""Route handlers, one module per API area; each exposes a factory that returns its Litestar router."""
