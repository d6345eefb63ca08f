"""ssmd connector."""
