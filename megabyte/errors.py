"""The one exception type users see: a clear message, no traceback."""


class MegabyteError(Exception):
    """A problem with the user's input (a file, a config, a flag), explained in words.

    The command line prints the message and exits with status 2 instead of a traceback.
    """
