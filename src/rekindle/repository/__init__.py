"""The engine: backup, restore, check, prune and copy over a backend."""
