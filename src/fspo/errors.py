"""User-facing errors: one line, naming the file, line and field. Tracebacks are for bugs only."""

from __future__ import annotations


class FspoError(Exception):
    """An error caused by the user's input or environment; the CLI prints it as one line, exit 2."""


class DataError(FspoError):
    """A problem at a precise place in a data file: ``FILE:LINE: field: message``."""

    def __init__(self, path: str, line: int | None, field: str, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.field}: {self.message}"
