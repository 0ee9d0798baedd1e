"""Errors that mean "the user's input is wrong" (printed plainly, exit code 2) rather than a bug."""

__all__ = ["UserError"]


class UserError(Exception):
    """Bad input — a file, a row, an argument, a resource request. The message names it."""
