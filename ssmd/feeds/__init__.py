"""One module per venue: what each exchange does differently, with no I/O."""
