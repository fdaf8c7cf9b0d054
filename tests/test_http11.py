"""The wire helpers written out to keep start-up lean agree with the standard library's."""

from __future__ import annotations

import random
from email.utils import formatdate
from http import HTTPStatus

from queueproxy.http11 import STATUS_PHRASES, DateHeader, imf_fixdate, status_line


def test_status_phrases_are_http_status_phrases() -> None:
    assert STATUS_PHRASES == {s.value: s.phrase.encode() for s in HTTPStatus}
    assert status_line(b"1.1", 504) == b"HTTP/1.1 504 Gateway Timeout\r\n"
    assert status_line(b"1.1", 599) == b"HTTP/1.1 599 Unknown\r\n"


def test_imf_fixdate_matches_formatdate() -> None:
    rng = random.Random(9)
    # Epoch, leap days, year boundaries, and a spread up to year 2200.
    stamps = [0, 951782400, 951868799, 1709164800, 1735689599, 1735689600, 4102444800]
    stamps += [rng.randrange(0, 7_258_118_400) for _ in range(20_000)]
    for seconds in stamps:
        assert imf_fixdate(seconds) == formatdate(seconds, usegmt=True), seconds


def test_date_header_line_is_a_field_line() -> None:
    line = DateHeader().line
    assert line.startswith(b"Date: ") and line.endswith(b" GMT\r\n")
    assert imf_fixdate(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
