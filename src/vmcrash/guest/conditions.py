"""``Condition*=`` of a unit, evaluated against the tree where that can be known from files alone.

A unit whose condition is false is *skipped*: its start job succeeds at once without running
anything. For a wait unit that means it holds nothing (time-sync.target is reached at once); for
a service it means it never runs. Path conditions (``systemd.unit(5)``: ConditionPathExists=,
ConditionPathIsDirectory=, ConditionPathIsSymbolicLink=, ConditionFileNotEmpty=,
ConditionDirectoryNotEmpty=, ConditionFileIsExecutable= approximated as "is a file") are checked
against the tree; the others (capabilities, virtualization, kernel command line...) depend on the
running machine and are reported as unknown. ``|`` (triggering: any one of them) and ``!``
(negation) are honoured; assertions (``Assert*=``) are not modelled.

Pure over a :class:`~vmcrash.guest.units.Unit` and a :class:`~vmcrash.guest.sources.UnitSource`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmcrash.errors import UnitFileError
from vmcrash.guest.sources import UnitSource, resolve
from vmcrash.guest.units import Unit

__all__ = ["ConditionResult", "evaluate_conditions"]

_PATH_CONDITIONS = ("ConditionPathExists", "ConditionPathIsDirectory", "ConditionPathIsSymbolicLink",
                    "ConditionFileNotEmpty", "ConditionDirectoryNotEmpty", "ConditionFileIsExecutable")


@dataclass(frozen=True)
class ConditionResult:
    """``met``: True (all known conditions hold), False (one fails: the unit is skipped), None (only
    conditions that depend on the running machine are left). ``why``: the failing or unknown ones."""

    met: bool | None
    why: tuple[str, ...] = ()


def _path_check(source: UnitSource, key: str, path: str) -> bool:
    if key == "ConditionPathIsSymbolicLink":
        return source.kind(path) == "link"
    real = resolve(source, path)
    kind = source.kind(real) if real else None
    if key == "ConditionPathExists":
        return kind is not None
    if key == "ConditionPathIsDirectory":
        return kind == "dir"
    if key in ("ConditionFileNotEmpty", "ConditionFileIsExecutable"):
        if kind != "file" or real is None:
            return False
        if key == "ConditionFileIsExecutable":
            return True
        try:
            return bool(source.read_bytes(real, 1 << 20)[:1])
        except UnitFileError:
            return True  # larger than the limit: certainly not empty
    if key == "ConditionDirectoryNotEmpty":
        try:
            return kind == "dir" and real is not None and bool(source.listdir(real))
        except UnitFileError:
            return False
    return True


def evaluate_conditions(unit: Unit, source: UnitSource) -> ConditionResult:
    """Evaluate ``unit``'s conditions on ``source`` (see the module docstring)."""
    normal: list[tuple[bool | None, str]] = []
    triggering: list[tuple[bool | None, str]] = []
    for a in unit.assignments:
        if a.section != "Unit" or not a.key.startswith("Condition"):
            continue
        if not a.value:  # an empty assignment resets the list
            normal, triggering = [], []
            continue
        value = a.value
        trig = value.startswith("|")
        value = value.lstrip("|")
        neg = value.startswith("!")
        value = value.lstrip("!")
        text = f"{a.key}={a.value}"
        result: bool | None
        if a.key in _PATH_CONDITIONS and value.startswith("/"):
            result = _path_check(source, a.key, value) != neg
        else:
            result = None
        (triggering if trig else normal).append((result, text))
    failed = [t for r, t in normal if r is False]
    if failed:
        return ConditionResult(False, tuple(failed))
    if triggering and all(r is False for r, _ in triggering):
        return ConditionResult(False, tuple(t for _, t in triggering))
    unknown = [t for r, t in normal + triggering if r is None]
    return ConditionResult(None if unknown else True, tuple(unknown))
