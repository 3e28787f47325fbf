"""The pure core of ndctl: inventory, selectors, results, facts and auto-tags.

Nothing under ``ndctl.core`` imports asyncssh, Typer or Textual, so it can be
used and tested without any network or terminal.
"""
