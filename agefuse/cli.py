"""The one home of what every console script shares: how it runs its ``main``, and the
argument types that check a value before any work starts.

``run_command`` parses, runs, and turns an expected failure (a missing file, a bad value)
into one line on stderr and exit status 1. The types below raise ``argparse``'s own error,
so a bad value is one usage line naming the option, never a traceback.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Callable
from pathlib import Path


def run_command(get_args_parser: Callable, main: Callable, errors: tuple[type[BaseException], ...] = ()) -> int:
    try:
        return main(get_args_parser().parse_args())
    except (OSError, ValueError, csv.Error, *errors) as err:  # a file we were handed, or its contents
        raise SystemExit(f"error: {err}") from None


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer option of at least ``low`` (and at most ``high``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{value} is above {high}")
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


def fold_spec(text: str) -> tuple[int, int]:
    """``I/K``: part I (1 to K) of the training split's K parts, K of 2 or more."""
    try:
        fold, folds = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/K (for example 1/2)") from None
    if folds < 2 or not 1 <= fold <= folds:
        raise argparse.ArgumentTypeError(f"{text}: I/K needs K >= 2 and I from 1 to K")
    return fold, folds


def device_name(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``: checked before any work (not whether CUDA is
    there: that is the command's to say)."""
    import re
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (auto, cpu, cuda, cuda:N)")
    return text


def torch_device(name: str):
    """The ``torch.device`` a ``--device`` value (``device_name``) names: ``auto`` is CUDA when
    torch sees a CUDA device, else the CPU; a device asked for that is not there is a
    ``ValueError`` of one line (``run_command`` prints it). torch loads here, on first use, so
    the commands that never pick a device stay light."""
    import torch
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked, but torch sees no CUDA device")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ValueError(f"--device {name} asked, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps asked, but torch sees no MPS device")
    return torch.device(name)


def output_folder(text: str) -> str:
    """A folder to write into: made when missing, refused when a file has that name."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    if any(parent.exists() and not parent.is_dir() for parent in path.parents):
        raise argparse.ArgumentTypeError(f"{text}: a part of this path is a file, not a folder")
    return text


def existing_file(text: str) -> str:
    """A file to read, checked before any work."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a regular file")
    return text


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in --help, except for switches ("(default: True)" under
    ``--no-fallback`` says the opposite of what the switch does), options whose help already
    says its default in words, and a default of None."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return action.help or ""
        if "default:" in (action.help or "") or action.default is None:  # said in words, or nothing to say
            return action.help or ""
        return super()._get_help_string(action)


def json_text(data, indent: int | None = 1) -> str:
    """JSON that every reader accepts: NaN and infinities (an undefined R², a metric over no
    faces) become null, never the bare ``NaN`` Python writes by default."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item) for item in value]
        return value
    return json.dumps(clean(data), indent=indent, allow_nan=False)


def checked(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An option type from a parser that raises ``ValueError``: its message is the usage
    line's (argparse would only say "invalid value")."""
    def wrapped(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    wrapped.__name__ = getattr(parse, "__name__", "value")
    return wrapped
