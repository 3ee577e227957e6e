"""Application services: the use cases (sync, audit, projection control) the CLI and HTTP API call."""
