"""`include` / `exclude` globs of a blob item, `**` aware.

Rules (those of rclone and .gitignore):
- a pattern without `/` matches the file name at any depth (`*.pdf` matches `a/b/c.pdf`);
- a pattern with `/` is anchored at the root (`letters/*.pdf`; a leading `/` is allowed and ignored);
- `*` and `?` stay inside one path segment, `[abc]` is a class, `**` crosses segments and `**/` also
  matches no folder at all (`**/*.pdf` matches `a.pdf`);
- with no include every file is included; an exclude always wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile one glob (see the module rules) into a regex over the whole relative path."""
    anchored = "/" in pattern.rstrip("/")
    body = pattern.strip("/") if anchored else pattern.rstrip("/")
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if body.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif body.startswith("**", i):
            out.append(".*")
            i += 2
        elif ch == "*":
            out.append("[^/]*")
            i += 1
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "[":
            end = body.find("]", i + 2 if body[i + 1:i + 2] in ("!", "^") else i + 1)
            if end == -1 or end == i + 1:
                out.append(re.escape(ch))
                i += 1
            else:
                inner = body[i + 1:end]
                if inner[:1] in ("!", "^"):
                    inner = "^" + inner[1:]
                out.append("[" + inner.replace("\\", "\\\\") + "]")
                i = end + 1
        else:
            out.append(re.escape(ch))
            i += 1
    prefix = "" if anchored else "(?:.*/)?"
    return re.compile("^" + prefix + "".join(out) + "$", re.DOTALL)


@dataclass
class PathFilter:
    """Decides which relative paths belong to a blob item."""

    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._include = [glob_to_regex(p) for p in self.include]
        self._exclude = [glob_to_regex(p) for p in self.exclude]

    def __call__(self, path: str) -> bool:
        if any(rx.match(path) for rx in self._exclude):
            return False
        return not self._include or any(rx.match(path) for rx in self._include)

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude)
