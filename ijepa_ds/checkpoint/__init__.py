"""Checkpoints: atomic step folders, our own ``latest`` pointer, exact and elastic resume."""
