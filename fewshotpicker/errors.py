"""The one exception type users see: bad input, reported as one sentence."""
from pathlib import Path
from typing import Dict


class InputError(ValueError):
    """Bad user input (a file, a parameter, a set).

    The message is one sentence that names the file or the parameter and the
    problem. The command-line front end prints it and exits with code 2.
    """


def failure_message(path: Path, exc: Exception) -> str:
    """``exc`` as one line that names ``path`` (InputErrors already do): why one micrograph of
    a batch was skipped."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if str(path) in text else f"{path}: {text}"


def none_picked(failed: Dict[str, str]) -> InputError:
    """The error of a batch in which no micrograph could be picked (``failed``: path -> why,
    from :func:`failure_message`): a single micrograph's own sentence, else the count and the
    first reason."""
    reasons = list(failed.values())
    if len(reasons) == 1:
        return InputError(reasons[0])
    return InputError(f"None of the {len(reasons)} micrographs could be picked; the first error "
                      f"was: {reasons[0]}")
