"""The composition root: the ``modelbus`` command (``main``), ``modelbus up``'s launcher, the probe, and the
generator of ``docs/errors.md`` (``reference``). The only layer that may import every other."""
