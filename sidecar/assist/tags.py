"""Prompts as lists of comma-separated tags, and how two tags are compared.

A tag is compared by its `key`: lower case, inner whitespace collapsed, and an emphasis wrapper taken
off (`(ginger hair:1.2)`, `[white cloak]` and `Ginger  hair` are all `ginger hair`), so a locked
trait is recognised however the artist weighted it. `mirror` swaps left and right, the one edit a
flipped image or a careless model makes to an asymmetric character.
"""

from __future__ import annotations

import re

_WEIGHT = re.compile(r"^[(\[{]+\s*(.*?)\s*(?::\s*-?\d+(?:\.\d+)?)?\s*[)\]}]+$")
_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)
FLIP_TAGS = frozenset({"mirrored", "flipped", "horizontally flipped", "horizontal flip", "mirror image"})


def split_tags(prompt: str) -> list[str]:
    """The prompt's tags in order, blank ones dropped (`a,, b` is two tags)."""
    return [t for t in (part.strip() for part in prompt.replace("\n", " ").split(",")) if t]


def join_tags(tags: list[str]) -> str:
    return ", ".join(tags)


def key(tag: str) -> str:
    """What two tags are compared by (see the module's docstring)."""
    text = " ".join(tag.split()).lower()
    match = _WEIGHT.match(text)
    if match:
        text = match.group(1)
    return " ".join(text.replace("_", " ").split())


def mirror(tag: str) -> str:
    """`right bracer` -> `left bracer` (and back); a tag without a side is returned as it is."""
    return _SIDE.sub(lambda m: {"left": "right", "right": "left"}[m.group(1).lower()], tag)


def mirrors_any(tag: str, locked: list[str]) -> str | None:
    """The locked trait that `tag` names the mirror image of, if any: adding it would put a one-sided
    detail on the wrong side. Compared by words, so `bracer on left arm` mirrors `right bracer` too."""
    words = set(re.findall(r"[\w-]+", key(tag)))
    for trait in locked:
        flipped = key(mirror(trait))
        if flipped != key(trait) and set(re.findall(r"[\w-]+", flipped)) <= words:
            return trait
    return None
