"""Errors of the identity layer."""


class KeyFileError(Exception):
    """A key file that cannot be used; the message names the problem."""
