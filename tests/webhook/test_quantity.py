"""Resource quantities as Kubernetes parses them (``k8s.io/apimachinery/pkg/api/resource``).

The table follows the grammar in ``quantity.go`` and the cases of its own
``quantity_test.go`` (``TestQuantityParse``): ``E`` alone is exa, ``Ei`` is 2^60, an
exponent needs digits, and nothing may exceed 2^63-1.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from tokensidecar.webhook.quantity import MAX_QUANTITY, check_quantity, parse_quantity

VALID = [
    ("0", Decimal(0)),
    ("1", Decimal(1)),
    ("+1", Decimal(1)),
    ("-1", Decimal(-1)),
    ("1.", Decimal(1)),
    (".5", Decimal("0.5")),
    ("250m", Decimal("0.25")),
    ("100n", Decimal("1e-7")),
    ("5u", Decimal("5e-6")),
    ("1k", Decimal(1000)),
    ("64Mi", Decimal(64 * 2**20)),
    ("1.5Gi", Decimal(3 * 2**29)),
    ("1E", Decimal(10**18)),  # exa: the decimal SI suffix, not an exponent
    ("1Ei", Decimal(2**60)),
    ("7Ei", Decimal(7 * 2**60)),
    ("1e3", Decimal(1000)),
    ("1E3", Decimal(1000)),
    ("1e+3", Decimal(1000)),
    ("1.5e-3", Decimal("0.0015")),
    ("9223372036854775807", MAX_QUANTITY),
    ("0.1n", Decimal("1e-9")),  # rounded up to whole nanos, as ParseQuantity does
    ("1e-999", Decimal("1e-9")),
    ("0e999", Decimal(0)),
]

INVALID = [
    "",
    ".",
    "+",
    "1e",  # an exponent needs digits
    "1e1.5",  # and is an integer (strconv.ParseInt)
    "1K",  # kilo is k
    "1Ki1",
    "1 Mi",
    "Mi",
    "1e999",  # Kubernetes would cap it silently at 2^63-1
    "8Ei",  # 2^63
    "9223372036854775808",
    "1e19",
    "10E",
    "1" * 65,
]


@pytest.mark.parametrize(("text", "value"), VALID, ids=[text for text, _ in VALID])
def test_quantities_kubernetes_accepts_are_accepted_with_their_value(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", INVALID)
def test_quantities_kubernetes_refuses_or_caps_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"quantity|larger than Kubernetes represents"):
        parse_quantity(text)


def test_check_quantity_wants_a_positive_value_and_returns_the_text() -> None:
    assert check_quantity(" 1Ei ") == "1Ei"
    for text in ("0", "-1", "0e999"):
        with pytest.raises(ValueError, match="greater than zero"):
            check_quantity(text)
