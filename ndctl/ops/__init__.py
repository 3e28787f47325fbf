"""Async operations: pure builders and parsers composed with the transport."""
