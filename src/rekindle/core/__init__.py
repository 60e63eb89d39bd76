"""Lowest layer: errors, clock and small helpers shared by every other layer. No I/O."""
