"""The NSQL worker's core: datasets on ClickHouse, the SQL guard, prompt context, execution and rendering.

Nothing here knows about the bus. ``generate.answer`` runs one question end to end given a way to ask a
model (``ask_model``); the worker wires that to the chat path over NATS.
"""
