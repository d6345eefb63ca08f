"""NATS: everything that touches nats-py, behind a Trio bridge (bridge.py, and loop,
types, publish, pull, admin), and the embedded nats-server process (server.py)."""
