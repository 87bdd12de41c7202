"""shoal.transports."""
