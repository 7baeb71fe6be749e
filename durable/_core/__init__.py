"""The pure core: the model, history events, tasks, the orchestration context and replay executor,
the entity batch executor, the registry and serialization. No I/O: never imports redis or anyio."""
