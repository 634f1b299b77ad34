"""Exit statuses the commands share (a module of its own: the package's entry point reads it
before anything else is imported)."""

EXIT_INTERRUPTED = 130  # as a shell reports a SIGINT death
