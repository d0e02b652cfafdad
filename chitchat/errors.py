"""The one exception type that reaches the user as a one-line message, never a traceback."""


class ChitchatError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line and exits 2."""
