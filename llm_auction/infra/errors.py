"""Errors infrastructure raises for a user to read: one line, what failed and what to do."""


class InfraError(RuntimeError):
    """A broker or warehouse that cannot be reached or used (bad URL, refused, missing binary)."""
