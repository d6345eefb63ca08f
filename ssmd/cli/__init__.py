"""ssmd cli."""
