"""The errors lotto raises for problems its user fixes.

`python -m lotto` (lotto.cli.main) prints a UserError's message alone, one line per problem,
and exits with code 2; any other exception is a bug in lotto and keeps its traceback. Each
class also derives from the built-in exception callers already catch (ValueError, ...).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input, a missing, corrupt or mismatched file, or a request this machine cannot serve;
    the message says which and how to fix it."""


class InvalidValue(UserError, ValueError):
    """A value lotto refuses: an unknown name, a number out of range, files that do not fit."""


class CannotRun(UserError, RuntimeError):
    """A valid request that cannot run here or now: no CUDA device, a search that diverged."""
