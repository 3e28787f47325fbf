"""The ``ndctl`` command line (Typer): thin, over ``ndctl.api`` and ``ndctl.ops``."""
