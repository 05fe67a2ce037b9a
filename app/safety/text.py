"""Text as the checks compare it (never as it is shown): one canonical form for the leak check,
the injection scan and the secret masks, so a look-alike letter, a wide letter, an upper-case
letter or a zero-width character between two letters hides nothing from any of them."""

from __future__ import annotations

import re
import unicodedata

# Characters that render as nothing: an attacker puts them inside a word, a key or an address.
# Zero-width and joiners, invisible operators, soft hyphen, grapheme joiner, bidi controls, and
# the tag characters (U+E0000-E007F, which carry "ASCII smuggling": see `untagged`).
INVISIBLE = ("\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e\u034f"
             "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\U000e0000-\U000e007f")
# Letters that look like Latin ones (UTS #39 confusables, the Cyrillic and Greek ones attackers use):
# folded by shape, not by sound ("р" is "p" here, not "r").
LOOKALIKE = str.maketrans(
    "аеорсухіјѕԁһӏԛԝвкмнтьзАВЕКМНОРСТХУІЈЅαβγδεικνορτυχωΑΒΕΗΙΚΜΝΟΡΤΥΧΖ",
    "aeopcyxijsdhlqwbkmhtb3ABEKMHOPCTXYIJSabydeiknoptuxwABEHIKMNOPTYXZ",
)


_INVISIBLE_RE = re.compile(f"[{INVISIBLE}]")
_TAGS = re.compile("[\U000e0020-\U000e007e]+")


def visible(text: str) -> str:
    """``text`` without the invisible characters. Looked for first (one character-class scan):
    removing them is the costly part, and most text has none (ASCII text never)."""
    if text.isascii() or not _INVISIBLE_RE.search(text):
        return text
    return _INVISIBLE_RE.sub("", text)


def untagged(text: str) -> str:
    """Tag characters read as the ASCII they shadow (U+E0041 is "A"), each run set off by spaces:
    a model's tokenizer may read an instruction hidden in them that no reader sees."""
    if text.isascii() or not _TAGS.search(text):
        return text
    return _TAGS.sub(lambda run: " " + "".join(chr(ord(c) - 0xE0000) for c in run.group(0)) + " ", text)


def plain(text: str) -> str:
    """NFKC, invisible characters removed, lower case: what the text says as a reader sees it."""
    if text.isascii():
        return text.lower()
    return visible(unicodedata.normalize("NFKC", text)).lower()


def folded(text: str) -> str:
    """`plain` with look-alike letters folded to the Latin ones they imitate."""
    text = plain(text)
    return text if text.isascii() else text.translate(LOOKALIKE).lower()
