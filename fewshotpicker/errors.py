"""The one exception type users see: bad input, reported as one sentence."""


class InputError(ValueError):
    """Bad user input (a file, a parameter, a set).

    The message is one sentence that names the file or the parameter and the
    problem. The command-line front end prints it and exits with code 2.
    """
