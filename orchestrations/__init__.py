"""Sample durable applications.

:mod:`orchestrations.patterns` implements the classic Durable Task patterns (function chaining,
fan-out/fan-in, human interaction, monitor, sub-orchestrations, retries). Run them with
``durable demo``, or serve them with ``durable worker orchestrations.patterns:worker``.

:mod:`orchestrations.agent` is a durable AI support agent (``durable.agents``) with two tools, one
of which needs a person's approval; ``python -m orchestrations.agent`` runs one conversation.
"""
