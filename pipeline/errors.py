"""The project's user-facing errors: one base class the command-line edge turns into one line.

Anything else that escapes a command (a TypeError, a KeyError, a ValueError raised by a library or
by a bug of ours) keeps its traceback: those are for us to fix, not for the user.
"""


class UserError(Exception):
    """Something the user can fix: bad input, a bad option, an output that cannot be written.
    The message names the file or the option and says what is wrong."""


class UsageError(UserError, ValueError):
    """An option value that cannot work (named in the message), found before any work starts.
    Also a ValueError, the type such checks raised before."""


class MissingDependencyError(UserError, ImportError):
    """An optional package a command needs is not installed (the message says how to install it)."""
