"""Which libvirt lifecycle events end a freeze of the guest's vCPUs (and so call for a clock resync).

A guest whose vCPUs stop while the world goes on comes back with its clock behind by that time.
libvirt tells us when a freeze begins and when it ends, but through several event pairs, which this
module folds into one pure state machine per domain (:func:`step`). The sequences, as seen on the
lab (libvirt 9.0, QEMU 7.2; ``tests/lab/test_freeze_resync_lab.py`` replays them on a real guest):

========================  ====================================================================
freeze                    events (``event/detail``)
========================  ====================================================================
pause / resume            ``suspended/paused`` … ``resumed/unpaused``
managedsave + start,      ``suspended/paused``, ``stopped/saved`` … ``started/restored``,
save + restore            ``resumed/from-snapshot`` (libvirt 9.0 names the restore's resume so)
restore ``--paused``      ``started/restored``, ``suspended/restored`` … ``resumed/unpaused``
snapshot revert (memory)  ``stopped/from-snapshot``, ``started/from-snapshot``,
                          ``resumed/from-snapshot`` (or ``suspended/from-snapshot`` when paused)
migration (destination)   ``started/migrated`` (paused) … ``resumed/migrated`` (or ``postcopy``)
guest S3 suspend          ``pmsuspended/memory`` … ``started/wakeup``
guest S4 (hibernation)    ``pmsuspended/disk``, ``stopped/…`` … ``started/booted``
========================  ====================================================================

The decision is made on the first event that says the guest runs again; the ``resumed`` that
libvirt sends right after a ``started/restored`` or ``started/from-snapshot`` belongs to the same
freeze and is absorbed, so one freeze gives one resync. Only plain pauses have a threshold
(:attr:`FreezeKind.PAUSE`: libvirt pauses guests for fractions of a second itself, e.g. while it
takes a snapshot); a restored image or a reverted snapshot may be of any age, so those are always
resynced. Everything here is pure: the caller supplies the time (host wall clock, ns) and keeps
the per-domain :class:`Phase`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "FreezeKind",
    "Phase",
    "Resync",
    "State",
    "step",
]


class FreezeKind(enum.Enum):
    """Why the guest's clock stood still; the value is the ``reason`` recorded in ``clock_syncs``."""

    PAUSE = "resume"
    RESTORE = "restore"
    SNAPSHOT = "snapshot"
    MIGRATION = "migration"
    PM_SUSPEND = "pm-wakeup"
    HOST_SLEEP = "host-resume"


class Phase(enum.Enum):
    """Where a domain is, as far as its clock is concerned."""

    RUNNING = "running"
    #: vCPUs stopped (paused, saved, suspended, migrating in): a resync is owed when it runs again.
    FROZEN = "frozen"
    #: a freeze just ended with a ``started/...`` event and its resync was asked for; the
    #: ``resumed/...`` libvirt may send next is part of the same freeze.
    RESYNC_ASKED = "resync-asked"
    #: shut off, crashed, destroyed: a fresh boot reads the clock anew (crashes have their own resync).
    STOPPED = "stopped"


@dataclass(frozen=True)
class State:
    """A domain's clock phase; for :attr:`Phase.FROZEN` the freeze's kind and start.

    :ivar since_ns: host wall clock (ns) when the freeze began, ``None`` when not seen (a saved image
        restored after a host reboot, a snapshot of any age).
    """

    phase: Phase = Phase.RUNNING
    kind: FreezeKind | None = None
    since_ns: int | None = None


@dataclass(frozen=True)
class Resync:
    """A freeze ended: resync the guest clock. ``frozen_s`` is ``None`` when the start was not seen.

    :ivar event: the event that ended it, ``"event/detail"`` (recorded with the correction).
    """

    kind: FreezeKind
    event: str
    frozen_s: float | None

    @property
    def reason(self) -> str:
        """The ``clock_syncs.reason`` of this correction."""
        return self.kind.value


_PAUSE_DETAILS = {"paused", "ioerror", "watchdog", "api-error"}
_MIGRATION_DETAILS = {"migrated", "postcopy", "postcopy-failed"}


def _frozen(state: State, kind: FreezeKind, now_ns: int | None, *, continues: bool = False) -> State:
    """Frozen by ``kind``; an ongoing freeze keeps its start (a save begins with a pause).

    ``continues``: the event goes on with the freeze whose end was just announced (``started/restored``
    followed by ``suspended/restored`` for a restore ``--paused``): keep that freeze's kind and start.
    """
    if state.phase is Phase.FROZEN:
        # A pause that turns into a save is a save; a pause inside a longer freeze does not rename it.
        return State(Phase.FROZEN, state.kind if kind is FreezeKind.PAUSE else kind, state.since_ns)
    if state.phase is Phase.RESYNC_ASKED and continues:
        return State(Phase.FROZEN, state.kind, state.since_ns)
    return State(Phase.FROZEN, kind, now_ns)


def _ended(state: State, kind: FreezeKind, event: str, now_ns: int,
           threshold_s: float) -> tuple[State, Resync | None]:
    frozen_s = (now_ns - state.since_ns) / 1e9 if state.since_ns is not None else None
    if kind is FreezeKind.PAUSE and (frozen_s is None or frozen_s < threshold_s):
        return State(Phase.RUNNING), None
    return State(Phase.RUNNING), Resync(kind, event, None if frozen_s is None else round(frozen_s, 3))


def step(state: State, event: str, detail: str, now_ns: int, *,
         pause_threshold_s: float = 2.0) -> tuple[State, Resync | None]:
    """Fold one lifecycle event (names of :func:`vmcrash.host.events.lifecycle_names`) into ``state``.

    :param now_ns: host wall clock (ns) when the event arrived.
    :param pause_threshold_s: plain pauses shorter than this need no resync.
    :returns: the new state, and a :class:`Resync` when this event ended a freeze that needs one
        (``None`` otherwise). Unknown events and details leave the state unchanged.
    """
    name = f"{event}/{detail}"
    if event == "suspended":
        if detail in _MIGRATION_DETAILS:
            return _frozen(state, FreezeKind.MIGRATION, now_ns), None
        if detail == "restored":
            return _frozen(state, FreezeKind.RESTORE, now_ns, continues=True), None
        if detail == "from-snapshot":
            return _frozen(state, FreezeKind.SNAPSHOT, now_ns, continues=True), None
        if detail in _PAUSE_DETAILS:
            return _frozen(state, FreezeKind.PAUSE, now_ns), None
        return state, None
    if event == "stopped":
        if detail == "saved":
            return _frozen(state, FreezeKind.RESTORE, now_ns), None
        if detail == "from-snapshot":
            # The snapshot's memory is of its own age: how long ago is not known here.
            return State(Phase.FROZEN, FreezeKind.SNAPSHOT, None), None
        if state.phase is Phase.FROZEN and state.kind is FreezeKind.PM_SUSPEND:
            return state, None  # hibernated (pmsuspended/disk): QEMU exits, the image boots later
        return State(Phase.STOPPED), None
    if event == "pmsuspended":
        return _frozen(state, FreezeKind.PM_SUSPEND, now_ns), None
    if event == "started":
        if detail == "restored":
            new, resync = _ended(state, FreezeKind.RESTORE, name, now_ns, pause_threshold_s)
        elif detail == "from-snapshot":
            new, resync = _ended(state, FreezeKind.SNAPSHOT, name, now_ns, pause_threshold_s)
        elif detail == "wakeup":
            new, resync = _ended(state, FreezeKind.PM_SUSPEND, name, now_ns, pause_threshold_s)
        elif detail == "migrated":
            # Incoming migration: the guest stays paused until resumed/migrated.
            return State(Phase.FROZEN, FreezeKind.MIGRATION, state.since_ns), None
        elif detail == "booted" and state.phase is Phase.FROZEN and state.kind is FreezeKind.PM_SUSPEND:
            new, resync = _ended(state, FreezeKind.PM_SUSPEND, name, now_ns, pause_threshold_s)
        else:
            return State(Phase.RUNNING), None
        assert resync is not None
        return State(Phase.RESYNC_ASKED, resync.kind, state.since_ns), resync
    if event == "resumed":
        if state.phase is Phase.RESYNC_ASKED:
            return State(Phase.RUNNING), None  # the same freeze's second "it runs" event
        if state.phase is Phase.FROZEN and state.kind is not None:
            kind = state.kind
            if detail in _MIGRATION_DETAILS:
                kind = FreezeKind.MIGRATION
            elif detail == "from-snapshot":
                kind = FreezeKind.SNAPSHOT if kind is FreezeKind.PAUSE else kind
            return _ended(state, kind, name, now_ns, pause_threshold_s)
        # A resume whose freeze we did not see begin: only these details say what it was.
        if detail in _MIGRATION_DETAILS:
            return State(Phase.RUNNING), Resync(FreezeKind.MIGRATION, name, None)
        if detail == "from-snapshot":
            return State(Phase.RUNNING), Resync(FreezeKind.SNAPSHOT, name, None)
        return State(Phase.RUNNING), None
    if event in ("crashed", "undefined"):
        return State(Phase.STOPPED), None
    return state, None
