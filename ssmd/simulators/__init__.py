"""Simulated exchanges: one real WebSocket server per venue, for the demo, tests and benchmarks."""
