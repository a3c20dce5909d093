"""Errors meant for users: the CLI prints them as one line (``error: ...``) and exits with status 2."""


class MoezooError(Exception):
    """A problem with the user's input (a path, a file, a key, a value); the message names it and what is valid."""
