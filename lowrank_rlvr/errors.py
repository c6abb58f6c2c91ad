"""The one error type for bad input from the person at the keyboard.

Anything raised as `UserError` reaches the CLI, which prints `error: <message>` on one line and exits with code 2.
Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input (a config, a file, a flag): say what and where in one line."""
