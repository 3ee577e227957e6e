"""One set of bounds for every option and name a user or a client can give, shared by the CLI, the HTTP API
and the engine: a value outside them is refused where it enters (exit 2 / HTTP 400, the field named), and
the engine checks them again when it builds its options, so no path can slip past.

Pure: stdlib only.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from domain.errors import WcsyncError

_WHOLE = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(
    r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE
)


class BoundError(WcsyncError, ValueError):
    """A value outside its bounds; ``field`` is its name in snake case (the CLI and API rename it)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class NumberBound:
    """A number in low..high; ``above_low`` excludes low itself (a timeout of 0 is no timeout)."""

    field: str
    low: float
    high: float
    whole: bool = True
    above_low: bool = False
    unit: str = ""
    # When not 0: the least value other than ``low`` (a rate is 0, "no limit", or at least this).
    least_above_low: float = 0.0

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        low = f"more than {self.low:g}" if self.above_low else f"{self.low:g}"
        if self.least_above_low:
            low = f"{self.low:g} or from {self.least_above_low:g}"
        return f"must be a {'whole ' if self.whole else ''}number from {low} to {self.high:g}{unit}"

    def check(self, value: Any) -> Any:
        """The value when it is a number (a JSON integer when whole; never a boolean) within bounds."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BoundError(self.field, self.describe())
        if isinstance(value, float) and not math.isfinite(value):
            raise BoundError(self.field, self.describe())
        if self.whole and not isinstance(value, int):
            # A JSON number written with a fraction or an exponent (1.0, 1e3), or too large for an integer.
            raise BoundError(self.field, f"{self.describe()}, got {_number(value)} (not an integer)")
        too_low = value <= self.low if self.above_low else value < self.low
        if self.least_above_low and self.low < value < self.least_above_low:
            too_low = True
        if too_low or value > self.high:
            raise BoundError(self.field, f"{self.describe()}, got {_number(value)}")
        return value

    def parse(self, text: str) -> Any:
        """A command-line value: the text of a number, then check()."""
        # ASCII digits only: int() and float() also take "\uff11" (a fullwidth one) and "1_0".
        pattern = _WHOLE if self.whole else _DECIMAL
        if not pattern.fullmatch(text.strip()):
            raise BoundError(self.field, f"{self.describe()}, got {_quoted(text)}")
        try:
            value: Any = int(text) if self.whole else float(text)
        except ValueError:
            raise BoundError(self.field, f"{self.describe()}, got {_quoted(text)}") from None
        return self.check(value)

    def clamp(self, value: Any, default: Any) -> Any:
        """A stored value brought within bounds (options recorded by an older version are never refused:
        a queue must stay resumable); junk becomes the default."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return default
        if isinstance(value, float) and not math.isfinite(value):
            return default
        if self.whole:
            value = int(value)
        if self.above_low and value <= self.low:
            return default
        return min(max(value, self.low if not self.whole else int(self.low)), self.high)


BATCH_SIZE = NumberBound("batch_size", 1, 1000, unit="lines")
BATCH_DELAY_MS = NumberBound("batch_delay_ms", 0, 60_000, unit="ms")
MAX_RETRIES = NumberBound("max_retries", 1, 100)
# WooCommerce's own limit (its REST controllers refuse more): the bound of per_page for the client, the
# queue and the sandbox alike, and their default page size (the fewest requests).
MAX_PER_PAGE = 100
PER_PAGE = NumberBound("per_page", 1, MAX_PER_PAGE, unit="(WooCommerce refuses more)")
CONCURRENCY = NumberBound("concurrency", 1, 32, unit="requests at once")
RATE = NumberBound("rate", 0, 10_000, whole=False, unit="requests/s (0: no limit)", least_above_low=0.01)
TIMEOUT_S = NumberBound("timeout", 0.1, 3600, whole=False, unit="s")
MAX_RESPONSE_MB = NumberBound("max_response_mb", 1, 1024, unit="MB")
# A page of 100 real customers is ~100-300 KB; a larger answer is not read whole.
DEFAULT_MAX_RESPONSE_MB = 8
LIMIT = NumberBound("limit", 1, 10_000, unit="rows")
WORKERS = NumberBound("workers", 0, 16, unit="processes")
INTERVAL_S = NumberBound("interval", 0.2, 3600, whole=False, unit="s")
PORT = NumberBound("port", 0, 65_535, unit="(0: any free port)")

MAX_NAME_LENGTH = 200  # org and user ids, queue names
MAX_REASON_LENGTH = 1000
MAX_ROLE_LENGTH = 60


def check_identifier(value: Any, field: str) -> str:
    """An org or user id: a non-empty string of at most MAX_NAME_LENGTH printable characters, in Unicode
    NFC (so two spellings of one name are one org), with no control or unpaired surrogate characters and no
    space at either end. Returned normalised; checked before anything is read or stored with it."""
    text = _text(value, field, MAX_NAME_LENGTH)
    if text != text.strip():
        raise BoundError(field, "must not start or end with a space")
    return text


def check_text(value: Any, field: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """A queue name or a reason: like an identifier, but spaces at its ends are trimmed."""
    return _text(value.strip() if isinstance(value, str) else value, field, max_length)


def check_role(value: Any, field: str = "role") -> str:
    """A WordPress role slug (`customer`, `subscriber`, `all`...): letters, digits, '_' and '-'."""
    text = _text(value, field, MAX_ROLE_LENGTH)
    if not all(c.isascii() and (c.isalnum() or c in "_-") for c in text):
        raise BoundError(field, "must be a WordPress role slug (letters, digits, '_' or '-'), or 'all'")
    return text


def _text(value: Any, field: str, max_length: int) -> str:
    if not isinstance(value, str) or not value:
        raise BoundError(field, "must be a non-empty string")
    for char in value:
        # Printable, as str.isprintable() has it (no control, format, surrogate, private-use or unassigned
        # character, no separator but the space): a right-to-left override or a zero-width space would
        # make two ids look alike.
        if not (char.isprintable() or char == " "):
            raise BoundError(
                field,
                f"must hold printable characters only (found U+{ord(char):04X}, {unicodedata.name(char, 'unnamed')})",
            )
    text = unicodedata.normalize("NFC", value)
    if not text.strip():
        raise BoundError(field, "must not be blank")
    if len(text) > max_length:
        raise BoundError(field, f"must be at most {max_length} characters, got {len(text)}")
    return text


def _number(value: float) -> str:
    text = repr(value) if isinstance(value, float) else str(value)
    return text if len(text) <= 30 else text[:27] + "..."


def _quoted(text: str) -> str:
    shown = text if len(text) <= 30 else text[:27] + "..."
    return repr(shown)
