"""Simulated exchanges: real local servers speaking each venue's protocol."""
