"""Line numbers of the keys in a TOML text, so a detector's validation errors can point at the line.

tomllib returns plain dicts without positions. Errors are found after parsing (a wrong type, an unknown
transform), so this module scans the text once more, tracking tables, arrays of tables, dotted and
quoted keys, arrays and inline tables, and records the line where each key or array element starts.
The text has already been accepted by tomllib, so the scanner only needs to be right on valid TOML.
"""

from __future__ import annotations

Path = tuple[str | int, ...]

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_BASIC_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines: dict[Path, int] = {}
        self.table_counts: dict[Path, int] = {}

    @property
    def line(self) -> int:
        return self.text.count("\n", 0, self.pos) + 1

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def record(self, path: Path) -> None:
        self.lines.setdefault(path, self.line)

    def skip_blank(self, newlines: bool) -> None:
        """Skip spaces, tabs, comments and (when `newlines`) line breaks."""
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t" or (newlines and char in "\r\n"):
                self.pos += 1
            elif char == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def key(self) -> tuple[str, ...]:
        """A possibly dotted key: bare, "basic" or 'literal' parts separated by dots."""
        parts = []
        while True:
            self.skip_blank(newlines=False)
            char = self.peek()
            if char in "\"'":
                parts.append(self.string())
            else:
                start = self.pos
                while self.pos < len(self.text) and self.text[self.pos] in _BARE_KEY_CHARS:
                    self.pos += 1
                parts.append(self.text[start : self.pos])
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                return tuple(parts)
            self.pos += 1

    def string(self) -> str:
        """A basic, literal or multi-line string starting at pos; returns its value."""
        for quote in ('"""', "'''"):
            if self.peek(3) == quote:
                end = self.pos + 3
                while True:
                    end = self.text.index(quote, end)
                    if quote == '"""' and _escaped(self.text, end):
                        end += 1
                        continue
                    break
                while self.text[end + 3 : end + 4] == quote[0]:  # up to two quotes may end the content
                    end += 1
                value = self.text[self.pos + 3 : end]
                self.pos = end + 3
                return value
        quote = self.peek()
        self.pos += 1
        out = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == quote:
                self.pos += 1
                break
            if quote == '"' and char == "\\":
                code = self.text[self.pos + 1]
                if code in _BASIC_ESCAPES:
                    out.append(_BASIC_ESCAPES[code])
                    self.pos += 2
                    continue
                width = {"u": 4, "U": 8}.get(code)
                if width:
                    out.append(chr(int(self.text[self.pos + 2 : self.pos + 2 + width], 16)))
                    self.pos += 2 + width
                    continue
            out.append(char)
            self.pos += 1
        return "".join(out)

    def value(self, path: Path) -> None:
        self.skip_blank(newlines=False)
        char = self.peek()
        if char == "[":
            self.pos += 1
            index = 0
            while True:
                self.skip_blank(newlines=True)
                if self.peek() == "]":
                    self.pos += 1
                    return
                self.record((*path, index))
                self.value((*path, index))
                self.skip_blank(newlines=True)
                if self.peek() == ",":
                    self.pos += 1
                index += 1
        elif char == "{":
            self.pos += 1
            while True:
                self.skip_blank(newlines=False)
                if self.peek() == "}":
                    self.pos += 1
                    return
                key = self.key()
                self.record((*path, *key))
                self.pos += 1  # '='
                self.value((*path, *key))
                self.skip_blank(newlines=False)
                if self.peek() == ",":
                    self.pos += 1
        elif char in "\"'":
            self.string()
        else:
            while self.pos < len(self.text) and self.text[self.pos] not in ",]}\r\n#":
                self.pos += 1

    def document(self) -> dict[Path, int]:
        table: Path = ()
        while True:
            self.skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return self.lines
            if self.peek(2) == "[[":
                self.pos += 2
                name = self.key()
                self.pos += 2
                index = self.table_counts.get(name, 0)
                self.table_counts[name] = index + 1
                table = (*name, index)
                self.record(name)
                self.record(table)
            elif self.peek() == "[":
                self.pos += 1
                table = self._table_path(self.key())
                self.pos += 1
                self.record(table)
            else:
                key = self.key()
                self.record((*table, *key))
                self.pos += 1  # '='
                self.value((*table, *key))

    def _table_path(self, name: tuple[str, ...]) -> Path:
        """A [table] under an array of tables, e.g. [features.options] after [[features]], gets the index."""
        path: list[str | int] = []
        for i, part in enumerate(name):
            path.append(part)
            if name[: i + 1] in self.table_counts and i + 1 < len(name):
                path.append(self.table_counts[name[: i + 1]] - 1)
        return tuple(path)


def _escaped(text: str, index: int) -> bool:
    """True when the character at index is preceded by an odd number of backslashes."""
    count = 0
    while index - count - 1 >= 0 and text[index - count - 1] == "\\":
        count += 1
    return count % 2 == 1


def key_lines(text: str) -> dict[Path, int]:
    """{key path: line} for every key, table and array element in a valid TOML text (1-based lines)."""
    return _Scanner(text).document()


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of `path`, else of its nearest recorded ancestor (a missing key points at its table)."""
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def dotted(path: Path) -> str:
    """features[3].transform, source.tags."a b" — the key path as a user reads it."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            shown = part if part and set(part) <= _BARE_KEY_CHARS else '"' + part.replace('"', '\\"') + '"'
            out += f".{shown}" if out else shown
    return out
