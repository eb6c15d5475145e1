"""The one error type for problems a user can cause and fix (bad data, missing file, unknown architecture…).

The CLI prints its message on one line without a traceback and exits 2; anything else is a bug and raises normally.
"""


class UserError(Exception):
    """A problem with the user's input or environment; the message says what to do."""
