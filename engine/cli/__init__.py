"""The `ngff-engine` command: entry point (entry.py) and its commands (commands.py)."""
