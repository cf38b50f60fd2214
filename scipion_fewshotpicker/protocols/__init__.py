"""Protocols of the plugin, one per file (they arrive with the engine stages they wrap)."""
