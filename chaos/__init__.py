"""shoal.chaos."""
