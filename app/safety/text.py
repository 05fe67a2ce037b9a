"""Text as the checks compare it (never as it is shown): one canonical form for the leak check,
the injection scan and the secret masks, so a look-alike letter, a wide letter, an upper-case
letter or a zero-width character between two letters hides nothing from any of them."""

from __future__ import annotations

import re
import unicodedata

# Format characters that render as nothing: an attacker puts them inside a word, a key or an address.
INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e\u202a\u202b\u202c\u202d\u202e"))
# Letters that look like Latin ones (UTS #39 confusables, the Cyrillic and Greek ones attackers use):
# folded by shape, not by sound ("р" is "p" here, not "r").
LOOKALIKE = str.maketrans(
    "аеорсухіјѕԁһӏԛԝвкмнтьзАВЕКМНОРСТХУІЈЅαβγδεικνορτυχωΑΒΕΗΙΚΜΝΟΡΤΥΧΖ",
    "aeopcyxijsdhlqwbkmhtb3ABEKMHOPCTXYIJSabydeiknoptuxwABEHIKMNOPTYXZ",
)


_INVISIBLE_CHARS = tuple(map(chr, INVISIBLE))
_INVISIBLE_RE = re.compile("[" + "".join(_INVISIBLE_CHARS) + "]")


def visible(text: str) -> str:
    """``text`` without the invisible format characters. Looked for first (a dozen C-level finds):
    removing them is the costly part, and most text has none (ASCII text never)."""
    if text.isascii() or not any(c in text for c in _INVISIBLE_CHARS):
        return text
    return _INVISIBLE_RE.sub("", text)


def plain(text: str) -> str:
    """NFKC, invisible characters removed, lower case: what the text says as a reader sees it."""
    if text.isascii():
        return text.lower()
    return visible(unicodedata.normalize("NFKC", text)).lower()


def folded(text: str) -> str:
    """`plain` with look-alike letters folded to the Latin ones they imitate."""
    text = plain(text)
    return text if text.isascii() else text.translate(LOOKALIKE).lower()
