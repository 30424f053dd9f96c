"""The one exception type for user errors.

The CLI turns a `CondenseError` into its message and exit code 1 (no traceback); anything
else is a bug and exits with code 2. Messages say what went wrong, where, and how to fix it.
"""


class CondenseError(Exception):
    """A problem the user can fix: bad input, missing data, an unreadable file."""

    exit_code = 1


class Interrupted(CondenseError):
    """The user stopped a long run (Ctrl-C); its state was saved where the message says."""

    exit_code = 130
