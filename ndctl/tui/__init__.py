"""``ndctl dashboard``: a Textual UI over the same core and ops as the CLI.

The core imports nothing from here; this package only talks to a
:class:`~ndctl.tui.backend.DashboardBackend` (the real one on ``ndctl.api`` /
``ndctl.ops``, or :class:`~ndctl.tui.fake.FakeBackend` for tests and screenshots).
"""
