"""ssmd archiver."""
