"""Load systemd units the way systemd does: search paths, aliases, masks, templates, drop-ins, .wants.

:class:`UnitLoader` scans the unit search path once (systemd's "name map": first directory in
precedence order wins, a symlink to ``/dev/null`` or an empty file masks, a symlink to a file of
another name is an alias, a symlink to a file of the same name links it in), then loads units on
demand by name. A loaded :class:`Unit` carries every assignment of its fragment and drop-ins
(``<name>.d/*.conf``, the template's ``foo@.service.d``, dash-prefix ``foo-.service.d`` and
type-wide ``service.d`` directories, sorted by file name across all directories) plus the
dependencies found in ``.wants/``, ``.requires/`` and ``.upholds/`` directories.

``[Install]`` (``WantedBy=``, ``Also=``, ``Alias=``) is kept as install information only; it
orders and pulls in nothing. Problems with files are collected as :class:`Problem` and loading
goes on.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from vmcrash.errors import UnitFileError
from vmcrash.guest.names import (
    expand_specifiers,
    instance_of,
    instantiate,
    is_template,
    is_valid_unit_name,
    prefix_dropin_names,
    template_of,
    unit_type,
)
from vmcrash.guest.sources import UnitSource, resolve
from vmcrash.guest.unitfile import (
    MAX_UNIT_FILE_BYTES,
    Assignment,
    Problem,
    decode_unit_bytes,
    parse_unit_text,
)

__all__ = [
    "DEP_KEYS",
    "SEARCH_PATHS",
    "DepRef",
    "Unit",
    "UnitLoader",
    "parse_bool",
]

log = logging.getLogger(__name__)

#: The system unit search path, highest precedence first (systemd.unit(5), "System Unit Search Path").
SEARCH_PATHS = (
    "/etc/systemd/system.control",
    "/run/systemd/system.control",
    "/run/systemd/transient",
    "/run/systemd/generator.early",
    "/etc/systemd/system",
    "/etc/systemd/system.attached",
    "/run/systemd/system",
    "/run/systemd/system.attached",
    "/run/systemd/generator",
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/run/systemd/generator.late",
)

#: ``[Unit]`` keys holding unit names, and the dependency kind each one is.
DEP_KEYS = {
    "Wants": "wants",
    "Requires": "requires",
    "Requisite": "requisite",
    "BindsTo": "binds_to",
    "PartOf": "part_of",
    "Upholds": "upholds",
    "Conflicts": "conflicts",
    "After": "after",
    "Before": "before",
    "OnFailure": "on_failure",
    "OnSuccess": "on_success",
    "PropagatesReloadTo": "propagates_reload_to",
    "ReloadPropagatedFrom": "reload_propagated_from",
    "PropagatesStopTo": "propagates_stop_to",
    "StopPropagatedFrom": "stop_propagated_from",
    "JoinsNamespaceOf": "joins_namespace_of",
}
#: ``.wants``-style directories and the dependency each entry adds.
_DIR_DEPS = (("wants", "wants"), ("requires", "requires"), ("upholds", "upholds"))
_TRUE = {"1", "yes", "y", "true", "t", "on"}
_FALSE = {"0", "no", "n", "false", "f", "off"}
#: Unit types that exist without a unit file (created by the kernel, udev or the manager itself).
_SYNTHETIC_TYPES = ("device", "slice", "scope")
_SYNTHETIC_UNITS = ("-.mount", "init.scope", "-.slice")


def parse_bool(text: str) -> bool | None:
    """systemd's boolean words (``yes/no/true/false/on/off/1/0``...); None when it is none of them."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    return None


@dataclass(frozen=True)
class DepRef:
    """One dependency as written: ``kind`` (``after``, ``wants``...) on unit ``name``; ``origin`` says where."""

    kind: str
    name: str
    origin: str


@dataclass(frozen=True)
class Unit:
    """A unit as systemd would load it.

    :ivar id: the primary name (for an alias, the name of the file it points to).
    :ivar names: every name this unit answers to (id first), aliases included.
    :ivar load_state: ``loaded``, ``masked``, ``not-found`` or ``error`` (a file systemd refuses).
    :ivar fragment: in-tree path of the unit file (a template's file for instances), or None.
    :ivar dropins: drop-in files applied, in the order applied.
    :ivar assignments: every assignment of the fragment then the drop-ins, in that order.
    :ivar deps: explicit dependencies (``[Unit]`` keys and ``.wants/`` ``.requires/`` dirs).
    :ivar synthetic: True for units that exist without a file (devices, slices, ``-.mount``).
    """

    id: str
    names: tuple[str, ...]
    load_state: str
    fragment: str | None = None
    dropins: tuple[str, ...] = ()
    assignments: tuple[Assignment, ...] = ()
    deps: tuple[DepRef, ...] = ()
    synthetic: bool = False

    @property
    def type(self) -> str:
        """The unit type (``service``, ``target``...)."""
        return unit_type(self.id) or ""

    @property
    def loaded(self) -> bool:
        """True when systemd can start it (loaded from a file, or a synthetic unit)."""
        return self.load_state == "loaded"

    def values(self, section: str, key: str) -> list[Assignment]:
        """All assignments of ``key`` in ``[section]``, file order then drop-in order."""
        return [a for a in self.assignments if a.section == section and a.key == key]

    def last(self, section: str, key: str) -> str | None:
        """The effective value of a single-valued setting (the last assignment wins), or None."""
        found = self.values(section, key)
        return found[-1].value if found else None

    def list_values(self, section: str, key: str) -> list[str]:
        """Space-separated list setting; an empty assignment resets the list (e.g. ``ExecStart=``)."""
        out: list[str] = []
        for a in self.values(section, key):
            if not a.value:
                out = []
            else:
                out.append(a.value)
        return out

    def flag(self, section: str, key: str, default: bool) -> bool:
        """A boolean setting, ``default`` when unset or unparsable."""
        value = self.last(section, key)
        parsed = parse_bool(value) if value is not None else None
        return default if parsed is None else parsed

    @property
    def default_dependencies(self) -> bool:
        """``DefaultDependencies=`` (yes unless said otherwise)."""
        return self.flag("Unit", "DefaultDependencies", True)

    def deps_of(self, kind: str) -> list[DepRef]:
        """Explicit dependencies of one kind."""
        return [d for d in self.deps if d.kind == kind]

    def install(self, key: str) -> list[str]:
        """``[Install]`` words of ``key`` (``WantedBy``, ``RequiredBy``, ``Also``, ``Alias``...)."""
        words: list[str] = []
        for a in self.values("Install", key):
            words.extend(expand_specifiers(w, self.id) for w in a.value.split())
        return words


@dataclass
class _NameMap:
    """Unit name -> resolved fragment path (``/dev/null`` = masked), first search dir wins."""

    fragments: dict[str, str] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)
    #: entry names of each search directory (to skip lookups of drop-in dirs that are not there)
    entries: dict[str, frozenset[str]] = field(default_factory=dict)


class UnitLoader:
    """Loads units from one tree. Not thread-safe; cheap to create (one directory scan).

    :param source: the tree (a live system, an image, or memory).
    :param search_paths: override the system search path (precedence order).
    """

    def __init__(self, source: UnitSource, search_paths: Iterable[str] = SEARCH_PATHS) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self._cache: dict[str, Unit] = {}
        self._by_name: dict[str, str] = {}
        self._parsed: dict[str, tuple[Assignment, ...] | None] = {}
        self._map = self._build_name_map(search_paths)

    # -- scanning ------------------------------------------------------------------------

    def _problem(self, path: str, line: int | None, message: str) -> None:
        problem = Problem(path, line, message)
        if problem not in self.problems:
            self.problems.append(problem)

    def _build_name_map(self, search_paths: Iterable[str]) -> _NameMap:
        nm = _NameMap()
        seen_dirs: set[str] = set()
        for directory in search_paths:
            real = resolve(self.source, directory)
            if real is None or real in seen_dirs or self.source.kind(real) != "dir":
                continue
            seen_dirs.add(real)
            nm.dirs.append(directory)
            try:
                names = self.source.listdir(directory)
            except UnitFileError as exc:
                self._problem(exc.path, None, str(exc).split(": ", 1)[-1])
                continue
            nm.entries[directory] = frozenset(names)
            for name in names:
                if name in nm.fragments or not is_valid_unit_name(name):
                    continue
                path = posixpath.join(directory, name)
                kind = self.source.kind(path)
                if kind == "file":
                    nm.fragments[name] = path
                elif kind == "link":
                    final = resolve(self.source, path)
                    if final is None:
                        self._problem(path, None, "symlink loop or unreadable symlink; ignored")
                        continue
                    if final == "/dev/null":
                        nm.fragments[name] = "/dev/null"
                        continue
                    target = posixpath.basename(final)
                    if self.source.kind(final) != "file":
                        self._problem(path, None, f"symlink to {final}, which is not a file; ignored")
                        continue
                    if target != name and (unit_type(target) != unit_type(name)
                                           or is_template(target) != is_template(name)):
                        self._problem(path, None, f"alias {name} -> {target}: types differ; ignored")
                        continue
                    nm.fragments[name] = final
        return nm

    @property
    def search_dirs(self) -> list[str]:
        """The search directories that exist in this tree, precedence order."""
        return list(self._map.dirs)

    # -- parsing ---------------------------------------------------------------------------

    def _read_assignments(self, path: str) -> tuple[Assignment, ...] | None:
        """Assignments of one file, or None when systemd would refuse it (problems recorded)."""
        if path in self._parsed:
            return self._parsed[path]
        result: tuple[Assignment, ...] | None
        try:
            data = self.source.read_bytes(path, MAX_UNIT_FILE_BYTES)
        except UnitFileError as exc:
            self._problem(path, None, str(exc).split(": ", 1)[-1])
            result = None
        else:
            text, problems = decode_unit_bytes(data, path)
            parsed = parse_unit_text(text, path)
            for p in [*problems, *parsed.problems]:
                self._problem(p.path, p.line, p.message)
            result = None if parsed.fatal else parsed.assignments
        self._parsed[path] = result
        return result

    def _is_empty(self, path: str) -> bool:
        try:
            return not self.source.read_bytes(path, MAX_UNIT_FILE_BYTES).strip()
        except UnitFileError:
            return False

    # -- loading -----------------------------------------------------------------------------

    def _fragment_for(self, name: str) -> tuple[str | None, str | None]:
        """(fragment path, name it was found under); a template's file for an instance."""
        if name in self._map.fragments:
            return self._map.fragments[name], name
        tmpl = template_of(name)
        if tmpl is not None and tmpl in self._map.fragments:
            return self._map.fragments[tmpl], tmpl
        return None, None

    def _names_for(self, unit_id: str, fragment: str | None, requested: str) -> tuple[str, ...]:
        names = [unit_id]
        if requested not in names:
            names.append(requested)
        if fragment and fragment != "/dev/null":
            inst = instance_of(unit_id)
            for other, path in sorted(self._map.fragments.items()):
                if path != fragment:
                    continue
                if is_template(other):
                    if inst is not None:
                        candidate = instantiate(other, inst)
                        if candidate not in names:
                            names.append(candidate)
                elif inst is None and other not in names:
                    names.append(other)
        return tuple(names)

    def has_fragment(self, name: str) -> bool:
        """True when a unit file (not a mask) exists for ``name`` in the search path."""
        fragment = self._map.fragments.get(name)
        return fragment is not None and fragment != "/dev/null"

    def resolve_name(self, name: str) -> str:
        """The id of the unit ``name`` refers to (``sshd.service`` -> ``ssh.service``)."""
        return self.load(name).id

    def load(self, name: str) -> Unit:
        """Load ``name`` (cached); never raises for bad files (they become problems / load states)."""
        if name in self._by_name:
            return self._cache[self._by_name[name]]
        fragment, _ = self._fragment_for(name)
        unit_id = name
        if fragment and fragment != "/dev/null":
            base = posixpath.basename(fragment)
            if is_valid_unit_name(base) and unit_type(base) == unit_type(name):
                inst = instance_of(name)
                if is_template(base) and inst is not None:
                    unit_id = instantiate(base, inst)
                elif not is_template(base):
                    unit_id = base
        if unit_id in self._cache:
            unit = self._cache[unit_id]
            self._by_name[name] = unit_id
            return unit
        unit = self._load_new(unit_id, name, fragment)
        for n in unit.names:
            self._by_name.setdefault(n, unit.id)
        self._by_name[name] = unit.id
        self._cache[unit.id] = unit
        return unit

    def _load_new(self, unit_id: str, requested: str, fragment: str | None) -> Unit:
        names = self._names_for(unit_id, fragment, requested)
        if fragment == "/dev/null" or (fragment is not None and self._is_empty(fragment)):
            return Unit(unit_id, names, "masked", fragment=fragment)
        dropins = self._dropin_files(names)
        if fragment is None:
            synthetic = unit_type(unit_id) in _SYNTHETIC_TYPES or unit_id in _SYNTHETIC_UNITS
            if not synthetic:
                return Unit(unit_id, names, "not-found")
        assignments: list[Assignment] = []
        state = "loaded"
        for path in ([fragment] if fragment else []) + dropins:
            parsed = self._read_assignments(path)
            if parsed is None:
                state = "error"
                continue
            assignments.extend(parsed)
        deps = list(self._explicit_deps(unit_id, assignments))
        deps.extend(self._dir_deps(names))
        return Unit(unit_id, names, state, fragment=fragment, dropins=tuple(dropins),
                    assignments=tuple(assignments), deps=tuple(deps), synthetic=fragment is None)

    def _dropin_stems(self, names: tuple[str, ...]) -> list[str]:
        stems: list[str] = []
        utype = unit_type(names[0]) or ""
        stems.append(utype)
        for name in names:
            stems.extend(prefix_dropin_names(name))
            tmpl = template_of(name)
            if tmpl:
                stems.append(tmpl)
            stems.append(name)
        out: list[str] = []
        for s in stems:
            if s and s not in out:
                out.append(s)
        return out

    def _dropin_files(self, names: tuple[str, ...]) -> list[str]:
        chosen: dict[str, str | None] = {}
        for directory in self._map.dirs:
            present = self._map.entries.get(directory, frozenset())
            for stem in self._dropin_stems(names):
                if stem + ".d" not in present:
                    continue
                ddir = posixpath.join(directory, stem + ".d")
                if self.source.kind(ddir) not in ("dir", "link"):
                    continue
                try:
                    entries = self.source.listdir(resolve(self.source, ddir) or ddir)
                except UnitFileError as exc:
                    self._problem(exc.path, None, str(exc).split(": ", 1)[-1])
                    continue
                for entry in entries:
                    if not entry.endswith(".conf") or entry in chosen:
                        continue
                    path = posixpath.join(ddir, entry)
                    final = resolve(self.source, path)
                    if final == "/dev/null" or (final and self.source.kind(final) == "file" and
                                                self._is_empty(final)):
                        chosen[entry] = None  # masked drop-in
                    elif final and self.source.kind(final) == "file":
                        chosen[entry] = final
                    else:
                        self._problem(path, None, "drop-in is not a readable file; ignored")
        return [chosen[k] for k in sorted(chosen) if chosen[k] is not None]  # type: ignore[misc]

    def _explicit_deps(self, unit_id: str, assignments: list[Assignment]) -> Iterator[DepRef]:
        for a in assignments:
            if a.section != "Unit" or a.key not in DEP_KEYS:
                continue
            for word in a.value.split():
                name = expand_specifiers(word.strip('"'), unit_id)
                if not is_valid_unit_name(name) or is_template(name):
                    self._problem(a.path, a.line, f"{a.key}={word}: not a valid unit name; ignored")
                    continue
                yield DepRef(DEP_KEYS[a.key], name, f"{a.key}= at {a.where}")

    def _dir_deps(self, names: tuple[str, ...]) -> Iterator[DepRef]:
        seen: set[tuple[str, str]] = set()
        inst = instance_of(names[0])
        for directory in self._map.dirs:
            present = self._map.entries.get(directory, frozenset())
            for name in names + ((template_of(names[0]),) if template_of(names[0]) else ()):
                for suffix, kind in _DIR_DEPS:
                    if f"{name}.{suffix}" not in present:
                        continue
                    ddir = posixpath.join(directory, f"{name}.{suffix}")
                    if self.source.kind(ddir) not in ("dir", "link"):
                        continue
                    try:
                        entries = self.source.listdir(resolve(self.source, ddir) or ddir)
                    except UnitFileError as exc:
                        self._problem(exc.path, None, str(exc).split(": ", 1)[-1])
                        continue
                    for entry in entries:
                        if not is_valid_unit_name(entry):
                            continue
                        target = entry
                        if is_template(entry):
                            if inst is None:
                                continue
                            target = instantiate(entry, inst)
                        if resolve(self.source, posixpath.join(ddir, entry)) == "/dev/null":
                            continue
                        if (kind, target) in seen:
                            continue
                        seen.add((kind, target))
                        yield DepRef(kind, target, f"{ddir}/{entry}")
