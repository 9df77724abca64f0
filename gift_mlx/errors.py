"""The error every command reports as one `error: ...` line with exit status 2 (no traceback)."""


class GiftError(Exception):
    """A user mistake (bad file, bad option, incompatible models): the CLI prints it as one line, exit 2."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what was saved and how to go on: the CLI prints `interrupted: <message>` once, exit 130."""
