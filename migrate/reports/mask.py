"""Information governance: keys and file names in a report can be patient identifiers (MRNs, NHS numbers in
file names). Masking replaces each by a stable short hash, in every string of the report, so every format
built from the masked data is masked too.

The same identifier gives the same hash in every report of a component (so a board can follow one difference
across runs) without the raw value ever being written. With the plan's `change.mask_key` (a `${VAR}`) the hash
is an HMAC under that secret; without it, it is a hash of the component's name and the value, which anyone who
knows the component can recompute for a guessed NHS number, so the report says which it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def short_hash(component: str, value: str, key: str | None = None) -> str:
    data = f"{component}\0{value}".encode()
    if key:
        return hmac.new(key.encode(), data, hashlib.sha256).hexdigest()[:10]
    return hashlib.sha256(data).hexdigest()[:10]


def masked_name(component: str, identifier: str, key: str | None = None) -> str:
    """`table:key=…` keeps its table (`table:#hash`); a file name keeps only its extension (`#hash.pdf`)."""
    digest = short_hash(component, identifier, key)
    table, sep, _ = identifier.partition(":")
    if sep and "/" not in table and "=" in identifier:
        return f"{table}:#{digest}"
    suffix = re.search(r"\.[A-Za-z0-9]{1,5}$", identifier)
    return f"#{digest}{suffix.group(0) if suffix else ''}"


class Masker:
    """Replaces every known identifier (longest first) in any text, and, applied to a dataclass, in every
    string it holds."""

    def __init__(self, component: str, identifiers: Iterable[str], key: str | None = None) -> None:
        names = sorted({i for i in identifiers if i}, key=len, reverse=True)
        self.replacements = {i: masked_name(component, i, key) for i in names}
        parts = set(names)
        for name in names:  # a path's last part on its own (messages quote file names without folders)
            base = name.rsplit("/", 1)[-1]
            if base and base != name and len(base) >= 4:
                parts.add(base)
                self.replacements.setdefault(base, masked_name(component, base, key))
        ordered = sorted(parts, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(p) for p in ordered)) if ordered else None

    @classmethod
    def for_value(cls, component: str, identifiers: Iterable[str], value: Any, key: str | None = None) -> Masker:
        """A masker for the identifiers that can occur in `value`: a journal may know millions of file
        names, so only those whose last word appears among the value's words are compiled into the pattern."""
        words: set[str] = set()

        def collect(text: str) -> str:
            words.update(_WORDS.split(text))
            return text

        _walk(value, collect)
        return cls(component, [i for i in identifiers if _last_word(i) in words], key)

    def text(self, value: str) -> str:
        if self._pattern is None:
            return value
        return self._pattern.sub(lambda m: self.replacements[m.group(0)], value)

    def apply(self, value: T) -> T:
        return _walk(value, self.text)


_WORDS = re.compile(r"[\s/|<>\"'(),;:=#]+")


def _last_word(identifier: str) -> str:
    return next((w for w in reversed(_WORDS.split(identifier)) if w), identifier)


def _walk(value: Any, text: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return text(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _walk(getattr(value, f.name), text)
                                             for f in dataclasses.fields(value) if f.init})
    if isinstance(value, dict):
        return {k: _walk(v, text) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, text) for v in value]
    if isinstance(value, tuple):
        return tuple(_walk(v, text) for v in value)
    return value
