"""The one checker for values people and clients give: config keys (YAML, flags, the studio's form) and every
request field of the server (chat, compare, conversation settings, OpenAI, studio, tasks).

Each check takes the value, the label that names it in the message (`field 'max_tokens'`, `config key 'rank'`) and
its bounds, and returns the value as its type or raises `FieldError` with one line in one shape: `<label> must be
<what>`. So the terminal and the page refuse the same things with the same words, and no route checks an integer
its own way. What is never taken: NaN and infinities, booleans as numbers, numbers outside their bounds, a value
that could pass for a command-line flag, a path that leaves its root.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypeVar

from mlx_ft.errors import UserError

T = TypeVar("T")
MAX_DIGITS = 40  # longer integers are no count, seed or size anything here takes (Python's limit is 4300)
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # no leading '-' (a flag) or '.' (hidden, '..')
MAX_NAME_CHARS = 100
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


class FieldError(UserError, ValueError):
    """A value outside what its key takes; the message names the key. A UserError for the CLI (one line, exit 2)
    and a ValueError for code that validates with ValueError (the history's setters); the server answers 400."""

    def __init__(self, label: str, message: str) -> None:
        super().__init__(f"{label} {message}")
        self.label = label


def _shown(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _range(lo: float | None, hi: float | None, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"above {_shown(lo)} and at most {_shown(hi)}" if lo_open else f"from {_shown(lo)} to {_shown(hi)}"
    if lo is not None:
        return f"above {_shown(lo)}" if lo_open else f"at least {_shown(lo)}"
    return f"at most {_shown(hi)}" if hi is not None else ""


def _must(what: str, lo: float | None, hi: float | None, lo_open: bool = False, also: tuple = ()) -> str:
    bounds = _range(lo, hi, lo_open)
    also_text = f" (or {', '.join(map(str, also))})" if also else ""
    return f"must be {what}{' ' + bounds if bounds else ''}{also_text}"


def _from_text(value: str, label: str, kind: type) -> Any:
    text = value.strip()
    if len(text) > MAX_DIGITS + 10:
        raise FieldError(label, f"must be a number of at most {MAX_DIGITS} digits")
    try:
        return kind(text)
    except ValueError:
        raise FieldError(label, f"must be {'an integer' if kind is int else 'a number'}, not {value!r}") from None


def integer(
    value: Any, label: str, lo: int | None = None, hi: int | None = None, *, text: bool = False, also: tuple = ()
) -> int:
    """A whole number in [lo, hi] (or one of `also`, such as -1 for "all"). 256.0 is 256 (JSON clients send it);
    256.5, true and "256" are refused, "256" taken where `text` (query strings, form fields, YAML scalars)."""
    if text and isinstance(value, str):
        value = _from_text(value, label, int)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(label, _must("an integer", lo, hi, also=also))
    if value in also:
        return value
    if len(str(abs(value))) > MAX_DIGITS or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise FieldError(label, _must("an integer", lo, hi, also=also))
    return value


def number(
    value: Any,
    label: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    text: bool = False,
) -> float:
    """A finite number in [lo, hi] ((lo, hi] with `lo_open`). NaN, infinities and booleans never."""
    if text and isinstance(value, str):
        value = _from_text(value, label, float)
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok and isinstance(value, int) and len(str(abs(value))) > MAX_DIGITS:
        ok = False
    if ok:
        value = float(value)
        above = lo is None or (value > lo if lo_open else value >= lo)
        ok = math.isfinite(value) and above and (hi is None or value <= hi)
    if not ok:
        raise FieldError(label, _must("a finite number", lo, hi, lo_open))
    return value


def boolean(value: Any, label: str, *, text: bool = False) -> bool:
    """true or false (and, where `text`, the words a query string or a form field spells them with)."""
    if isinstance(value, bool):
        return value
    if text and isinstance(value, str) and value.strip().lower() in (*TRUE_WORDS, *FALSE_WORDS):
        return value.strip().lower() in TRUE_WORDS
    raise FieldError(label, "must be true or false")


def choice(value: Any, label: str, options: Collection[T]) -> T:
    if isinstance(value, bool) or value not in options:
        raise FieldError(label, f"must be one of {', '.join(map(str, options))}")
    return value


def name(value: Any, label: str) -> str:
    """A plain name (a run, a data set, a split): letters, digits, '_', '-' and '.', not first '-' or '.'."""
    if not isinstance(value, str) or len(value) > MAX_NAME_CHARS or not NAME.fullmatch(value):
        raise FieldError(
            label, f"must be a name of letters, digits, '_', '-' and '.' (not first), at most {MAX_NAME_CHARS}"
        )
    return value


def text(value: Any, label: str, max_chars: int, *, required: bool = True) -> str:
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > max_chars:
        raise FieldError(
            label, f"must be {'a non-empty' if required else 'a'} string of at most {max_chars} characters"
        )
    return value


def inside(path: Any, label: str, root: Path) -> Path:
    """`path` (relative to `root`, or absolute) resolved, symlinks included, and inside `root`; else refused."""
    if not isinstance(path, (str, Path)) or not str(path).strip() or "\0" in str(path):
        raise FieldError(label, f"must be a path inside {root}")
    base = Path(root).resolve()
    resolved = (base / Path(path).expanduser()).resolve()
    if not resolved.is_relative_to(base):
        raise FieldError(label, f"must be a path inside {root}; {str(path)!r} is outside it")
    return resolved
