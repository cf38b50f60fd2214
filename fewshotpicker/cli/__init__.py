"""Command-line interface: one module per command, ``main(argv=None) -> int``."""
