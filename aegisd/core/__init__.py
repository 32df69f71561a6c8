"""The pure core: session states and their transitions, records, errors, configuration, permission policy and
the transcript builder. Nothing here does I/O on its own or imports anything above it."""
