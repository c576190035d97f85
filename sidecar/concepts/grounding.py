"""What "never inventing a concept absent from the fields" means in code: a phrase the model proposes is
kept only when every content word of it is a word of the concept (any field's text, the character's
trigger and traits) or the name of the field it is for. Words are compared loosely (lower case, a
plural `s`, `-ing` and `-ed` taken off: `standing` is `stand`, `rooftops` is `rooftop`); small words
that carry no concept (`a`, `the`, `on`, `with`, ...) are free. So "rooftop at dusk" may become
`rooftop, dusk` or "standing on a rooftop at dusk", never `sunset` or `city skyline`.

The same test that keeps the model honest is what the property tests (tests/test_concepts_compose.py)
check of every composed prompt.
"""

from __future__ import annotations

import re

from sidecar.assist.tags import key

# Words that name no concept: articles, prepositions, conjunctions, a few verbs of being and wearing.
FREE = frozenset("""
a an the of in on at by to from into onto over under above below behind beside near with without and or
but his her its their one some very is are be being has have wearing wears holding up down out off
""".split())
_WORD = re.compile(r"[a-z0-9]+")


def stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def words(text: str) -> set[str]:
    """The content words of `text`, stemmed (free words left out)."""
    return {stem(w) for w in _WORD.findall(key(text)) if w not in FREE}


def invented(text: str, vocabulary: set[str]) -> list[str]:
    """The content words of `text` that `vocabulary` (stemmed words) does not have, in order."""
    out: list[str] = []
    for w in _WORD.findall(key(text)):
        if w not in FREE and stem(w) not in vocabulary and w not in out:
            out.append(w)
    return out
