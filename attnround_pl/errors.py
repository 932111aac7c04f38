"""The root of the errors a user causes by input, which the command line prints as one line.

Every error class the package raises for input a user can fix (a setting, a file, the data, the
model) derives from ``InputError``; the CLI prints its message alone and exits with status 2.
Anything else is a bug and keeps its traceback (``ATTNROUND_PL_TRACEBACK=1`` shows it for input
errors too).
"""

from __future__ import annotations


class InputError(Exception):
    """Input a user can fix; the message names the value, the file or the key to change."""


class SettingError(InputError, ValueError):
    """A setting out of its range, or unknown; the message names it and what is valid."""
