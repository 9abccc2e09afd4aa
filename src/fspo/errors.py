"""User-facing errors: one line, naming the file, line and field. Tracebacks are for bugs only."""

from __future__ import annotations

import unicodedata
from contextlib import contextmanager

# Characters a terminal may act on or that cannot be encoded: escaped in every message, because
# file names and values come from the user (a newline would split the line, ESC starts a colour code).
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with control, invisible and unencodable characters escaped (``\\n``, ``\\x1b``,
    ``\\u200b``, ``\\udcff``), cut to ``limit`` characters with ``...``."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(ascii(ch)[1:-1] if unicodedata.category(ch) in _UNPRINTABLE else ch for ch in text)


def show(value: object, limit: int = 60) -> str:
    """A short, safe repr of a user's value for an error message."""
    return printable(repr(value), limit)


class FspoError(Exception):
    """An error caused by the user's input or environment; the CLI prints it as one line, exit 2."""

    def __str__(self) -> str:
        return printable(super().__str__())


class DataError(FspoError):
    """A problem at a precise place in a data file: ``FILE:LINE: field: message``."""

    def __init__(self, path: str, line: int | None, field: str, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        super().__init__(self.path, line, field, message)  # the arguments, so that it pickles

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return printable(f"{where}: {self.field}: {self.message}")


@contextmanager
def loading(what: str, hint: str = ""):
    """Turn a failure to load a model, tokenizer or checkpoint (not a model folder, corrupt weights)
    into a one-line error: ``WHAT: ExcType: first line of its message; HINT``."""
    try:
        yield
    except FspoError:
        raise
    except Exception as exc:
        message = (str(exc).strip().splitlines() or [""])[0][:300]
        raise FspoError(f"{what}: {type(exc).__name__}: {message}" + (f"; {hint}" if hint else "")) from None
