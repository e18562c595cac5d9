"""What every console script does around its ``main``: parse, run, and turn an expected
failure (a missing file, a bad value) into one line on stderr and exit status 1."""
from __future__ import annotations

from collections.abc import Callable


def run_command(get_args_parser: Callable, main: Callable, errors: tuple[type[BaseException], ...] = ()) -> int:
    try:
        return main(get_args_parser().parse_args())
    except (FileNotFoundError, ValueError, *errors) as err:
        raise SystemExit(f"error: {err}")
