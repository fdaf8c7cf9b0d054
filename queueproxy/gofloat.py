"""Go's float formatting, `strconv.FormatFloat(v, 'g', -1, 64)`: what `fmt` prints for a
float64, what Prometheus' Go client writes in its text exposition and what a Knative request-log
template prints. Its own module because the metrics endpoints need it at every start, and the
template engine (`gotemplate`) only when request logs are on."""

from __future__ import annotations

import math


def format_go_float(value: float) -> str:
    """`strconv.FormatFloat(v, 'g', -1, 64)`, which is also what `fmt` prints for a float64 and
    what Prometheus' Go client writes: shortest round-trip digits, in exponent form when the
    decimal exponent is below -4 or at least 6 (`1e+06`, `1.5e-05`, `0.25`, `100000`)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0.0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    if 1e-4 <= abs(value) < 1e6:
        # Here Python's repr is also fixed-point with the same shortest digits; only "x.0" differs.
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    from decimal import Decimal  # rare (huge or tiny values): not worth its import at start

    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    assert isinstance(exponent, int)
    decimal_exponent = len(digits) + exponent - 1  # exponent of the first digit
    prefix = "-" if sign else ""
    if decimal_exponent < -4 or decimal_exponent >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        exponent_sign = "-" if decimal_exponent < 0 else "+"
        return f"{prefix}{mantissa}e{exponent_sign}{abs(decimal_exponent):02d}"
    if decimal_exponent < 0:
        return f"{prefix}0.{'0' * (-decimal_exponent - 1)}{digits}"
    whole = digits[: decimal_exponent + 1].ljust(decimal_exponent + 1, "0")
    fraction = digits[decimal_exponent + 1 :]
    return f"{prefix}{whole}.{fraction}" if fraction else f"{prefix}{whole}"
