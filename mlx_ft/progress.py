"""One progress-line format for every long command (eval, infer --file, export), the parser that reads it back, and
training's own line read the same way.

A line on stderr, one per update (a job's log is a file: no carriage-return bar), at most every `EVERY_S` seconds
and always at the end:

    mlx_ft: scoring tuned: 12/110 answers  41.2 tok/s  eta 3m05s

that is `mlx_ft: STAGE: DONE/TOTAL UNIT`, then the rate when one was measured, then the time left (`eta ?` while
nothing is done yet). Training prints its richer line in the same shape (`step 12/40  loss 1.234  …  840 tok/s  …
eta 3m05s`, training/loop.py); `parse` reads both, so the studio shows exactly what a log's last progress line says.
"""

from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, TextIO

EVERY_S = 5.0  # the longest a command stays quiet between two progress lines
PREFIX = "mlx_ft: "
TRAINING = "training"  # the stage of training's `step N/M … eta …` lines
ANSWERS = "answers"  # the unit of every generation stage (its rate: generated tok/s)

_LINE = re.compile(
    r"^mlx_ft(?: serve)?: (?P<stage>.+?): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\S+)"
    r"(?:  (?P<rate>[\d,]+(?:\.\d+)?) (?P<rate_unit>\S+))?  eta (?P<eta>\S+)$"
)
_TRAIN_LINE = re.compile(r"^step (?P<done>\d+)/(?P<total>\d+)  loss .*?  eta (?P<eta>\S+)$")
_TRAIN_RATE = re.compile(r"  (?P<rate>[\d,]+(?:\.\d+)?) tok/s  ")
_DURATION = re.compile(r"^(?:(?P<h>\d+)h(?P<hm>\d+)m|(?P<m>\d+)m(?P<s>\d+)s)$")


@dataclass(frozen=True)
class Record:
    """One progress line as data: what the studio's job view shows."""

    stage: str
    done: int
    total: int
    unit: str
    rate: float | None  # in rate_unit, over the stage so far
    rate_unit: str | None  # tok/s, MB/s, …
    eta_s: float | None  # seconds left in this stage, None when not known
    line: str  # the line itself

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def duration(seconds: float | None) -> str:
    """`3m05s`, `1h02m`, or `?`: how training and every other long command spell the time left."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(max(seconds, 0))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def seconds_of(text: str) -> float | None:
    """The seconds `duration` wrote as `text` (None for `?`)."""
    m = _DURATION.match(text)
    if m is None:
        return None
    if m["h"] is not None:
        return float(int(m["h"]) * 3600 + int(m["hm"]) * 60)
    return float(int(m["m"]) * 60 + int(m["s"]))


def _rate_text(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}"


def line(
    stage: str,
    done: int,
    total: int,
    unit: str,
    rate: float | None = None,
    rate_unit: str | None = None,
    eta_s: float | None = None,
    prefix: str = PREFIX,
) -> str:
    """A progress line (`prefix`: the server's own lines in a job's log start `mlx_ft serve: `)."""
    rate_part = f"  {_rate_text(rate)} {rate_unit}" if rate is not None and rate_unit else ""
    return f"{prefix}{stage}: {done}/{total} {unit}{rate_part}  eta {duration(eta_s)}"


def parse(text: str) -> Record | None:
    """The record of a progress line (ours or training's), None for any other line."""
    text = text.strip()
    if m := _LINE.match(text):
        rate = float(m["rate"].replace(",", "")) if m["rate"] else None
        done, total = int(m["done"]), int(m["total"])
        return Record(m["stage"], done, total, m["unit"], rate, m["rate_unit"], seconds_of(m["eta"]), text)
    if m := _TRAIN_LINE.match(text):
        r = _TRAIN_RATE.search(text)
        rate = float(r["rate"].replace(",", "")) if r else None
        done, total = int(m["done"]), int(m["total"])
        return Record(TRAINING, done, total, "steps", rate, "tok/s" if r else None, seconds_of(m["eta"]), text)
    return None


def last(lines: list[str]) -> Record | None:
    """The record of the last progress line among `lines`."""
    for text in reversed(lines):
        if (record := parse(text)) is not None:
            return record
    return None


class Reporter:
    """Prints one stage's progress lines: the first at once (the stage has begun), then at most one every `every_s`
    seconds, and the last from `finish`.

    The rate is `amount` (tokens, MB …: whatever `rate_unit` counts) over the time since the start; the ETA
    extrapolates `fraction` (of the stage's work; default done/total) over that time."""

    def __init__(
        self,
        stage: str,
        total: int,
        unit: str,
        rate_unit: str | None = None,
        every_s: float | None = None,
        out: TextIO | None = None,
    ) -> None:
        self.stage, self.total, self.unit, self.rate_unit = stage, total, unit, rate_unit
        self.every_s = EVERY_S if every_s is None else every_s
        self._out = out
        self.start = self._said = time.monotonic()
        self.done, self.amount, self.fraction = 0, 0.0, 0.0
        self._say()

    def update(self, done: int, amount: float | None = None, fraction: float | None = None) -> None:
        """`done` of `total` so far (and `amount` of the rate's unit, `fraction` of the work)."""
        self.done = done
        if amount is not None:
            self.amount = amount
        self.fraction = fraction if fraction is not None else done / max(self.total, 1)
        if time.monotonic() - self._said >= self.every_s and done < self.total:
            self._say()

    def finish(self, amount: float | None = None) -> None:
        """The stage's last line: everything done."""
        self.done, self.fraction = self.total, 1.0
        if amount is not None:
            self.amount = amount
        self._say()

    @property
    def rate(self) -> float | None:
        elapsed = time.monotonic() - self.start
        if self.rate_unit is None or self.amount <= 0 or elapsed <= 0:
            return None
        return self.amount / elapsed

    def _eta(self) -> float | None:
        if self.fraction >= 1:
            return 0.0
        if self.fraction <= 0:
            return None
        return (time.monotonic() - self.start) * (1 - self.fraction) / self.fraction

    def _say(self) -> None:
        self._said = time.monotonic()
        text = line(self.stage, self.done, self.total, self.unit, self.rate, self.rate_unit, self._eta())
        print(text, file=self._out or sys.stderr, flush=True)  # looked up per line: capsys and redirects see it
