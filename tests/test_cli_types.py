"""The argument types shared by spead2_recv, spead2_send and spead2_bench (spead2.tools._cli)."""

import argparse

import pytest

from spead2.tools import _cli


@pytest.mark.parametrize("text, value", [("12", 12), ("012", 12), ("0x1600", 0x1600), ("0b101", 5), ("-3", -3)])
def test_integer(text, value):
    assert _cli.integer(text) == value


@pytest.mark.parametrize("func, text, message", [
    (_cli.integer, "ten", "'ten' is not a whole number"),
    (_cli.positive_int, "0", "0 is not positive"),
    (_cli.positive_int, "1.5", "'1.5' is not a whole number"),
    (_cli.nonnegative_int, "-1", "-1 is negative"),
    (_cli.positive_float, "0", "0 is not a positive number"),
    (_cli.positive_float, "inf", "inf is not a positive number"),
    (_cli.positive_float, "nan", "nan is not a positive number"),
    (_cli.positive_float, "soon", "'soon' is not a number"),
    (_cli.nonnegative_float, "-0.5", "-0.5 is not a finite non-negative number"),
    (_cli.int_list, ",", "empty list"),
    (_cli.int_list, "1,x", "is not a number or comma-separated list"),
    (_cli.cpu_list, "0,-1", "CPU numbers are not negative"),
    (_cli.cpu_list, "a", "is not a comma-separated list of CPU numbers"),
    (_cli.endpoint, "localhost", "is not HOST:PORT"),
    (_cli.endpoint, ":80", "is not HOST:PORT"),
    (_cli.endpoint, "host:http", "port 'http' is not a number"),
    (_cli.endpoint, "host:0", "port must be between 1 and 65535"),
    (_cli.endpoint, "host:65536", "port must be between 1 and 65535"),
    (_cli.flavour_bits, "SPEAD-32-16", "only 64-bit item pointers"),
    (_cli.flavour_bits, "fast", "is not a flavour"),
    (_cli.on_off, "maybe", "give on or off"),
])
def test_rejected(func, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        func(text)


def test_accepted():
    assert _cli.positive_int("1") == 1
    assert _cli.nonnegative_int("0") == 0
    assert _cli.positive_float("0.25") == 0.25
    assert _cli.nonnegative_float("0") == 0.0
    assert _cli.int_list(" 1, 2,,3") == [1, 2, 3]
    assert _cli.cpu_list("3,0") == [3, 0]
    assert _cli.endpoint("239.1.2.3:7148") == ("239.1.2.3", 7148)
    assert _cli.endpoint("[::1]:8888") == ("::1", 8888)
    assert _cli.flavour_bits("64-40") == 40
    assert _cli.flavour_bits("spead-64-48", allowed=(24, 48)) == 48
    with pytest.raises(argparse.ArgumentTypeError, match="one of 24, 48"):
        _cli.flavour_bits("64-40", allowed=(24, 48))
    assert _cli.on_off("YES") is True and _cli.on_off("0") is False
