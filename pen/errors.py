"""The two kinds of user mistake, each reported as one line.

UsageError: the command line or start-up (pen prints it and exits 1).
CommandError: one command of the command language (-O, -F, penctl), answered as a line.
Every layer may raise them, so they live here, below all of them.
"""


class UsageError(ValueError):
    """A user's mistake on the command line or at start-up: one line, exit status 1."""


class CommandError(ValueError):
    """A command that cannot be carried out: its one-line answer."""
