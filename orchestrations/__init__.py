"""Sample durable applications.

:mod:`orchestrations.patterns` implements the classic Durable Task patterns (function chaining,
fan-out/fan-in, human interaction, monitor, sub-orchestrations, retries). Run them with
``durable demo``, or serve them with ``durable worker orchestrations.patterns:worker``.
"""
