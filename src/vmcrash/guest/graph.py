"""The boot ordering graph: explicit and implicit dependencies, the boot transaction, edge chains.

Built from a :class:`~vmcrash.guest.units.UnitLoader` the way systemd (252, Debian 12) does it:

* units are loaded on demand starting at ``default.target``, following every unit a loaded unit
  names (so reverse ``Before=`` edges come only from units systemd would have loaded too);
* implicit dependencies per type: ``DefaultDependencies=yes`` services and sockets ``Requires=``
  and ``After=sysinit.target``, services ``After=basic.target``, sockets ``Before=sockets.target``,
  timers ``Before=timers.target`` and (with ``OnCalendar=``) ``After=time-sync.target
  time-set.target``, triggers (socket/timer/path ``Before=`` the unit they start), slices, and the
  execution-environment ones (``PrivateTmp=``, ``StateDirectory=``..., logging to the journal);
* targets are ordered after the units they want/require unless that would make a loop;
* the boot transaction is what ``default.target`` pulls in (``Wants=``, ``Requires=``,
  ``BindsTo=``, ``Upholds=`` and the ``.wants/`` dirs), minus units that cannot start (not found,
  masked, or requiring one that cannot).

Not modelled (see the audit's notes): generator output when auditing an image offline, mount
units that exist only at run time (only ``-.mount`` and mount unit files are known) and
``Conflicts=`` in the transaction (which of two conflicting start jobs systemd keeps depends on
the order it merges jobs; the audit reports every unit of the transaction that conflicts with a
clock unit, and conflicting time daemons). Conditions and assertions
do not change the transaction (a unit skipped by one keeps its job and its ordering); what they
change, whether a unit runs, the audit works out with :mod:`vmcrash.guest.conditions`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vmcrash.guest.names import escape_path, slice_for, unescape
from vmcrash.guest.units import DepRef, Unit, UnitLoader

__all__ = ["HARD_KINDS", "MAX_UNITS", "PULL_KINDS", "TIME_SYNC", "BootGraph", "Edge", "implicit_deps",
           "service_type"]

log = logging.getLogger(__name__)

#: The target the whole audit is about: reached once the clock is synchronised, if something holds it.
TIME_SYNC = "time-sync.target"
#: Dependency kinds that put a start job for the other unit into the transaction.
PULL_KINDS = ("requires", "binds_to", "wants", "upholds")
#: Kinds whose target must be startable, or the depending unit's own job fails.
HARD_KINDS = ("requires", "binds_to")
#: Kinds that make systemd load the named unit.
_LOAD_KINDS = ("wants", "requires", "requisite", "binds_to", "part_of", "upholds", "conflicts", "after",
               "before", "on_failure", "on_success", "triggers", "propagates_reload_to",
               "reload_propagated_from", "propagates_stop_to", "stop_propagated_from")
#: Bound on the number of units loaded (a hostile tree cannot make the audit run forever).
MAX_UNITS = 20_000
_JOURNAL_OUTPUTS = {"journal", "journal+console", "kmsg", "kmsg+console", "syslog", "syslog+console"}
_DIRECTORY_PREFIXES = {
    "RuntimeDirectory": "/run",
    "StateDirectory": "/var/lib",
    "CacheDirectory": "/var/cache",
    "LogsDirectory": "/var/log",
    "ConfigurationDirectory": "/etc",
}
#: Built into the manager and never stopped: no default dependencies.
_PERPETUAL_SLICES = ("-.slice", "system.slice")
_PATH_KEYS = ("PathExists", "PathExistsGlob", "PathChanged", "PathModified", "DirectoryNotEmpty")


@dataclass(frozen=True)
class Edge:
    """``src`` ``kind`` ``dst`` (``nginx.service after network.target``), and where that comes from."""

    src: str
    kind: str
    dst: str
    origin: str

    def __str__(self) -> str:
        return f"{self.src} {self.kind} {self.dst}  [{self.origin}]"


def _dd(kind: str, name: str, unit: Unit, why: str) -> DepRef:
    return DepRef(kind, name, f"implicit: {why} ({unit.type}, DefaultDependencies=yes)")


def _mount_deps(loader: UnitLoader, path: str, why: str) -> list[DepRef]:
    """``RequiresMountsFor=``-style deps: After= every mount unit known for a prefix of ``path``."""
    out: list[DepRef] = []
    if not path.startswith("/"):
        return out
    parts = [p for p in path.split("/") if p]
    for i in range(len(parts) + 1):
        name = escape_path("/" + "/".join(parts[:i])) + ".mount"
        if name == "-.mount":
            out.append(DepRef("after", name, f"implicit: {why} needs {path}; the root mount"))
        elif loader.has_fragment(name):
            out.append(DepRef("after", name, f"implicit: {why} needs {path}"))
            out.append(DepRef("requires", name, f"implicit: {why} needs {path}"))
    return out


def _words(unit: Unit, section: str, key: str) -> list[str]:
    words: list[str] = []
    for value in unit.list_values(section, key):
        words.extend(value.split())
    return words


def _exec_deps(unit: Unit, section: str, loader: UnitLoader) -> list[DepRef]:
    """Dependencies systemd adds for a unit's execution environment (unit_add_exec_dependencies)."""
    out: list[DepRef] = []
    wd = unit.last(section, "WorkingDirectory")
    if wd and not wd.startswith("-") and wd != "~":
        out += _mount_deps(loader, wd, "WorkingDirectory=")
    rd = unit.last(section, "RootDirectory")
    if rd:
        out += _mount_deps(loader, rd, "RootDirectory=")
    for key, prefix in _DIRECTORY_PREFIXES.items():
        for word in _words(unit, section, key):
            out += _mount_deps(loader, f"{prefix}/{word.split(':', 1)[0]}", f"{key}=")
    if any(_words(unit, section, k) for k in ("StateDirectory", "CacheDirectory", "LogsDirectory")):
        out.append(DepRef("after", "systemd-remount-fs.service",
                          "implicit: State/Cache/LogsDirectory= need a writable /var"))
    private_tmp = unit.flag(section, "PrivateTmp", False) or unit.flag(section, "DynamicUser", False)
    if private_tmp:
        why = "PrivateTmp=yes" if unit.flag(section, "PrivateTmp", False) else "DynamicUser=yes (implies PrivateTmp)"
        out.append(DepRef("after", "tmp.mount", f"implicit: {why}"))
        out.append(DepRef("wants", "tmp.mount", f"implicit: {why}"))
        out += _mount_deps(loader, "/var/tmp", why)
        out.append(DepRef("after", "systemd-tmpfiles-setup.service", f"implicit: {why}"))
    stdin = (unit.last(section, "StandardInput") or "null").lower()
    default_out = "inherit" if stdin.startswith("tty") or stdin == "socket" else "journal"
    stdout = (unit.last(section, "StandardOutput") or default_out).lower()
    stderr = (unit.last(section, "StandardError") or "inherit").lower()
    if stdout in _JOURNAL_OUTPUTS or stderr in _JOURNAL_OUTPUTS:
        out.append(DepRef("after", "systemd-journald.socket", "implicit: logs to the journal"))
    return out


def _slice_deps(unit: Unit) -> list[DepRef]:
    name = unit.last(unit.type.capitalize(), "Slice") or slice_for(unit.id)
    return [DepRef("requires", name, "implicit: its slice"), DepRef("after", name, "implicit: its slice")]


def _parent_slice(name: str) -> str | None:
    if name == "-.slice":
        return None
    stem = name[: -len(".slice")]
    if "-" not in stem:
        return "-.slice"
    return stem.rsplit("-", 1)[0] + ".slice"


def _triggered(unit: Unit, section: str, key: str) -> str:
    return unit.last(section, key) or unit.id.rsplit(".", 1)[0] + ".service"


def implicit_deps(unit: Unit, loader: UnitLoader) -> list[DepRef]:
    """The dependencies systemd adds to ``unit`` by itself (see the module docstring)."""
    if not unit.loaded:
        return []
    out: list[DepRef] = []
    dd = unit.default_dependencies
    t = unit.type
    shutdown = [_dd("conflicts", "shutdown.target", unit, "stopped at shutdown"),
                _dd("before", "shutdown.target", unit, "stopped at shutdown")]
    early = [_dd("requires", "sysinit.target", unit, "needs early boot"),
             _dd("after", "sysinit.target", unit, "needs early boot")]
    for path in _words(unit, "Unit", "RequiresMountsFor"):
        out += _mount_deps(loader, path, "RequiresMountsFor=")
    if t == "service":
        if dd:
            out += early + [_dd("after", "basic.target", unit, "starts after the basic system")] + shutdown
        out += _slice_deps(unit)
        if service_type(unit) == "dbus":
            out += [DepRef("requires", "dbus.socket", "implicit: Type=dbus"),
                    DepRef("after", "dbus.socket", "implicit: Type=dbus")]
        out += _exec_deps(unit, "Service", loader)
    elif t == "socket":
        if dd:
            out += [_dd("before", "sockets.target", unit, "part of sockets.target")] + early + shutdown
        out += _slice_deps(unit)
        if not unit.flag("Socket", "Accept", False):
            out.append(DepRef("before", _triggered(unit, "Socket", "Service"), "implicit: socket triggers it"))
            out.append(DepRef("triggers", _triggered(unit, "Socket", "Service"), "implicit: socket triggers it"))
        for key in ("ListenStream", "ListenDatagram", "ListenSequentialPacket", "ListenFIFO", "ListenSpecial"):
            for word in _words(unit, "Socket", key):
                if word.startswith("/"):
                    out += _mount_deps(loader, word, f"{key}=")
    elif t == "target":
        if dd:
            out += shutdown
    elif t == "timer":
        if dd:
            out.append(_dd("before", "timers.target", unit, "part of timers.target"))
            out += early
            if unit.values("Timer", "OnCalendar"):
                for target in ("time-set.target", TIME_SYNC):
                    out.append(_dd("after", target, unit, "OnCalendar= needs the real time"))
            out += shutdown
        out.append(DepRef("before", _triggered(unit, "Timer", "Unit"), "implicit: timer triggers it"))
        out.append(DepRef("triggers", _triggered(unit, "Timer", "Unit"), "implicit: timer triggers it"))
        if unit.flag("Timer", "Persistent", False):
            out += _mount_deps(loader, "/var/lib/systemd/timers", "Persistent=yes")
    elif t == "path":
        if dd:
            out += [_dd("before", "paths.target", unit, "part of paths.target")] + early + shutdown
        out.append(DepRef("before", _triggered(unit, "Path", "Unit"), "implicit: path unit triggers it"))
        out.append(DepRef("triggers", _triggered(unit, "Path", "Unit"), "implicit: path unit triggers it"))
        for key in _PATH_KEYS:
            for word in _words(unit, "Path", key):
                out += _mount_deps(loader, word, f"{key}=")
    elif t == "slice":
        parent = _parent_slice(unit.id)
        if parent:
            out += [DepRef("requires", parent, "implicit: parent slice"),
                    DepRef("after", parent, "implicit: parent slice")]
        if dd and unit.id not in _PERPETUAL_SLICES:
            out += shutdown
    elif t in ("mount", "automount"):
        where = unit.last(t.capitalize(), "Where") or _unescape_path(unit.id)
        parent = where.rstrip("/").rsplit("/", 1)[0] or "/"
        if where != "/":
            out += _mount_deps(loader, parent, "a mount point needs its parent mounted")
        if t == "mount":
            out += [DepRef("requires", "-.slice", "implicit: mounts live in the root slice"),
                    DepRef("after", "-.slice", "implicit: mounts live in the root slice")]
        if t == "automount":
            mount = unit.id.rsplit(".", 1)[0] + ".mount"
            out.append(DepRef("before", mount, "implicit: automount triggers it"))
            out.append(DepRef("triggers", mount, "implicit: automount triggers it"))
        if dd and not unit.synthetic:
            out += [_dd("before", "local-fs.target", unit, "local mount"),
                    _dd("conflicts", "umount.target", unit, "unmounted at shutdown"),
                    _dd("before", "umount.target", unit, "unmounted at shutdown")]
            if t == "mount":
                out.append(_dd("after", "local-fs-pre.target", unit, "local mount"))
        if t == "mount" and not unit.synthetic:
            out += _exec_deps(unit, "Mount", loader)
    return out


def _unescape_path(unit_id: str) -> str:
    stem = unit_id.rsplit(".", 1)[0]
    if stem == "-":
        return "/"
    return "/" + unescape(stem.replace("-", "/"))


def service_type(unit: Unit) -> str:
    """A service's ``Type=``; without one, ``dbus`` when ``BusName=`` is set, else ``simple``."""
    explicit = unit.last("Service", "Type")
    if explicit:
        return explicit.lower()
    return "dbus" if unit.last("Service", "BusName") else "simple"


class BootGraph:
    """Dependencies of every unit loaded from ``start``, the boot transaction, and chains through it.

    :param loader: the unit loader of the tree.
    :param start: the unit the boot starts (``default.target``).
    :param extra: more units to load (e.g. units named on the command line).
    """

    def __init__(self, loader: UnitLoader, start: str = "default.target", extra: Iterable[str] = ()) -> None:
        self.loader = loader
        self.start = loader.resolve_name(start)
        self.units: dict[str, Unit] = {}
        #: id -> kind -> other id -> Edge (after/before stored both as written and reversed)
        self.deps: dict[str, dict[str, dict[str, Edge]]] = {}
        self._load_closure([start, *extra])
        self._add_target_default_deps()
        self.failed: dict[str, str] = {}
        self.transaction: frozenset[str] = self._transaction()

    # -- building --------------------------------------------------------------------------

    def _add(self, src: str, kind: str, dst: str, origin: str) -> None:
        if src == dst:
            return
        by_kind = self.deps.setdefault(src, {})
        by_kind.setdefault(kind, {}).setdefault(dst, Edge(src, kind, dst, origin))

    def _load_closure(self, names: list[str]) -> None:
        todo = deque(names)
        while todo:
            if len(self.units) >= MAX_UNITS:
                log.warning("more than %d units; stopped loading", MAX_UNITS)
                break
            unit = self.loader.load(todo.popleft())
            if unit.id in self.units:
                continue
            self.units[unit.id] = unit
            refs = list(unit.deps) + implicit_deps(unit, self.loader)
            for ref in refs:
                other = self.loader.resolve_name(ref.name)
                if ref.kind == "before":
                    self._add(other, "after", unit.id, ref.origin)
                    self._add(unit.id, "before", other, ref.origin)
                elif ref.kind == "after":
                    self._add(unit.id, "after", other, ref.origin)
                    self._add(other, "before", unit.id, ref.origin)
                else:
                    self._add(unit.id, ref.kind, other, ref.origin)
                if ref.kind in _LOAD_KINDS and other not in self.units:
                    todo.append(ref.name)

    def _add_target_default_deps(self) -> None:
        """Targets are ordered after what they pull in (systemd's target_deps_queue), unless looping."""
        for unit in list(self.units.values()):
            if unit.type != "target" or not unit.loaded or not unit.default_dependencies:
                continue
            for kind in ("wants", "requires", "requisite", "binds_to"):
                for other_id, edge in list(self.deps.get(unit.id, {}).get(kind, {}).items()):
                    other = self.units.get(other_id)
                    if other is None or not other.loaded or not other.default_dependencies:
                        continue
                    if other_id in self.deps.get(unit.id, {}).get("before", {}):
                        continue
                    origin = f"implicit: a target is ordered after what it pulls in ({edge.origin})"
                    self._add(unit.id, "after", other_id, origin)
                    self._add(other_id, "before", unit.id, origin)

    def _startable(self, unit_id: str, memo: dict[str, bool]) -> bool:
        """True when ``unit_id`` and everything it requires (``HARD_KINDS``, transitively) can load.

        Depth-first without recursion (a hostile tree's chain of ``Requires=`` is as long as it likes);
        a unit met again on the current path (a requirement cycle) counts as startable there.
        """
        on_path: set[str] = set()
        # frames: [unit, its hard dependencies left to look at, ok so far, the dependency waited for]
        frames: list[list[Any]] = []

        def enter(uid: str) -> bool | None:
            """The answer when known at once, else None (a frame was pushed)."""
            if uid in memo:
                return memo[uid]
            unit = self.units.get(uid)
            if unit is None or not unit.loaded:
                memo[uid] = False
                return False
            if uid in on_path:
                return True
            on_path.add(uid)
            deps = [(kind, other, edge) for kind in HARD_KINDS
                    for other, edge in self.deps.get(uid, {}).get(kind, {}).items()]
            frames.append([uid, iter(deps), True, None])
            return None

        def fail(uid: str, kind: str, other: str, edge: Edge) -> None:
            state = self.units[other].load_state if other in self.units else "not-found"
            self.failed.setdefault(uid, f"{kind.replace('_', '')} {other} ({state}): {edge.origin}")

        answer = enter(unit_id)
        if answer is not None:
            return answer
        while frames:
            frame = frames[-1]
            uid, deps, _, waited = frame
            if waited is not None:  # the dependency this frame descended into has its answer now
                kind, other, edge = waited
                frame[3] = None
                if not memo[other]:
                    frame[2] = False
                    fail(uid, kind, other, edge)
            descended = False
            for kind, other, edge in deps:
                found = enter(other)
                if found is None:
                    frame[3] = (kind, other, edge)
                    descended = True
                    break
                if not found:
                    frame[2] = False
                    fail(uid, kind, other, edge)
            if descended:
                continue
            frames.pop()
            on_path.discard(uid)
            memo[uid] = frame[2]
        return memo[unit_id]

    def _transaction(self) -> frozenset[str]:
        memo: dict[str, bool] = {}
        self._pulled_by: dict[str, Edge | None] = {}
        if not self._startable(self.start, memo):
            return frozenset()
        self._pulled_by[self.start] = None
        todo = deque([self.start])
        while todo:
            uid = todo.popleft()
            for kind in PULL_KINDS:
                for other, edge in sorted(self.deps.get(uid, {}).get(kind, {}).items()):
                    if other in self._pulled_by or not self._startable(other, memo):
                        continue
                    self._pulled_by[other] = edge
                    todo.append(other)
        return frozenset(self._pulled_by)

    # -- questions -------------------------------------------------------------------------

    def unit(self, name: str) -> Unit:
        """The loaded unit named ``name`` (any of its names); loads it when needed."""
        uid = self.loader.resolve_name(name)
        if uid not in self.units:
            self._load_closure([name])
        return self.units[uid]

    def edges(self, unit_id: str, kind: str) -> dict[str, Edge]:
        """``kind`` edges of ``unit_id`` (e.g. everything it is ordered after)."""
        return self.deps.get(unit_id, {}).get(kind, {})

    def pull_chain(self, unit_id: str) -> list[Edge] | None:
        """How ``default.target`` pulls ``unit_id`` into the boot transaction; None when it does not."""
        if unit_id not in self._pulled_by:
            return None
        chain: list[Edge] = []
        edge = self._pulled_by[unit_id]
        while edge is not None and len(chain) <= len(self._pulled_by):
            chain.append(edge)
            edge = self._pulled_by[edge.src]
        return list(reversed(chain))

    def order_chain(self, src: str, dst: str, within: frozenset[str] | None = None) -> list[Edge] | None:
        """Shortest chain of ``after`` edges proving ``src`` starts after ``dst``; None when none exists.

        Only units in ``within`` (default: the boot transaction) carry the ordering: an edge through a
        unit that has no job does not make anything wait.
        """
        scope = self.transaction if within is None else within
        if src not in scope or dst not in scope:
            return None
        parent: dict[str, Edge | None] = {src: None}
        todo = deque([src])
        while todo:
            uid = todo.popleft()
            if uid == dst:
                chain: list[Edge] = []
                edge = parent[uid]
                while edge is not None:
                    chain.append(edge)
                    edge = parent[edge.src]
                return list(reversed(chain))
            for other, edge in sorted(self.edges(uid, "after").items()):
                if other in scope and other not in parent:
                    parent[other] = edge
                    todo.append(other)
        return None

    def waited_for_by(self, dst: str, within: frozenset[str] | None = None) -> set[str]:
        """Units in the transaction that ``dst`` is (transitively) ordered after: they start before it."""
        scope = self.transaction if within is None else within
        seen: set[str] = set()
        todo = deque([dst])
        while todo:
            uid = todo.popleft()
            for other in self.edges(uid, "after"):
                if other in scope and other not in seen:
                    seen.add(other)
                    todo.append(other)
        seen.discard(dst)
        return seen

    def after_names(self, unit_id: str) -> set[str]:
        """Every unit ``unit_id`` is ordered after (what ``systemctl show -p After`` lists)."""
        return set(self.edges(unit_id, "after"))

    def cycles(self) -> list[list[str]]:
        """Ordering cycles among transaction units (strongly connected components of size > 1)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        on_stack: set[str] = set()
        stack: list[str] = []
        out: list[list[str]] = []
        counter = 0
        for root in sorted(self.transaction):
            if root in index:
                continue
            work = [(root, iter(sorted(o for o in self.edges(root, "after") if o in self.transaction)))]
            index[root] = low[root] = counter
            counter += 1
            stack.append(root)
            on_stack.add(root)
            while work:
                node, it = work[-1]
                advanced = False
                for nxt in it:
                    if nxt not in index:
                        index[nxt] = low[nxt] = counter
                        counter += 1
                        stack.append(nxt)
                        on_stack.add(nxt)
                        work.append((nxt, iter(sorted(o for o in self.edges(nxt, "after")
                                                      if o in self.transaction))))
                        advanced = True
                        break
                    if nxt in on_stack:
                        low[node] = min(low[node], index[nxt])
                if advanced:
                    continue
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
        return out

