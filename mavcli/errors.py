"""Exceptions that mean "the user can act on this".

The CLI prints their message (no traceback) and exits with `exit_code`: 2 for bad usage or
input, 1 for a failure of the work (a dropped connection, a corrupt download). Any other
exception is a bug and keeps its traceback.
"""


class MavError(Exception):
    """Base class: a clear message that says what went wrong and what to do."""

    exit_code = 1


class UserInputError(MavError, ValueError):
    """Bad input from the user: a prompt, a file, an option, an unknown pack name."""

    exit_code = 2


class PackError(MavError):
    """A model pack is missing, malformed, or does not match its manifest or config."""

    exit_code = 2


class DownloadError(MavError):
    """Fetching files from the Hub failed mid-way (network, checksum): the work failed."""

    exit_code = 1
