"""Injected instructions in outside text (notes, emails, activities, free-text fields).

The classifier's `guard:prompt_injection` reads the rep's query for attempts to steer the router;
this reads what outsiders wrote for attempts to steer the model: override phrases ("ignore the
previous instructions"), role markers (`<|im_start|>`, "system:"), and directives aimed at the
assistant (send the email to..., include this link, reveal your prompt, tell the rep that...), in
English, Spanish, French, German, Portuguese, Italian, Russian, Chinese and Japanese.

Each text is read three ways: as written (NFKC, lower case, zero-width characters removed), with
look-alike letters folded to ASCII (Cyrillic "іgnоrе" is "ignore"), and with every base64 run
decoded. A hit flags the request (`untrusted_instructions`); it is never cached or warmed. Flags
never change the answer: the output checks (app/safety/guard.py) do what must be done in code.

Input is capped (MAX_SCAN characters per request), and the pattern runs on RE2, in time linear in
the text whatever it holds.
"""

from __future__ import annotations

import base64
import binascii
import unicodedata
from collections.abc import Iterable

import re2
from anyascii import anyascii

from app.safety.text import LOOKALIKE, plain, untagged

MAX_SCAN = 48_000
# RE2: Python's engine tried the run at every position, 1 ms per 64 KiB of ordinary words.
_B64 = re2.compile(r"[A-Za-z0-9+/_\-]{16,}={0,2}")
_DIRECTIVE = (
    # English
    r"\b(?:ignore|disregard|forget|override|bypass)\b.{0,30}\b(?:instructions?|prompts?|rules|guidelines|directions"
    r"|everything (?:above|before)|previous|prior|above)\b"
    r"|\b(?:new|updated|real|actual|hidden) (?:instructions?|system prompt|task)\b"
    r"|\bsystem (?:prompt|message|instructions?|override)\b|\bdeveloper mode\b|\bjailbreak"
    r"|\b(?:reveal|print|show|output|repeat|leak|dump|display|recite)\b.{0,40}\b(?:prompt|instructions|system"
    r" (?:text|message))\b"
    r"|\b(?:you are now|from now on,? you|act as (?:an? |the )?(?:admin|system|developer|assistant))\b"
    r"|\b(?:assistant|ai|ivy|model|chatbot|llm)\b.{0,20}\b(?:must|should|shall|will|needs? to)\b"
    r"|\b(?:send|forward|address|deliver|cc|bcc|redirect)\b.{0,30}\b(?:e-?mails?|drafts?|repl(?:y|ies)|messages?"
    r"|follow-?ups?|responses?|it|this|that|them)\b.{0,10}\bto\b.{0,12}[\w.+\-]+@"
    r"|\b(?:set|change|put|use|update|replace)\b.{0,200}?\b(?:to[- ]field|to[- ]address|recipient|to line)\b"
    r"|\bin(?:to)? the (?:to|recipient|cc|bcc)[- ]?(?:field|line|box)\b"
    r"|\b(?:include|add|insert|append|put|embed|place)\b.{0,30}\b(?:links?|urls?|hyperlinks?|website)\b"
    r"|\b(?:tell|inform|say to|answer|reply to|respond to)\b.{0,15}\b(?:the )?(?:rep|user|sales ?rep|salesperson"
    r"|reader|agent)s?\b|\b(?:respond|answer|reply) (?:only )?with\b|\bsay that\b"
    r"|<\|?im_(?:start|end)\|?>|\[/?inst\]|<</?sys>>|</?(?:system|instructions?|crm_data|sources)>"
    r"|(?:^|\n)\s*(?:system|assistant)\s*:|\#\#\# ?(?:instruction|system)|\bbegin (?:system|instructions)\b"
    # Spanish
    r"|\bignora\w*\b.{0,30}\binstrucci\w+|\binstrucciones (?:anteriores|previas)\b|\benv[ií]a\w*\b.{0,30}\b(?:correo|"
    r"e-?mail|mensaje|borrador)\b.{0,12}\ba\b|\b(?:incluye|a[ñn]ade|agrega|inserta)\b.{0,20}\b(?:enlace|link|url)"
    r"|\b(?:revela|muestra|imprime)\b.{0,30}\b(?:prompt|instrucciones|mensaje del sistema)"
    r"|\b(?:di|dile|diles)\b.{0,40}\bque\b"
    # French
    r"|\bignore[zr]?\b.{0,30}\binstructions\b|\binstructions pr[ée]c[ée]dentes\b|\benvoie[zr]?\b.{0,30}\b(?:e-?mail|"
    r"courriel|message|brouillon)\b|\b(?:inclu[sez]+|ajoute[zr]?|ins[èe]re[zr]?)\b.{0,20}\b(?:lien|url)"
    r"|\b(?:r[ée]v[èe]le[zr]?|affiche[zr]?|montre[zr]?)\b.{0,30}\b(?:prompt|instructions|consignes)"
    r"|\bdis(?:-lui)? que\b"
    # German
    r"|\bignorier\w*\b.{0,30}\b(?:anweisungen|befehle|regeln)\b|\bvorherigen anweisungen\b"
    r"|\bsende\w*\b.{0,30}\b(?:e-?mail|nachricht|entwurf)\b.{0,12}\ban\b|\bf[üu]g\w*\b.{0,20}\b(?:link|url)|\b(?:zeig|verrat|gib)\w*\b.{0,30}\b(?:prompt"
    r"|anweisungen|systemnachricht)|\bsag\w*,? dass\b"
    # Portuguese / Italian
    r"|\bignor[ae]\w*\b.{0,30}\b(?:instru[çc][õo]es|istruzioni)\b|\benvi[ae]\w*\b.{0,30}\b(?:e-?mail|mensagem)\b.{0,12}"
    r"\bpara\b|\binvia\w*\b.{0,30}\b(?:e-?mail|messaggio)\b|\b(?:inclua|adicione|includi|aggiungi)\b.{0,20}\b(?:link|url)"
    r"|\b(?:diga|d[íi]ga|d[iì]) (?:que|che)\b"
    # Russian
    r"|игнорир\w*|забудь\w*.{0,30}инструкц\w*|предыдущ\w* инструкц\w*|системн\w* (?:промпт|инструкц|сообщени)\w*"
    r"|отправ\w*.{0,30}(?:письм|сообщени|ответ)\w*.{0,12}(?:на|по адресу|в)(?:\PL|$)"
    r"|(?:добав|встав|включ)\w*.{0,20}ссылк\w*"
    r"|(?:покажи|раскрой|выведи)\w*.{0,30}(?:промпт|инструкц)\w*|скажи,? что"
    # Chinese / Japanese
    r"|忽略|无视|系统提示|系统指令|提示词|发送到|发给|加上.{0,6}链接|添加.{0,6}链接|告诉.{0,6}(?:销售|用户)"
    r"|指示を無視|システムプロンプト|に送信|に送って|リンクを(?:追加|入れ|挿入)|と伝えて"
)
# RE2 (linear time, one pass for all the alternatives): Python's backtracking engine tried each
# alternative at each position, 11x slower on the eval set, and a crafted text could cost more.
# All the request's outside texts are read in one pass, joined by SEPARATOR: the pattern's "."
# is "[^\x00]", so no match spans two texts (one text's "send the email" and the next one's
# "to x@y" are two harmless texts, as they were read one by one), and "\n" starts each text's line.
SEPARATOR = "\x00\n"
_OPTIONS = re2.Options()
_OPTIONS.max_mem = 32 << 20
_PATTERN = re2.compile(_DIRECTIVE.replace(".{", "[^\\x00]{"), _OPTIONS)


def _joined(parts: list[str]) -> str:
    text = SEPARATOR.join(parts)
    if text.count("\x00") != len(parts) - 1:  # a text's own NUL would end a match inside it
        text = SEPARATOR.join(part.replace("\x00", " ") for part in parts)
    return text


class _Fold(dict[int, str]):
    """Look-alike letters folded by shape, then every letter to ASCII (anyascii, which works
    character by character): one `str.translate` pass, 3x faster than the two; each character's
    result kept, at most _FOLD_CACHE of them (a body can hold thousands of distinct ones)."""

    def __missing__(self, code: int) -> str:
        if len(self) >= _FOLD_CACHE:
            self.clear()
        folded = self[code] = anyascii(chr(code).translate(LOOKALIKE))
        return folded


_FOLD_CACHE = 65_536
_FOLD = _Fold()


def _plain(text: str) -> str:
    """`plain`, at most MAX_SCAN characters of it: NFKC can make a character 18 (U+FDFA), so the
    budget counts what is read, normalised a slice at a time until it is spent."""
    if text.isascii():
        return text.lower()
    text = untagged(text)
    out: list[str] = []
    size = 0
    for start in range(0, len(text), _SLICE):
        out.append(plain(text[start:start + _SLICE]))
        size += len(out[-1])
        if size >= MAX_SCAN:
            break
    return "".join(out)[:MAX_SCAN]


_SLICE = 2048


def _readings(text: str) -> Iterable[str]:
    """The joined texts as written (NFKC, invisible characters removed, lower case), with
    look-alike letters folded, and their base64 runs decoded (runs never span two texts)."""
    read = _plain(text)
    yield read
    if not read.isascii():
        fold = read.translate(_FOLD).lower()
        if fold != read:
            yield fold
    decoded: list[str] = []
    for run in _B64.findall(text):
        try:
            value = base64.b64decode(run + "=" * (-len(run) % 4), altchars=b"-_" if "-" in run or "_" in run
                                     else None, validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        if value.isprintable() or "\n" in value:
            decoded.append(value)
    if decoded:
        yield unicodedata.normalize("NFKC", _joined(decoded)).lower()


def injected(texts: Iterable[str]) -> bool:
    """Does any of ``texts`` (outside text) try to instruct the model? Reads at most MAX_SCAN
    characters, in one pattern pass per reading however many texts there are."""
    budget = MAX_SCAN
    parts: list[str] = []
    for text in texts:
        if budget <= 0:
            break
        text = text[:budget]
        budget -= len(text)
        parts.append(text)
    if not parts:
        return False
    return any(_PATTERN.search(reading) for reading in _readings(_joined(parts)))
