"""What every layer above the domain shares: configuration, errors, logging, redaction."""
