"""zmqkit.patterns: pipeline (PUSH/PULL), fanout (PUB/SUB) and request-reply (ROUTER/DEALER)."""

__all__: list[str] = []
