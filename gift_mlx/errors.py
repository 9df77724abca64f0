"""The errors every command reports as one `error: ...` line (no traceback unless `gift --debug`).

Exit status 2: a user mistake gift recognised (GiftError). Exit status 1: anything else, an exception gift did
not foresee, in its own code or in model code it calls (cli.py prints it as one line naming the model, the
command and the exception). 130: Ctrl-C.
"""

USER_ERROR, INTERNAL_ERROR = 2, 1


class GiftError(Exception):
    """A user mistake (bad file, bad option, incompatible models): the CLI prints it as one line, exit 2."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what was saved and how to go on: the CLI prints `interrupted: <message>` once, exit 130."""
