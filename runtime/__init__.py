"""shoal.runtime."""
