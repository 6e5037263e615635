"""The command language's registry and argument helpers: every module that defines
commands (commands.py, health_commands.py) registers here, and commands.py runs them."""

from __future__ import annotations

import math
from typing import Callable

from .errors import CommandError
from .state import State

Handler = Callable[[State, list], str]
COMMANDS: dict[str, Handler] = {}      # "name" and "no name" -> handler
# Commands that answer or act for the balancer as a whole (a question, `write`, `exit`):
# a worker group runs them on its parent alone; any other command reaches every worker.
WHOLE: set[str] = set()


def command(*names: str, whole: bool = False):
    def register(fn: Handler) -> Handler:
        for name in names:
            COMMANDS[name] = fn
            if whole:
                WHOLE.add(name)
        return fn
    return register


# --- argument helpers -----------------------------------------------------------------

def number(word: str, what: str, minimum: float = 0, integer: bool = True):
    try:
        value = int(word) if integer else float(word)
    except ValueError:
        raise CommandError(f"{what}: expected a number, got {word!r}") from None
    if not math.isfinite(value):
        raise CommandError(f"{what}: expected a finite number, got {word!r}")
    if value < minimum:
        raise CommandError(f"{what}: must be at least {minimum:g}, got {word}")
    return value


def show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def at_most(args: list, most: int, usage: str) -> list:
    """args, unless there are more than most: then the usage, as the error."""
    if len(args) > most:
        raise CommandError(f"usage: {usage}")
    return args
