"""The one error type for problems a user can cause and fix (bad data, missing file, unknown architecture…).

The CLI prints its message on one line without a traceback and exits 2; anything else is a bug and raises normally.
"""


class UserError(Exception):
    """A problem with the user's input or environment; the message says what to do."""


class Invalid(UserError):
    """What was asked for is malformed (an empty list of inputs, too many of them); the server answers 400."""


class NotFound(UserError):
    """What was asked for does not exist (no such job, task or file); the server answers 404."""


class Conflict(UserError):
    """What was asked for cannot happen in the current state (a job already running, one that has finished); the
    server answers 409."""
