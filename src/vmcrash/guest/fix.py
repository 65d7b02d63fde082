"""Make services wait for a stepped clock: drop-ins, a wait unit, a chrony snippet; with undo.

:func:`plan_fix` decides (reading only) what to write:

* for each chosen service, ``/etc/systemd/system/<unit>.d/50-vmcrash-time-sync.conf`` with
  ``Wants=time-sync.target`` and ``After=time-sync.target`` (ordering, not requirement: without a
  time source the service still starts once the wait gives up); with ``strict``, also
  ``Requires=`` + ``After=`` the wait unit, so the service stays down when the clock never
  synchronizes;
* only *application* services are chosen (:mod:`vmcrash.guest.roles`): console and login, D-Bus,
  the network, name resolution, the time daemon and what it needs are never ordered after
  ``time-sync.target``, ssh only when named explicitly and never with ``strict``;
* the wait unit of the time daemon in use (``chrony-wait.service``, ``ntpsec-wait.service``,
  ``systemd-time-wait-sync.service``) enabled the way ``systemctl enable`` would, so something
  really holds ``time-sync.target`` until the clock is synchronised -- but not one whose
  requirements would start a daemon that conflicts with the one in use (Fedora's
  ``chronyd-restricted.service`` ``Conflicts=chronyd.service``, which ``chrony-wait.service``
  ``Requires=``): then the next candidate, or none (and the re-audit fails);
* for every unit that then holds ``time-sync.target``, a drop-in
  ``/etc/systemd/system/<wait>.d/50-vmcrash-wait-timeout.conf`` with a finite
  ``TimeoutStartSec=`` (:data:`DEFAULT_WAIT_TIMEOUT_S` unless told otherwise), whatever the unit
  ships with (``systemd-time-wait-sync`` ships ``infinity``), and an ``ExecStopPost=`` that logs
  to the journal when the wait gave up;
* where chrony is used, a snippet ``makestep 1 -1`` (step at any update, so also after a freeze)
  in its ``confdir``, and every ``makestep`` line that chronyd would read *after* it commented out
  (Debian's ``chrony.conf`` reads ``confdir`` first, so its ``makestep 1 3`` would otherwise win).

:func:`apply_fix` writes the plan and records each file in a manifest
(``/etc/vmcrash/guest-fix.json``; original bytes, mode and owner of edited files). Running it
again changes nothing. :func:`undo_fix` removes exactly what the manifest records and restores
edited files byte for byte; a file changed since is left alone and reported.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import json
import os
import posixpath
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmcrash.errors import StorageError, UnitFileError, UsageError
from vmcrash.guest.audit import audit_prerequisites, load_graph
from vmcrash.guest.clockunits import (
    GENERIC_WAIT_UNIT,
    KNOWN_WAIT_UNITS,
    conflicting_daemons,
    find_clock_units,
    time_daemons,
)
from vmcrash.guest.conditions import OFFLINE, live_machine_for
from vmcrash.guest.graph import TIME_SYNC, BootGraph
from vmcrash.guest.roles import Role, RoleKind, classify
from vmcrash.guest.sources import Link, OverlaySource, RootSource, UnitSource, resolve
from vmcrash.guest.timecfg import find_chrony_conf, ntpdate_servers, read_chrony
from vmcrash.guest.units import UnitLoader

__all__ = [
    "CHRONY_SNIPPET",
    "CHRONY_SNIPPET_NAME",
    "DROPIN_NAME",
    "DEFAULT_WAIT_TIMEOUT_S",
    "DROPIN_TEXT",
    "TIMEOUT_DROPIN_NAME",
    "MANIFEST_PATH",
    "Change",
    "FixPlan",
    "FixResult",
    "apply_fix",
    "plan_fix",
    "render_plan",
    "undo_fix",
]

MANIFEST_PATH = "/etc/vmcrash/guest-fix.json"
MANIFEST_FORMAT = 1
DROPIN_NAME = "50-vmcrash-time-sync.conf"
DROPIN_TEXT = (
    "# Written by 'vmcrash guest fix' (undo: vmcrash guest fix --undo).\n"
    "# Start only after time-sync.target, which a wait unit holds until the clock is synchronized.\n"
    "[Unit]\n"
    "Wants=time-sync.target\n"
    "After=time-sync.target\n"
)
TIMEOUT_DROPIN_NAME = "50-vmcrash-wait-timeout.conf"
#: Default bound on the wait for the clock at boot, in seconds. systemd's own DefaultTimeoutStartSec
#: (the time any unit start may take before systemd gives up), far more than a reachable server
#: needs (chrony with iburst synchronizes in 4 polls of 2 s; timesyncd steps on its first answer),
#: and half of chrony-wait's shipped 180 s, which holds every application for 3 minutes on a
#: guest that has lost its time source.
DEFAULT_WAIT_TIMEOUT_S = 90
MAX_WAIT_TIMEOUT_S = 3600
CHRONY_SNIPPET_NAME = "vmcrash-makestep.conf"
CHRONY_SNIPPET = (
    "# Written by 'vmcrash guest fix' (undo: vmcrash guest fix --undo).\n"
    "# Step the clock whenever it is off by more than 1 s, at any update: also after a freeze.\n"
    "makestep 1 -1\n"
)
_COMMENT_MARK = "# disabled by vmcrash guest fix, see "
_MAX_FILE = 1 << 20


@dataclass(frozen=True)
class Change:
    """One file the fix writes. ``action``: ``create`` (new file), ``edit`` (replace content of an
    existing file), ``symlink`` (new link to ``target``)."""

    path: str
    action: str
    reason: str
    content: bytes = b""
    old: bytes = b""
    target: str = ""


@dataclass(frozen=True)
class FixPlan:
    """What :func:`apply_fix` would write, and why.

    :ivar services: ordered after time-sync.target. :ivar left_alone: services of the application
        phase not ordered, with the reason (infrastructure). :ivar bounded: wait units given a timeout.
    """

    root: str
    changes: tuple[Change, ...]
    services: tuple[str, ...]
    wait_unit: str | None
    warnings: tuple[str, ...] = ()
    left_alone: tuple[Role, ...] = ()
    bounded: tuple[str, ...] = ()
    wait_timeout_s: int = DEFAULT_WAIT_TIMEOUT_S
    strict: bool = False

    def summary(self) -> list[str]:
        """What the fix orders, what it leaves alone and why, and the bound (one line each)."""
        strict = " (strict: they require a synchronized clock)" if self.strict else ""
        out = [f"ordered after time-sync.target{strict}: {', '.join(self.services) or 'none'}"]
        for r in self.left_alone:
            out.append(f"left alone: {r.unit} ({r.kind.value}: {r.reason})")
        if self.wait_unit:
            out.append(f"wait unit: {self.wait_unit}; time-sync.target held by {', '.join(self.bounded) or 'nothing'}, "
                       f"each given up after {self.wait_timeout_s} s without a time source")
            out.append("without a time source the services above start after that bound"
                       + (" only if the clock synchronized; otherwise they stay down" if self.strict
                          else ", with the clock as it is"))
        return out


def strict_dropin_text(wait_unit: str) -> str:
    """The ``strict`` drop-in: also require the wait unit, so the service stays down without a clock."""
    return (
        "# Written by 'vmcrash guest fix --strict' (undo: vmcrash guest fix --undo).\n"
        "# Start only after time-sync.target, and only if the clock was synchronized: when\n"
        f"# {wait_unit} gives up, this service does not start (dependency failed).\n"
        "[Unit]\n"
        "Wants=time-sync.target\n"
        "After=time-sync.target\n"
        f"Requires={wait_unit}\n"
        f"After={wait_unit}\n"
    )


def timeout_dropin_text(timeout_s: int, privileged_prefix: bool) -> str:
    """The wait unit's drop-in: a finite start timeout and a journal line when the wait gave up.

    ``privileged_prefix``: systemd >= 231 understands ``+`` (run without the unit's sandbox, which
    in chrony-wait forbids the AF_UNIX socket ``systemd-cat`` needs to reach the journal).
    """
    plus = "+" if privileged_prefix else ""
    return (
        "# Written by 'vmcrash guest fix' (undo: vmcrash guest fix --undo).\n"
        f"# Without a time source, give up after {timeout_s} s: the services ordered after time-sync.target\n"
        "# then start anyway (they are ordered after it, they do not require it) with the clock as it is.\n"
        "[Service]\n"
        f"TimeoutStartSec={timeout_s}\n"
        f"ExecStopPost=-{plus}/bin/sh -c 'if [ \"$$SERVICE_RESULT\" != success ]; then echo \"vmcrash: %n gave up "
        f"after {timeout_s} s without a synchronized clock (result: $$SERVICE_RESULT); services ordered after "
        "time-sync.target start now with the clock as it is\" | systemd-cat -t vmcrash-guest -p warning; fi'\n"
    )


def _systemd_has_plus_prefix(source: UnitSource) -> bool:
    """True when the tree's systemd is >= 231 (it ships libsystemd-shared-NNN.so since then; CentOS 7's 219 not)."""
    for d in ("/usr/lib/systemd", "/lib/systemd", "/usr/lib64/systemd", "/usr/lib/x86_64-linux-gnu/systemd"):
        try:
            if any(n.startswith("libsystemd-shared-") for n in source.listdir(d)):
                return True
        except UnitFileError:
            continue
    return False


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_or_none(source: UnitSource, path: str) -> bytes | None:
    real = resolve(source, path)
    if real is None or source.kind(real) != "file":
        return None
    return source.read_bytes(real, _MAX_FILE)


# -- planning ------------------------------------------------------------------------------


def _choose_services(graph: BootGraph, units: Iterable[str], all_enabled: bool, roles: dict[str, Role],
                     strict: bool) -> tuple[list[str], list[str], list[Role]]:
    """(services to order, warnings, application-phase services left alone) on the graph *after* the fix."""
    prereq, early = audit_prerequisites(graph)
    chosen: list[str] = []
    warnings: list[str] = []
    for name in units:
        unit = graph.unit(name)
        if unit.load_state != "loaded":
            raise UsageError(f"{name}: unit is {unit.load_state}; nothing to fix")
        if unit.type != "service":
            raise UsageError(f"{name}: not a service")
        if unit.id in prereq or unit.id == TIME_SYNC:
            chain = graph.order_chain(TIME_SYNC, unit.id, graph.transaction | {TIME_SYNC}) or []
            proof = "; ".join(str(e) for e in chain)
            raise UsageError(f"{unit.id}: {TIME_SYNC} itself waits for it ({proof}); ordering it after "
                             f"{TIME_SYNC} would make an ordering cycle")
        role = roles.get(unit.id)
        if role is not None and role.kind is not RoleKind.APPLICATION:
            if role.kind is not RoleKind.SSH:
                raise UsageError(f"{unit.id}: {role.kind.value} infrastructure ({role.reason}); it is never "
                                 f"ordered after {TIME_SYNC}, or a guest without a time source could not be reached")
            if strict:
                raise UsageError(f"{unit.id}: --strict would keep the operator's way in down without a "
                                 "synchronized clock; order it without --strict")
        if unit.id not in graph.transaction:
            warnings.append(f"{unit.id} is not started at boot; its drop-in orders it only if it is")
        if unit.id not in chosen:
            chosen.append(unit.id)
    if all_enabled:
        for uid in sorted(graph.transaction):
            u = graph.units[uid]
            role = roles.get(uid)
            if (u.type == "service" and uid not in prereq and uid not in early and uid not in chosen
                    and role is not None and role.kind is RoleKind.APPLICATION
                    and graph.order_chain(uid, TIME_SYNC) is None):
                chosen.append(uid)
    left = [r for uid, r in sorted(roles.items()) if r.kind is not RoleKind.APPLICATION and uid not in chosen
            and uid not in prereq and uid not in early]
    return chosen, warnings, left


def _wait_units(graph: BootGraph) -> tuple[list[str], list[str]]:
    """The wait units that could hold time-sync.target for the time daemon of the transaction, best
    first, or none (and why).

    Follows the distribution: the daemon's own wait or step unit first (:data:`KNOWN_WAIT_UNITS`:
    chrony-wait, ntpsec-wait, RHEL/CentOS 7's ntpdate), systemd-time-wait-sync otherwise.
    """
    for daemon_unit, kind in time_daemons(graph):
        if daemon_unit not in graph.transaction:
            continue
        masked, loaded = [], []
        for candidate in (*KNOWN_WAIT_UNITS.get(kind, ()), GENERIC_WAIT_UNIT):
            unit = graph.loader.load(candidate)
            if unit.load_state == "loaded":
                loaded.append(unit.id)
            elif unit.load_state == "masked":
                masked.append(candidate)
        if loaded:
            return loaded, []
        if masked:
            return [], [f"{', '.join(masked)} masked; unmask (systemctl unmask {masked[0]}) so it can "
                        f"hold {TIME_SYNC}"]
        return [], [f"no wait unit for {kind} is installed ({', '.join(KNOWN_WAIT_UNITS.get(kind, ()))})"]
    return [], ["no time daemon is started at boot: nothing synchronizes the clock, so nothing can wait for it"]


def _as_distribution_links(source: UnitSource, fragment: str) -> str:
    """``fragment`` spelled the way this tree's own enable links spell unit paths.

    With ``/lib -> usr/lib`` the same file is ``/lib/systemd/system/x`` (Debian 12's systemctl
    writes that) or ``/usr/lib/systemd/system/x`` (RHEL, Fedora, SUSE): follow the majority of the
    links already in ``/etc/systemd/system/*.wants``.
    """
    if not fragment.startswith("/lib/systemd/system/"):
        return fragment
    usr = lib = 0
    for d in source.listdir("/etc/systemd/system"):
        if not d.endswith((".wants", ".requires")):
            continue
        for name in source.listdir(f"/etc/systemd/system/{d}")[:200]:
            path = f"/etc/systemd/system/{d}/{name}"
            if source.kind(path) == "link":
                target = source.readlink(path)
                usr += target.startswith("/usr/lib/systemd/system/")
                lib += target.startswith("/lib/systemd/system/")
    return "/usr" + fragment if usr > lib else fragment


def _enable_links(graph: BootGraph, unit_id: str) -> list[tuple[str, str]]:
    """(link path, target) pairs ``systemctl enable`` would create for ``unit_id``."""
    unit = graph.loader.load(unit_id)
    fragment = _as_distribution_links(graph.loader.source, unit.fragment or "")
    links = []
    for key, suffix in (("WantedBy", "wants"), ("RequiredBy", "requires")):
        for target in unit.install(key):
            links.append((f"/etc/systemd/system/{target}.{suffix}/{unit.id}", fragment))
    if not links:
        links.append((f"/etc/systemd/system/{TIME_SYNC}.wants/{unit.id}", fragment))
    return links


def _enabling(graph: BootGraph, src: UnitSource, wait: str) -> tuple[list[Change], list[str], dict[str, bytes | Link]]:
    """The links that enable ``wait`` (none when it is already in the transaction), warnings, overlay."""
    changes: list[Change] = []
    warnings: list[str] = []
    overrides: dict[str, bytes | Link] = {}
    if wait in graph.transaction:
        return changes, warnings, overrides
    for link, target in _enable_links(graph, wait):
        if src.kind(link) == "link" and src.readlink(link) == target:
            continue
        if src.kind(link) is not None:
            warnings.append(f"{link} exists and is not the expected link; left alone")
            continue
        changes.append(Change(link, "symlink", f"enable {wait}: it holds {TIME_SYNC} until the clock is "
                              "synchronized", target=target))
        overrides[link] = Link(target)
    return changes, warnings, overrides


def _chrony_changes(source: UnitSource, graph: BootGraph) -> tuple[list[Change], list[str]]:
    if not any(kind == "chrony" and uid in graph.transaction for uid, kind in time_daemons(graph)):
        return [], []
    path = find_chrony_conf(source)
    if path is None:
        return [], ["chrony is started at boot but no chrony.conf was found; no snippet written"]
    cfg = read_chrony(source, path)
    if cfg.makestep is not None and cfg.makestep.unlimited and cfg.makestep.threshold_s <= 1.0:
        return [], []
    overrides: dict[str, bytes | Link] = {}
    changes: list[Change] = []
    if cfg.confdirs:
        snippet = posixpath.join(cfg.confdirs[0], CHRONY_SNIPPET_NAME)
        overrides[snippet] = CHRONY_SNIPPET.encode()
        changes.append(Change(snippet, "create", "chrony: step after a freeze too", CHRONY_SNIPPET.encode()))
    else:
        snippet = path
        old = _read_or_none(source, path) or b""
        new = old + (b"" if old.endswith(b"\n") or not old else b"\n") + CHRONY_SNIPPET.encode()
        overrides[path] = new
        changes.append(Change(path, "edit", "chrony: step after a freeze too", new, old))
    # Comment out every makestep read after ours (last one wins in chronyd).
    for _ in range(16):
        view = OverlaySource(source, overrides)
        sim = read_chrony(view, path)
        ours = [i for i, d in enumerate(sim.makesteps) if d.args[:2] == ("1", "-1") and d.path == snippet]
        if not ours:
            break
        later = sim.makesteps[ours[-1] + 1:]
        if not later:
            break
        d = later[0]
        current = overrides.get(d.path)
        old_bytes = current if isinstance(current, bytes) else (_read_or_none(source, d.path) or b"")
        lines = old_bytes.decode("utf-8", "replace").split("\n")
        lines[d.line - 1] = f"# {lines[d.line - 1]}  {_COMMENT_MARK}{snippet}"
        new_bytes = "\n".join(lines).encode()
        overrides[d.path] = new_bytes
        original = next((c.old for c in changes if c.path == d.path), old_bytes)
        changes = [c for c in changes if c.path != d.path]
        changes.append(Change(d.path, "edit", f"chrony: its makestep at line {d.line} would override the snippet",
                              new_bytes, original))
    return changes, []


def plan_fix(root: str | Path = "/", units: Iterable[str] = (), *, all_enabled: bool = False,
             source: UnitSource | None = None, wait_timeout_s: int = DEFAULT_WAIT_TIMEOUT_S,
             strict: bool = False) -> FixPlan:
    """Decide what to write (reads only). See the module docstring.

    The services are chosen on the boot graph as it will be *after* the fix (wait unit enabled),
    so what the wait unit needs is known to be infrastructure.

    :raises UsageError: a named unit cannot be fixed (not found, not a service, would loop,
        infrastructure), or ``wait_timeout_s`` is out of range.
    :raises UnitFileError: the tree has no loadable default.target.
    """
    if not 1 <= int(wait_timeout_s) <= MAX_WAIT_TIMEOUT_S:
        raise UsageError(f"--wait-timeout must be 1..{MAX_WAIT_TIMEOUT_S} seconds (a finite bound), "
                         f"not {wait_timeout_s}")
    names = list(units)
    if source is None and not Path(root).is_dir():
        raise UsageError(f"{root}: not a directory")
    src: UnitSource = source if source is not None else RootSource(Path(root))
    graph = load_graph(root, src, extra=names)
    warnings: list[str] = []
    changes: list[Change] = []
    overrides: dict[str, bytes | Link] = {}
    clash = conflicting_daemons(graph)
    if clash:
        raise UsageError(f"cannot make this boot safe: {clash[0].message}")
    candidates, why = _wait_units(graph)
    warnings.extend(why)
    wait: str | None = None
    after = graph
    for candidate in candidates:
        links, link_warnings, links_over = _enabling(graph, src, candidate)
        tried = (BootGraph(UnitLoader(OverlaySource(src, links_over)), "default.target", extra=names)
                 if links_over else graph)
        # enabling it must not start a unit that conflicts with the time daemon (Fedora's
        # chronyd-restricted.service Conflicts=chronyd.service, which chrony-wait.service Requires=)
        if conflicting_daemons(tried):
            started = [u for u, _ in time_daemons(tried) if u in tried.transaction and u not in graph.transaction]
            warnings.append(f"{candidate} not used: enabling it would also start "
                            f"{', '.join(started) or 'a time daemon'}, which conflicts with the time daemon "
                            "started at boot (Conflicts=)")
            continue
        wait, after = candidate, tried
        changes.extend(links)
        warnings.extend(link_warnings)
        overrides.update(links_over)
        break
    else:
        if candidates:
            warnings.append(f"no wait unit can hold {TIME_SYNC} without a conflict ({', '.join(candidates)})")
    if wait == "ntpdate.service":
        servers, origin = ntpdate_servers(src)
        if not servers:
            raise UsageError("ntpdate.service would step the clock from no server: /etc/ntp/step-tickers and "
                             "/etc/ntp.conf name none; add one to /etc/ntp/step-tickers")
        warnings.append(f"ntpdate.service steps the clock from {', '.join(servers[:4])} ({origin})")
    clock = find_clock_units(after, machine=live_machine_for(Path(root)) if source is None else OFFLINE)
    holders = [c.unit for c in clock if c.holds]
    roles = classify(after, holders, {c.unit for c in clock})
    services, chosen_warnings, left = _choose_services(after, names, all_enabled, roles, strict)
    warnings.extend(chosen_warnings)
    if strict and wait is None:
        raise UsageError("--strict needs a wait unit to require, and there is none (see the warnings of a dry run)")
    dropin = (strict_dropin_text(wait) if strict and wait else DROPIN_TEXT).encode()
    for uid in services:
        path = f"/etc/systemd/system/{uid}.d/{DROPIN_NAME}"
        current = _read_or_none(src, path)
        if current == dropin:
            continue
        if current is None:
            changes.append(Change(path, "create", f"{uid}: wait for {TIME_SYNC}", dropin))
        else:
            changes.append(Change(path, "edit", f"{uid}: wait for {TIME_SYNC}", dropin, current))
    bounded = sorted(set(holders) | ({wait} if wait else set()))
    timeout_text = timeout_dropin_text(int(wait_timeout_s), _systemd_has_plus_prefix(src)).encode()
    for uid in bounded:
        path = f"/etc/systemd/system/{uid}.d/{TIMEOUT_DROPIN_NAME}"
        current = _read_or_none(src, path)
        if current == timeout_text:
            continue
        reason = f"{uid}: give up after {int(wait_timeout_s)} s without a time source"
        if current is None:
            changes.append(Change(path, "create", reason, timeout_text))
        else:
            changes.append(Change(path, "edit", reason, timeout_text, current))
    chrony_changes, chrony_warn = _chrony_changes(src, graph)
    changes.extend(chrony_changes)
    warnings.extend(chrony_warn)
    return FixPlan(str(root), tuple(changes), tuple(services), wait, tuple(warnings), tuple(left),
                   tuple(bounded), int(wait_timeout_s), strict)


def render_plan(plan: FixPlan) -> str:
    """The plan as a unified diff (``--dry-run`` output)."""
    out: list[str] = []
    for c in plan.changes:
        if c.action == "symlink":
            out.append(f"symlink {c.path} -> {c.target}    # {c.reason}\n")
            continue
        old = c.old.decode("utf-8", "replace").splitlines(keepends=True) if c.action == "edit" else []
        new = c.content.decode("utf-8", "replace").splitlines(keepends=True)
        a = c.path if c.action == "edit" else "/dev/null"
        out.append(f"# {c.reason}\n")
        out.extend(difflib.unified_diff(old, new, fromfile=a, tofile=c.path))
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
    for w in plan.warnings:
        out.append(f"warning: {w}\n")
    if not plan.changes:
        out.append("nothing to change\n")
    return "".join(out)


# -- writing ------------------------------------------------------------------------------


def _host_path(root: Path, path: str) -> Path:
    """Where in-tree ``path`` lives on this machine, its parent resolved inside the tree."""
    parent, name = posixpath.split(path)
    real_parent = resolve(RootSource(root), parent) or parent
    return root / real_parent.lstrip("/") / name


def _load_manifest(root: Path) -> dict[str, Any]:
    host = _host_path(root, MANIFEST_PATH)
    try:
        data = json.loads(host.read_text())
    except FileNotFoundError:
        return {"format": MANIFEST_FORMAT, "entries": []}
    except (OSError, ValueError) as exc:
        raise UnitFileError(f"unreadable fix manifest: {exc}", path=MANIFEST_PATH) from exc
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise UnitFileError("fix manifest has no entries list", path=MANIFEST_PATH)
    return data


def _atomic_write(host: Path, data: bytes, mode: int = 0o644, owner: tuple[int, int] | None = None) -> None:
    fd, tmp = tempfile.mkstemp(dir=host.parent, prefix=".vmcrash-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, host)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mkdirs(root: Path, path: str, entries: list[dict[str, Any]], known: set[str]) -> None:
    parts = [p for p in posixpath.dirname(path).split("/") if p]
    for i in range(1, len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        host = _host_path(root, d)
        if host.is_dir():
            continue
        host.mkdir(mode=0o755)
        if d not in known:
            entries.append({"path": d, "action": "mkdir"})
            known.add(d)


@dataclass
class FixResult:
    """What :func:`apply_fix` / :func:`undo_fix` did."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def apply_fix(plan: FixPlan) -> FixResult:
    """Write ``plan`` under its root and record it in the manifest.

    :raises StorageError: a write failed (what was written before is in the manifest).
    """
    root = Path(plan.root)
    manifest = _load_manifest(root)
    entries: list[dict[str, Any]] = manifest["entries"]
    known = {e.get("path") for e in entries if isinstance(e, dict)}
    result = FixResult(warnings=list(plan.warnings))
    try:
        for c in plan.changes:
            _mkdirs(root, c.path, entries, known)  # type: ignore[arg-type]
            host = _host_path(root, c.path)
            if c.action == "symlink":
                os.symlink(c.target, host)
                entries.append({"path": c.path, "action": "symlink", "target": c.target})
            elif c.action == "create":
                _atomic_write(host, c.content)
                entries.append({"path": c.path, "action": "create", "sha256": _sha(c.content)})
            elif c.action == "edit":
                st = os.stat(host)
                _atomic_write(host, c.content, st.st_mode & 0o7777, (st.st_uid, st.st_gid))
                prior = next((e for e in entries if e.get("path") == c.path and e.get("action") == "edit"), None)
                if prior is not None:
                    prior["sha256"] = _sha(c.content)
                else:
                    entries.append({"path": c.path, "action": "edit", "sha256": _sha(c.content),
                                    "original_b64": base64.b64encode(c.old).decode(),
                                    "mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid})
            result.written.append(c.path)
            known.add(c.path)
    except OSError as exc:
        raise StorageError(f"writing the fix failed: {exc.strerror}", path=str(exc.filename)) from exc
    finally:
        if result.written:
            _save_manifest(root, manifest, entries, known)
    if result.written and str(root) == "/" and Path("/run/systemd/system").is_dir():
        done = subprocess.run(["systemctl", "daemon-reload"], check=False, capture_output=True, text=True)
        if done.returncode != 0:
            result.warnings.append(f"systemctl daemon-reload failed: {done.stderr.strip()[:200]}")
    return result


def _save_manifest(root: Path, manifest: dict[str, Any], entries: list[dict[str, Any]], known: set[Any]) -> None:
    _mkdirs(root, MANIFEST_PATH, entries, known)
    manifest["entries"] = entries
    manifest["format"] = MANIFEST_FORMAT
    host = _host_path(root, MANIFEST_PATH)
    _atomic_write(host, (json.dumps(manifest, indent=1) + "\n").encode(), 0o600)


def undo_fix(root: str | Path = "/", *, dry_run: bool = False) -> FixResult:
    """Remove what the manifest records, restore edited files, then remove the manifest.

    :raises UsageError: there is no manifest (nothing to undo).
    """
    root = Path(root)
    host_manifest = _host_path(root, MANIFEST_PATH)
    if not host_manifest.exists():
        raise UsageError(f"{root}: no {MANIFEST_PATH}; nothing to undo")
    entries = _load_manifest(root)["entries"]
    result = FixResult()
    keep: list[dict[str, Any]] = []
    for e in reversed(entries):
        path, action = str(e.get("path", "")), e.get("action")
        if not path.startswith("/") or ".." in path.split("/"):
            result.warnings.append(f"manifest entry with a bad path {path!r}; ignored")
            continue
        host = _host_path(root, path)
        try:
            if action == "symlink":
                if host.is_symlink() and os.readlink(host) == e.get("target"):
                    if not dry_run:
                        host.unlink()
                    result.removed.append(path)
                elif host.is_symlink() or host.exists():
                    result.warnings.append(f"{path} changed since the fix; left alone")
                    keep.append(e)
            elif action == "create":
                if host.is_file() and not host.is_symlink() and _sha(host.read_bytes()) == e.get("sha256"):
                    if not dry_run:
                        host.unlink()
                    result.removed.append(path)
                elif host.exists():
                    result.warnings.append(f"{path} changed since the fix; left alone")
                    keep.append(e)
            elif action == "edit":
                if host.is_file() and _sha(host.read_bytes()) == e.get("sha256"):
                    if not dry_run:
                        _atomic_write(host, base64.b64decode(e["original_b64"]), int(e["mode"]),
                                      (int(e["uid"]), int(e["gid"])))
                    result.restored.append(path)
                else:
                    result.warnings.append(f"{path} changed since the fix; not restored")
                    keep.append(e)
            elif action == "mkdir":
                if path == posixpath.dirname(MANIFEST_PATH):
                    continue  # removed after the manifest itself
                if host.is_dir() and not any(host.iterdir()):
                    if not dry_run:
                        host.rmdir()
                    result.removed.append(path + "/")
                elif host.is_dir():
                    keep.append(e)
        except (OSError, KeyError, ValueError) as exc:
            result.warnings.append(f"{path}: {exc}")
            keep.append(e)
    if dry_run:
        return result
    if keep:
        manifest = {"format": MANIFEST_FORMAT, "entries": list(reversed(keep))}
        _atomic_write(host_manifest, (json.dumps(manifest, indent=1) + "\n").encode(), 0o600)
        result.warnings.append(f"{len(keep)} entries could not be undone; kept in {MANIFEST_PATH}")
    else:
        host_manifest.unlink()
        mdir = host_manifest.parent
        recorded = any(e.get("action") == "mkdir" and e.get("path") == posixpath.dirname(MANIFEST_PATH)
                       for e in entries)
        if recorded and mdir.is_dir() and not any(mdir.iterdir()):
            mdir.rmdir()
            result.removed.append(posixpath.dirname(MANIFEST_PATH) + "/")
        result.removed.append(MANIFEST_PATH)
    if str(root) == "/" and Path("/run/systemd/system").is_dir() and not dry_run:
        subprocess.run(["systemctl", "daemon-reload"], check=False, capture_output=True)
    return result


