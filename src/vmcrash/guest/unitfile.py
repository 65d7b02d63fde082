"""Parse the text of one systemd unit file or drop-in into assignments, the way systemd reads it.

Pure: text in, :class:`ParsedFile` out. Rules followed (``systemd.syntax(7)``): ``#`` and ``;``
start comment lines, a trailing backslash continues a line (comment lines inside a continuation
are skipped), ``[Section]`` headers, ``Key=Value`` with whitespace stripped around both. Lines
systemd would ignore with a warning become :class:`Problem` entries carrying the file and
1-based line number; parsing always goes on to the end of the file.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_UNIT_FILE_BYTES", "Assignment", "ParsedFile", "Problem", "decode_unit_bytes", "parse_unit_text"]

#: Larger files are refused (systemd's own limit for a line is 1 MiB; a unit file is tiny).
MAX_UNIT_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class Problem:
    """Something wrong with a unit file. ``line`` is 1-based, None for whole-file problems."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Assignment:
    """One ``Key=Value`` line in ``[section]`` of ``path`` at 1-based ``line``."""

    section: str
    key: str
    value: str
    path: str
    line: int

    @property
    def where(self) -> str:
        """``path:line`` of the assignment."""
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class ParsedFile:
    """Assignments in file order and the problems met on the way."""

    path: str
    assignments: tuple[Assignment, ...]
    problems: tuple[Problem, ...]
    #: systemd refuses the whole file (invalid section header): the unit fails to load.
    fatal: bool = False


def decode_unit_bytes(data: bytes, path: str) -> tuple[str, list[Problem]]:
    """Text of a unit file; undecodable bytes are replaced and reported with their line."""
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        problems = []
        for number, raw in enumerate(data.split(b"\n"), start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                problems.append(Problem(path, number, "line is not valid UTF-8; bad bytes replaced"))
        return data.decode("utf-8", "replace"), problems


def parse_unit_text(text: str, path: str) -> ParsedFile:
    """Parse ``text`` (the content of ``path``) into assignments and problems."""
    assignments: list[Assignment] = []
    problems: list[Problem] = []
    section: str | None = None
    pending: str | None = None
    pending_line = 0
    fatal = False
    lines = text.split("\n")
    for number, raw in enumerate(lines, start=1):
        if "\0" in raw:
            problems.append(Problem(path, number, "NUL byte in line; line ignored"))
            continue
        line = raw.strip()
        if pending is not None:
            if line.startswith(("#", ";")):
                continue
            joined = pending + " " + line
        else:
            if not line or line.startswith(("#", ";")):
                continue
            joined = line
            pending_line = number
        if joined.endswith("\\") and not joined.endswith("\\\\"):
            pending = joined[:-1].rstrip()
            if number == len(lines):
                joined = pending
            else:
                continue
        pending = None
        if joined.startswith("["):
            section = _section_name(joined)
            if section is None:
                problems.append(Problem(path, pending_line, f"invalid section header {joined[:60]!r}; "
                                                            "systemd refuses the whole file"))
                fatal = True
            continue
        if fatal:
            continue
        _parse_line(joined, path, pending_line, section, assignments, problems)
    if pending is not None:
        _parse_line(pending, path, pending_line, section, assignments, problems)
    return ParsedFile(path, tuple(assignments), tuple(problems), fatal)


def _section_name(line: str) -> str | None:
    if len(line) >= 3 and line.endswith("]") and "]" not in line[1:-1] and "[" not in line[1:-1]:
        return line[1:-1]
    return None


def _parse_line(line: str, path: str, number: int, section: str | None,
                assignments: list[Assignment], problems: list[Problem]) -> None:
    if line.startswith(".include"):
        problems.append(Problem(path, number, ".include is not supported by systemd any more; ignored"))
        return
    if section is None:
        problems.append(Problem(path, number, "assignment outside of any section; ignored"))
        return
    key, eq, value = line.partition("=")
    key = key.strip()
    if not eq:
        problems.append(Problem(path, number, f"missing '=' in {line[:60]!r}; line ignored"))
        return
    if not key or any(c.isspace() for c in key):
        problems.append(Problem(path, number, f"invalid key {key[:60]!r}; line ignored"))
        return
    assignments.append(Assignment(section, key, value.strip(), path, number))
