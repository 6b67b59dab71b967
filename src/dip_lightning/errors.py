"""One error type for everything a user can get wrong: its message is shown as is, without a traceback."""


class DIPError(ValueError):
    """Bad input or configuration: the message names the file or value and what is expected."""
