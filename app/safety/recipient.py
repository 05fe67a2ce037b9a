"""A draft goes to the lead: its `to` must be exactly one valid address, one of the lead's own
(the record's address fields, never an address quoted in a note or an email body)."""

from __future__ import annotations

import functools
import re

from email_validator import EmailNotValidError, validate_email


@functools.lru_cache(maxsize=4096)  # the same few addresses on every request about a lead
def normalise_address(value: str) -> str | None:
    """One valid address, lowercased; None for anything else (a list, a name, markup)."""
    value = value.strip()
    if not value or len(value) > 320 or any(c in value for c in ",;<> \t\r\n"):
        return None
    try:
        return validate_email(value, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return None


# `Name <address>`, the form mail clients and models write: one name without quotes or markup, one address.
_NAMED = re.compile(r'\s*"?([^"<>,;@]{0,120})"?\s*<([^<>,;\s]{1,320})>\s*')


def check_recipient(to: str, own: frozenset[str], primary: str) -> tuple[str, bool]:
    """(the address to use, whether the model's was replaced). An empty `to` is filled with the
    lead's address without a flag: the model left it to us. `Dana <dana@...>` is the lead's own
    address written with her name, and becomes the bare address without a flag."""
    if not to.strip():
        return primary, False
    named = _NAMED.fullmatch(to)
    address = normalise_address(named.group(2) if named else to)
    if address is not None and address in own:
        return address, False
    return primary, True
