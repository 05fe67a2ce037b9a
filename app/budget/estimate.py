"""Token counts without a network call.

`upper_bound` is what a reservation uses: every token of a byte-level BPE (OpenAI's o200k /
cl100k) or of SentencePiece with byte fallback (Gemini) covers at least one UTF-8 byte, so the
byte count bounds the text's tokens from above; each message adds a few framing tokens. It
overestimates English about 4x, which only makes a reservation cautious: it is settled to the
provider's own count after the call.

`likely` is what a call that never reported its usage is billed (a hedge cancelled before it
answered, a stream the client left): about 4 characters a token, the providers' own rule of thumb.
"""

from __future__ import annotations

MESSAGE_OVERHEAD = 8  # framing tokens per message (role markers, separators): OpenAI documents 3-4


def upper_bound(*texts: str) -> int:
    return sum(len(text.encode("utf-8", "surrogatepass")) + MESSAGE_OVERHEAD for text in texts if text)


def likely(*texts: str) -> int:
    return sum((len(text) + 3) // 4 for text in texts if text)
