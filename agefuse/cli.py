"""The one home of what every console script shares: how it runs its ``main``, and the
argument types that check a value before any work starts.

``run_command`` parses, runs, and turns an expected failure (a missing file, a bad value)
into one line on stderr and exit status 1. The types below raise ``argparse``'s own error,
so a bad value is one usage line naming the option, never a traceback.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def run_command(get_args_parser: Callable, main: Callable, errors: tuple[type[BaseException], ...] = ()) -> int:
    try:
        return main(get_args_parser().parse_args())
    except (FileNotFoundError, ValueError, *errors) as err:
        raise SystemExit(f"error: {err}")


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer option of at least ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def float_in(low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    """A finite number in [low, high] (or (low, high] with ``low_open``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"{text} is outside {'(' if low_open else '['}{low:g}, {high:g}]")
        return value
    parse.__name__ = "number"
    return parse


def device_name(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``: checked before any work (not whether CUDA is
    there: that is the command's to say)."""
    import re
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (auto, cpu, cuda, cuda:N)")
    return text
