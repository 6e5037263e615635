"""The two kinds of user mistake, each reported as one line, and a peer's refused bytes.

UsageError: the command line or start-up (pen prints it and exits 1).
CommandError: one command of the command language (-O, -F, penctl), answered as a line.
Refused: bytes a peer sent that the relay must not pass on (the connection ends, counted).
Every layer may raise them, so they live here, below all of them.
"""


class UsageError(ValueError):
    """A user's mistake on the command line or at start-up: one line, exit status 1."""


class CommandError(ValueError):
    """A command that cannot be carried out: its one-line answer."""


class Refused(Exception):
    """A relay transform met bytes it must not pass on: the relay sends `answer` back
    (nothing when empty), ends the connection and counts `event`."""

    answer = b""

    def __init__(self, reason: str, event: str) -> None:
        super().__init__(reason)
        self.event = event
