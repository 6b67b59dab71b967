"""One error type for everything a user can get wrong: its message is shown as is, without a traceback."""


class DIPError(ValueError):
    """Bad input or configuration: the message names the file or value and what is expected."""


def root_cause(err: BaseException) -> BaseException:
    """The innermost cause of an error that wrappers (Hydra's instantiate) re-raised `from` it; a DIPError there is
    the message to give."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err
