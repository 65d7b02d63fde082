"""Which services are infrastructure that must never wait for the clock, and which are applications.

A guest that cannot reach a time source must still boot to a login prompt, bring its network up
and let the time daemon try: ordering any of that after ``time-sync.target`` turns "apps start on
a wrong clock" into "the guest is unreachable" (or, with a bounded wait, "unreachable for the
bound"). :func:`classify` sorts the services of a boot transaction into:

* ``login``: console and login (``getty@``, ``serial-getty@``, ``console-getty``,
  ``container-getty@``, ``getty-static``, ``systemd-logind``, ``systemd-user-sessions``, D-Bus);
* ``ssh``: an operator's way in; ordering it is an explicit opt-in (``--unit ssh.service``);
* ``agent``: the QEMU guest agent, the hypervisor's way in (vmcrash corrects the clock through it);
* ``time``: clock units and everything the units holding ``time-sync.target`` need (what they
  are ordered after or pull in, transitively) to reach a time source;
* ``network``: what ``network.target``, ``network-online.target``, ``nss-lookup.target`` and
  ``nss-user-lookup.target`` wait for (addresses, routes, name resolution);
* ``system``: systemd's own services (``systemd-*``), plumbing rather than applications;
* ``needed``: any other service one of the above is ordered after (delaying it delays them).

Everything else is an ``application``. Pure: a :class:`~vmcrash.guest.graph.BootGraph` in,
a mapping ``unit -> Role`` out.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from vmcrash.guest.graph import PULL_KINDS, TIME_SYNC, BootGraph
from vmcrash.guest.names import template_of

__all__ = ["AGENT_UNITS", "LOGIN_UNITS", "NETWORK_TARGETS", "SSH_UNITS", "Role", "RoleKind", "classify"]

#: Console and login services (templates by their ``foo@.service`` name).
LOGIN_UNITS = frozenset({
    "getty@.service", "serial-getty@.service", "console-getty.service", "container-getty@.service",
    "getty-static.service", "autovt@.service", "systemd-logind.service", "systemd-user-sessions.service",
    "dbus.service", "dbus-broker.service", "dbus-daemon.service", "plymouth-quit-wait.service",
    "plymouth-quit.service",
})
AGENT_UNITS = frozenset({"qemu-guest-agent.service", "qemu-ga.service", "qemu-ga@.service"})
SSH_UNITS = frozenset({"ssh.service", "sshd.service", "openssh.service", "openssh-server.service",
                       "dropbear.service"})
#: Targets whose prerequisites make the network and name resolution work.
NETWORK_TARGETS = ("network-pre.target", "network.target", "network-online.target", "nss-lookup.target",
                   "nss-user-lookup.target")


class RoleKind(enum.Enum):
    """What a service is for, as far as waiting for the clock goes (see the module docstring)."""

    LOGIN = "login"
    SSH = "ssh"
    AGENT = "agent"
    TIME = "time"
    NETWORK = "network"
    SYSTEM = "system"
    NEEDED = "needed"
    APPLICATION = "application"

    @property
    def infrastructure(self) -> bool:
        """True for every kind the fix never orders after time-sync.target by itself."""
        return self is not RoleKind.APPLICATION


@dataclass(frozen=True)
class Role:
    """The role of one service and why (``reason`` is one short clause for the fix's summary)."""

    unit: str
    kind: RoleKind
    reason: str


def _names(graph: BootGraph, uid: str) -> set[str]:
    unit = graph.units.get(uid)
    names = set(unit.names) if unit is not None else {uid}
    return names | {t for n in names if (t := template_of(n)) is not None}


def _closure(graph: BootGraph, starts: Iterable[str], scope: frozenset[str]) -> dict[str, str]:
    """Units in ``scope`` that ``starts`` are ordered after or pull in, transitively -> the start it serves."""
    seen: dict[str, str] = {}
    todo = deque((s, s) for s in starts if s in scope)
    while todo:
        uid, why = todo.popleft()
        if uid == TIME_SYNC:
            continue  # what comes after time-sync.target is not needed to reach it
        nexts = set(graph.edges(uid, "after"))
        if graph.units[uid].type != "target":
            # what it pulls in, but not through targets (a target pulls in a whole phase of the boot)
            for kind in PULL_KINDS:
                nexts |= {o for o in graph.edges(uid, kind) if not o.endswith(".target")}
        for other in sorted(nexts):
            if other in scope and other not in seen:
                seen[other] = why
                todo.append((other, why))
    return seen


def _waited_for(graph: BootGraph, starts: Iterable[str], scope: frozenset[str]) -> dict[str, str]:
    """Units in ``scope`` that ``starts`` are (transitively) ordered after -> the start that waits."""
    seen: dict[str, str] = {}
    todo = deque((s, s) for s in starts if s in scope)
    while todo:
        uid, why = todo.popleft()
        for other in sorted(graph.edges(uid, "after")):
            if other in scope and other not in seen:
                seen[other] = why
                todo.append((other, why))
    return seen


def classify(graph: BootGraph, holders: Iterable[str] = (), clock_units: Iterable[str] = ()) -> dict[str, Role]:
    """The :class:`Role` of every service of the boot transaction.

    :param holders: the units that hold time-sync.target until the clock is synchronized (wait units).
    :param clock_units: every unit that keeps, steps or waits for the clock (daemons included).
    """
    t = graph.transaction
    services = sorted(u for u in t if graph.units[u].type == "service")
    roles: dict[str, Role] = {}
    clock = set(clock_units)
    for uid in services:
        names = _names(graph, uid)
        if names & LOGIN_UNITS:
            roles[uid] = Role(uid, RoleKind.LOGIN, "console and login")
        elif names & AGENT_UNITS:
            roles[uid] = Role(uid, RoleKind.AGENT, "the hypervisor's way in (the clock is corrected through it)")
        elif names & SSH_UNITS:
            roles[uid] = Role(uid, RoleKind.SSH, "an operator's way in (order it explicitly with --unit)")
        elif uid in clock:
            roles[uid] = Role(uid, RoleKind.TIME, "keeps, steps or waits for the clock")
    time_starts = [h for h in holders if h in t] + sorted(clock & t)
    for uid, why in _closure(graph, time_starts, t).items():
        if uid in roles or graph.units[uid].type != "service":
            continue
        roles[uid] = Role(uid, RoleKind.TIME, f"{why} needs it to reach a time source")
    for uid, why in _waited_for(graph, NETWORK_TARGETS, t).items():
        if uid in roles or graph.units[uid].type != "service":
            continue
        roles[uid] = Role(uid, RoleKind.NETWORK, f"{why} waits for it (network, name resolution)")
    for uid in services:
        if uid not in roles and uid.startswith("systemd-"):
            roles[uid] = Role(uid, RoleKind.SYSTEM, "systemd's own service")
    infra = [u for u, r in roles.items() if r.kind is not RoleKind.SYSTEM]
    for uid, why in _waited_for(graph, infra, t).items():
        if uid in roles or graph.units[uid].type != "service":
            continue
        roles[uid] = Role(uid, RoleKind.NEEDED, f"{why} ({roles[why].kind.value}) is ordered after it")
    for uid in services:
        roles.setdefault(uid, Role(uid, RoleKind.APPLICATION, "application service"))
    return roles
