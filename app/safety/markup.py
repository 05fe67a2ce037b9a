"""No markup in draft fields: the frontend renders the composer's to, subject and body."""

from __future__ import annotations

import re

# Tags, comments, CDATA and processing instructions; a lone "<" in prose ("budget < $50k") stays.
_MARKUP = re.compile(r"<!--.*?(?:-->|$)|<!\[CDATA\[.*?(?:\]\]>|$)|<[?!/]?[a-zA-Z][^<>]*(?:>|$)", re.S)


def strip_markup(text: str) -> tuple[str, bool]:
    if "<" not in text:
        return text, False
    cleaned = _MARKUP.sub("", text)
    return cleaned, cleaned != text
