"""The root of the errors a user causes by input, which the command line prints as one line.

Every error class the package raises for input a user can fix (a setting, a file, the data, the
model) derives from ``InputError``; the CLI prints its message alone and exits with status 2.
Anything else is a bug and keeps its traceback (``ATTNROUND_PL_TRACEBACK=1`` shows it for input
errors too).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


class InputError(Exception):
    """Input a user can fix; the message names the value, the file or the key to change."""


class SettingError(InputError, ValueError):
    """A setting out of its range, or unknown; the message names it and what is valid."""


def is_finite_number(value: object) -> bool:
    """Whether ``value`` is a finite int or float (not a bool, not NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_finite(settings: Any, group: str, error: type[SettingError] = SettingError) -> None:
    """Refuse NaN and infinity in the float fields of a settings dataclass, by name.

    ``group`` is the key the fields sit under (``quant``, ``quant.drop``, ``mixed``, ``recon``):
    the message reads ``recon.lr=nan must be a finite number``. Nested dataclasses and containers
    are left to their own ``validate``; ``error`` is the subclass of ``SettingError`` to raise.
    """
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise error(f"{group}.{f.name}={value} must be a finite number")
