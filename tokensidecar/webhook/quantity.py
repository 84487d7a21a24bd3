"""Kubernetes resource quantities (``250m``, ``64Mi``, ``1e3``), checked before they reach a pod spec.

The API server rejects a pod whose container carries a malformed quantity, or a request
above its limit, with an error about a container the user never wrote. Checking the
values here, where they come from an annotation, lets the webhook name the annotation
instead. The grammar is the one of ``k8s.io/apimachinery/pkg/api/resource.Quantity``.
"""

from __future__ import annotations

import re
from decimal import Decimal

__all__ = ["check_quantity", "parse_quantity"]

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]{1,3})?$"
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


def parse_quantity(text: str) -> Decimal:
    """``"250m"`` → ``Decimal("0.25")``; ``ValueError`` naming the problem otherwise."""
    match = _QUANTITY.match(text.strip()) if len(text) <= 64 else None
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 100m, 64Mi, 1Gi)")
    suffix = match.group("suffix") or ""
    try:
        number = Decimal(match.group("number"))
        if suffix[:1] in ("e", "E"):
            return number * Decimal(10) ** int(suffix[1:])
        return number * _SUFFIX_MULTIPLIER[suffix]
    except (ArithmeticError, ValueError):  # decimal's Overflow/InvalidOperation are ArithmeticErrors
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. 100m, 64Mi, 1Gi)") from None


def check_quantity(text: str) -> str:
    """Validate a positive quantity and return it unchanged (for settings and annotations)."""
    value = parse_quantity(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be greater than zero")
    return text.strip()
