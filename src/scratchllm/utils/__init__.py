"""Small helpers shared by several stages (device selection, atomic file writes)."""
