"""Kubernetes resource quantities (``250m``, ``64Mi``, ``1e3``), checked before they reach a pod spec.

The API server rejects a pod whose container carries a malformed quantity, or a request
above its limit, with an error about a container the user never wrote. Checking the
values here, where they come from an annotation, lets the webhook name the annotation
instead.

The grammar is the one ``k8s.io/apimachinery/pkg/api/resource.Quantity`` documents and
parses (``quantity.go``: ``parseQuantityString`` and ``ParseQuantity``; ``suffix.go``:
``interpret``; kubernetes/kubernetes, staging/src/k8s.io/apimachinery/pkg/api/resource)::

    <quantity>        ::= <signedNumber><suffix>
    <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
    <signedNumber>    ::= <number> | <sign><number>
    <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
    <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
    <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
    <decimalExponent> ::= "e" <signedNumber> | "E" <signedNumber>

Three details of the real parser decide the edge cases: ``E`` alone is the decimal SI
suffix (10^18) and ``Ei`` the binary one (2^60), an exponent only when digits follow;
an exponent is an integer (``strconv.ParseInt``), so ``1e1.5`` is refused; and "no
quantity may represent a number greater than 2^63-1 in magnitude" — Kubernetes caps a
larger one silently (and truncates a huge exponent to 32 bits), so ``1e999`` as a memory
limit would quietly mean something else. This module refuses such values instead.
"""

from __future__ import annotations

import re
from decimal import ROUND_UP, Decimal, localcontext

__all__ = ["MAX_QUANTITY", "check_quantity", "parse_quantity"]

# The largest magnitude a Quantity holds (quantity.go: maxAllowed = 2^63-1).
MAX_QUANTITY = Decimal(2**63 - 1)

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<si>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE](?P<exponent>[+-]?[0-9]+))?$"
)

_SUFFIX_MULTIPLIER: dict[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}

_NANO = Decimal("1e-9")
# Far past 2^63 (about 9.2e18) for any mantissa that fits in the 64 characters allowed.
_MAX_EXPONENT = 100


def parse_quantity(text: str) -> Decimal:
    """``"250m"`` → ``Decimal("0.25")``; ``ValueError`` naming the problem otherwise."""
    match = _QUANTITY.match(text.strip()) if len(text) <= 64 else None
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 100m, 64Mi, 1Gi)")
    number = Decimal(match.group("number"))
    exponent = match.group("exponent")
    with localcontext() as context:
        context.prec = 200  # exact: 64 characters of digits times any suffix or bounded exponent
        if exponent is None:
            value = number * _SUFFIX_MULTIPLIER[match.group("si") or ""]
        elif number.is_zero() or int(exponent) < -_MAX_EXPONENT:
            value = number.scaleb(-_MAX_EXPONENT)  # zero, or a positive value far below 1n
        elif int(exponent) > _MAX_EXPONENT:
            raise ValueError(f"{text!r} is larger than Kubernetes represents (2^63-1)")
        else:
            value = number.scaleb(int(exponent))
        if not value.is_zero():
            # ParseQuantity rounds a value away from zero to whole nanos ("if you want some
            # resources, you should get some resources").
            value = value.quantize(_NANO, rounding=ROUND_UP)
    if abs(value) > MAX_QUANTITY:
        raise ValueError(f"{text!r} is larger than Kubernetes represents (2^63-1)")
    return value


def check_quantity(text: str) -> str:
    """Validate a positive quantity and return it unchanged (for settings and annotations)."""
    value = parse_quantity(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be greater than zero")
    return text.strip()
