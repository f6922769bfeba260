"""Money: ``Decimal`` amounts in an ISO 4217 currency, rounded to that currency's minor unit."""

from __future__ import annotations

import functools
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from babel.numbers import get_currency_precision, list_currencies

_CURRENCIES = frozenset(list_currencies())


# NUMERIC(20, 4) holds 16 integer digits.
MAX_AMOUNT = Decimal(10) ** 16


class MoneyError(ValueError):
    pass


def check_currency(code: str) -> str:
    if not isinstance(code, str) or code.upper() != code or code not in _CURRENCIES or len(code) != 3:
        raise MoneyError(f"{code!r} is not an ISO 4217 currency code such as 'CNY' or 'USD'")
    return code


def minor_units(currency: str) -> int:
    if type(currency) is str:
        return _minor_units(currency)
    return int(get_currency_precision(check_currency(currency)))  # refused there, with the reason


@functools.lru_cache(maxsize=512)
def _minor_units(currency: str) -> int:
    """Cached: the workflow parses every amount it meets with it (and babel looks it up each time)."""
    return int(get_currency_precision(check_currency(currency)))


def parse_amount(value: str | int | Decimal, currency: str, *, allow_zero: bool = False) -> Decimal:
    """A positive amount with no more decimals than the currency has (CNY 0.01, JPY 1)."""
    if type(value) is not str and isinstance(value, float):
        raise MoneyError("amounts are decimal strings such as '1234.50', never floats")
    text = str(value).strip()
    try:
        if "_" in text:
            raise ValueError("underscores")
        amount = Decimal(text)
    except (InvalidOperation, ValueError) as exc:
        raise MoneyError(f"{value!r} is not a decimal amount such as '1234.50'") from exc
    if not amount.is_finite():
        raise MoneyError(f"{value!r} is not a finite amount")
    if abs(amount) >= MAX_AMOUNT:
        raise MoneyError(f"{value} is beyond the largest amount this service records ({MAX_AMOUNT:,})")
    if amount < 0 or (amount == 0 and not allow_zero):
        raise MoneyError(f"amount must be greater than zero, got {value}")
    places = minor_units(currency)
    if amount != amount.quantize(Decimal(1).scaleb(-places)):
        raise MoneyError(f"{value} has more decimals than {currency} allows ({places})")
    return quantize(amount, places)


def quantize(amount: Decimal, places: int) -> Decimal:
    return amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
