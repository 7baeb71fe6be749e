"""The ``durable`` command's pieces below :mod:`durable.cli`: shared helpers (``common``), the
operator command groups and the demo. Nothing outside the CLI imports these."""
