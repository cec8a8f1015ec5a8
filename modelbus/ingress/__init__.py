"""The HTTP face of modelbus: a Litestar app serving Spice's LLM API, fed by NATS.

:func:`modelbus.ingress.app.create_app` builds the app; :class:`modelbus.ingress.server.IngressServer` serves
it with uvicorn beside a :class:`modelbus.ingress.view_store.ModelViewStore` that keeps the registry's model
views in memory.
"""
