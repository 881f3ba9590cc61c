"""Job entry points the CLI verbs call (thin: configs in, library calls, run records out)."""
