"""ssmd: a market-data recorder for prediction markets."""

__version__ = "0.1.0"
