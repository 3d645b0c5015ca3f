"""Argument types shared by the command-line tools (``spead2_recv``,
``spead2_send``, ``spead2_bench``): each takes the text of one argument and
returns its value, or raises :class:`argparse.ArgumentTypeError` with a
message that names what is wrong (argparse prints it after the option).

Whole numbers are decimal, or hexadecimal, octal or binary with a ``0x``,
``0o`` or ``0b`` prefix (item IDs are usually written in hexadecimal).
"""

from __future__ import annotations

import argparse

__all__ = ["integer", "positive_int", "nonnegative_int", "positive_float", "nonnegative_float", "int_list",
           "cpu_list", "endpoint", "flavour_bits", "on_off"]


def integer(text: str) -> int:
    """A whole number: decimal (leading zeros allowed) or with a base prefix."""
    try:
        return int(text, 10)
    except ValueError:
        pass
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


def nonnegative_int(text: str) -> int:
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_float(text: str) -> float:
    """A finite number above zero (a duration, a rate, a fraction)."""
    value = _number(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def nonnegative_float(text: str) -> float:
    value = _number(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a finite non-negative number")
    return value


def int_list(text: str) -> list:
    """Whole numbers separated by commas (spaces and empty entries ignored); at least one."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or comma-separated list of numbers") from None
    if not values:
        raise argparse.ArgumentTypeError("empty list")
    return values


def cpu_list(text: str) -> list:
    """CPU (core) numbers separated by commas."""
    try:
        cpus = int_list(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of CPU numbers") from None
    if min(cpus) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: CPU numbers are not negative")
    return cpus


def endpoint(text: str) -> tuple:
    """``HOST:PORT`` (``[IPv6]:PORT`` too) as ``(host, port)``, port 1 to 65535."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: port {port!r} is not a number") from None
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: port must be between 1 and 65535")
    return host, number


def flavour_bits(text: str, allowed=None) -> int:
    """The heap address bits of a flavour written ``64-XX`` or ``SPEAD-64-XX``
    (any case); with `allowed`, XX must be one of them."""
    parts = text.upper().removeprefix("SPEAD-").split("-")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a flavour such as 64-48 or SPEAD-64-40")
    if parts[0] != "64":
        raise argparse.ArgumentTypeError("only 64-bit item pointers (SPEAD-64-XX) are supported")
    bits = int(parts[1])
    if allowed is not None and bits not in allowed:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give SPEAD-64-XX with XX one of {', '.join(map(str, allowed))}")
    return bits


def on_off(text: str) -> bool:
    value = text.lower()
    if value in ("on", "yes", "true", "1"):
        return True
    if value in ("off", "no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}: give on or off")
