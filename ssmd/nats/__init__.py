"""NATS: the asyncio bridge to nats-py and the embedded nats-server process."""
