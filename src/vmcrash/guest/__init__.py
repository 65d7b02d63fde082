"""Inside the guest: prove that services start only after the clock is stepped (stdlib only).

After a freeze a guest boots with a wrong clock; a time daemon steps it a few seconds later, but
nothing makes the applications wait unless ``time-sync.target`` is pulled in, held by a unit that
waits for synchronisation, and the services are ordered after it. This package models systemd's
units and ordering graph from the files alone (a live system or an image under ``--root``), audits
that chain and fixes it with drop-ins it can undo.

It imports nothing outside the standard library (and :mod:`vmcrash.errors`), so a guest can run
it from a copied directory: ``python3 -m vmcrash.guest audit``.

Infrastructure (console, login, network, the time daemon and what it needs, the guest agent, ssh)
is never ordered after the clock (:mod:`vmcrash.guest.roles`), and every wait for it is bounded
(:mod:`vmcrash.guest.bounds`).

Public surface: :func:`audit` -> :class:`AuditReport` (its :class:`Finding` and
:class:`ServiceVerdict` items), :func:`load_graph`; :func:`plan_fix` -> :class:`FixPlan`,
:func:`render_plan`, :func:`apply_fix`, :func:`undo_fix`; for other tools :class:`UnitLoader` ->
:class:`Unit`, :class:`BootGraph` of :class:`Edge`, and the sources (:class:`UnitSource`,
:class:`RootSource`, :class:`MemorySource`, :class:`Link`).
"""

from __future__ import annotations

from vmcrash.guest.audit import audit, load_graph
from vmcrash.guest.findings import AuditReport, Finding, ServiceVerdict
from vmcrash.guest.fix import FixPlan, apply_fix, plan_fix, render_plan, undo_fix
from vmcrash.guest.graph import BootGraph, Edge
from vmcrash.guest.sources import Link, MemorySource, RootSource, UnitSource
from vmcrash.guest.units import Unit, UnitLoader

__all__ = [
    "AuditReport",
    "BootGraph",
    "Edge",
    "Finding",
    "FixPlan",
    "Link",
    "MemorySource",
    "RootSource",
    "ServiceVerdict",
    "Unit",
    "UnitLoader",
    "UnitSource",
    "apply_fix",
    "audit",
    "load_graph",
    "plan_fix",
    "render_plan",
    "undo_fix",
]
