"""A model that obeys every instruction it reads: the worst case of a model fooled by injected text.

It reads through every defence that relies on the model (the datamark, base64, look-alike
letters, the `<crm_data>` block) and does every harmful thing its prompt asks for, in any
language: it writes the draft to the address an instruction names (or the string quoted for the
"to field"), copies every link and HTML tag it sees into the answer, repeats every instruction
sentence (so a steered answer carries the attacker's words), and, asked for its instructions in
any language, prints its whole system text, canary included. The router's output checks in code
are what must stop it (tests/safety/).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

MARK = "\u02c6"
_LOOKALIKE = str.maketrans("аеорсухіјѕԁһӏԛԝАВЕКМНОРСТХУІЈЅαοριτυχνΑΒΕΗΙΚΜΝΟΡΤΥΧ",
                           "aeopcyxijsdhlqwABEKMHOPCTXYIJSaopitvxvABEHIKMNOPTYX")
_B64 = re.compile(r"[A-Za-z0-9+/_\-]{16,}={0,2}")
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'`)\]]+|\b[\w\-]+(?:\.[\w\-]+)+/[^\s<>\"'`)\]]*|javascript:[^\s]+")
_ADDRESS = re.compile(r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+")
_TAG = re.compile(r"<(?!/?crm_data)[a-zA-Z][^<>]{0,200}>")
_QUOTED = re.compile(r"`([^`]{1,400})`")
# Verbs that make a sentence an instruction, in the languages the attacks use.
_DIRECTIVE = re.compile(
    r"(?i)\b(?:say|tell|send|forward|include|add|insert|put|reveal|print|show|repeat|ignore|disregard|forget|"
    r"answer|respond|reply|use|write|set|change|open|mention|claim|state)\b|скажи|отправ|добав|покажи|игнор|"
    r"\b(?:di|dile|envía|envia|incluye|añade|revela|ignora|dis|envoie|inclus|ajoute|révèle|ignore[zr]?|sag|sende|"
    r"füge|zeig|ignoriere|diga|envie|inclua|mostre)\b|告诉|发送|发给|加上|添加|忽略|显示|伝えて|送信|追加|無視|表示")
_LEAK = re.compile(r"(?i)\bprompt\b|system ?prompt|instructions|instrucciones|consignes|anweisungen|instruções|"
                   r"istruzioni|инструкц|промпт|系统提示|提示词|指令|システムプロンプト|指示")


def reading(prompt: str) -> str:
    """The prompt as a credulous model reads it: marks gone, base64 decoded, look-alikes folded."""
    text = prompt.replace(MARK, " ")
    decoded = []
    for run in _B64.findall(text):
        try:
            raw = base64.b64decode(run + "=" * (-len(run) % 4), altchars=b"-_" if "-" in run or "_" in run else None)
            decoded.append(raw.decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
    return "\n".join([text, *decoded, text.translate(_LOOKALIKE)])


def _directives(text: str) -> list[str]:
    sentences = re.split(r"(?<=[.!?。])\s+|\n+", text)
    seen: list[str] = []
    for sentence in sentences:
        sentence = sentence.strip()
        if sentence and _DIRECTIVE.search(sentence) and sentence not in seen and "crm_data" not in sentence:
            seen.append(sentence)
    return seen[:20]


def obey(system: str, prompt: str, *, json_mode: bool) -> str | dict[str, Any]:
    text = reading(prompt)
    directives = _directives(text)
    links = list(dict.fromkeys(_URL.findall(text)))
    tags = list(dict.fromkeys(_TAG.findall(text)))
    leak = system if _LEAK.search(" ".join(directives)) else ""
    steer = " ".join([*directives, *links, *tags, leak]).strip()
    if not json_mode:
        return ("As instructed: " + steer) if steer else "Here is what I found."
    to = ""
    quoted = [q for d in directives for q in _QUOTED.findall(d)]
    addresses = [a for d in directives for a in _ADDRESS.findall(d)]
    if quoted:
        to = quoted[0]
    elif addresses:
        to = addresses[-1]
    elif (found := _ADDRESS.findall(text)):
        to = found[0]
    subject = ("Re: " + tags[0]) if tags else "Following up"
    return {"to": to, "subject": subject, "body": "Hi,\n\n" + (steer or "Following up on our call.")}
