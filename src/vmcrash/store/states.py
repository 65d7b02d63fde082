"""The life of one crash as an explicit state machine: states, the one transition table, what resumes what.

A crash row moves forward only along :data:`TRANSITIONS`::

    event ──> capturing ──> captured ──> recovering ──> recovered ──> clock ──> triaged ──> done
      │           │                          ▲              │                      ▲
      │           └── (capture failed) ──────┤              └── (not running) ─────┘
      └────────────── (dump skipped) ────────┘
    any unfinished state ──> failed | lost        event ──> skipped (nothing left to handle)

* ``event``: a panic is known (libvirt event, reconcile at start, a manual dump); a row exists.
* ``capturing``: the dump is being taken (streamed, written by libvirt, or the image held by fd).
* ``captured``: the capture is complete — a complete temp file, or a held image with its CPU state.
* ``recovering`` / ``recovered``: the policy's action is being / has been applied.
* ``clock``: the guest runs again and its clock is being corrected.
* ``triaged``: the dump is final-named with its sidecar, triage recorded; only bookkeeping is left.
* final: ``done`` (handled; a dump may have been skipped on purpose, see ``skip_reason``),
  ``skipped`` (nothing to handle: the guest was not panicked any more), ``failed`` (something went
  wrong; the guest was still recovered where possible, see ``error``), ``lost`` (what was captured
  could not be kept — e.g. a held image when the daemon was killed — and says so).

Reconciliation (after a restart) reads :data:`RESUME` to decide, per unfinished state, whether the
handling can go on from where it stopped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["CrashState", "CompactState", "StateChange", "InvalidTransition", "TRANSITIONS", "FINAL", "UNFINISHED",
           "LEGACY", "RESUME", "COMPACT_OPEN", "can_move", "parse_state"]


class CrashState(enum.StrEnum):
    """One crash's handling state (the ``crashes.state`` column holds the value)."""

    EVENT = "event"
    CAPTURING = "capturing"
    CAPTURED = "captured"
    RECOVERING = "recovering"
    RECOVERED = "recovered"
    CLOCK = "clock"
    TRIAGED = "triaged"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"
    LOST = "lost"


S = CrashState

#: The final states: nothing more happens to such a row.
FINAL: frozenset[CrashState] = frozenset({S.DONE, S.SKIPPED, S.FAILED, S.LOST})
#: States of a crash whose handling has not finished (a killed daemon's successor resumes them).
UNFINISHED: frozenset[CrashState] = frozenset(set(S) - FINAL)

#: The one transition table: state -> the states it may move to. Any unfinished state may also end
#: ``failed`` or ``lost``; a resumed handling may restart a row at ``event`` (same row, attempts + 1).
TRANSITIONS: dict[CrashState, frozenset[CrashState]] = {
    S.EVENT: frozenset({S.EVENT, S.CAPTURING, S.RECOVERING, S.SKIPPED}),
    S.CAPTURING: frozenset({S.EVENT, S.CAPTURED, S.RECOVERING}),
    # captured/recovering -> done: reconciliation made an interrupted handling's complete capture final
    S.CAPTURED: frozenset({S.EVENT, S.RECOVERING, S.DONE}),
    S.RECOVERING: frozenset({S.EVENT, S.RECOVERING, S.RECOVERED, S.DONE}),
    S.RECOVERED: frozenset({S.CLOCK, S.TRIAGED, S.DONE}),
    S.CLOCK: frozenset({S.TRIAGED, S.DONE}),
    S.TRIAGED: frozenset({S.DONE}),
    S.DONE: frozenset(),
    S.SKIPPED: frozenset(),
    S.FAILED: frozenset(),
    S.LOST: frozenset(),
}
for _state in UNFINISHED:
    TRANSITIONS[_state] = TRANSITIONS[_state] | {S.FAILED, S.LOST}

#: What reconciliation does with an interrupted row, by state and by whether the guest is still
#: panicked (:mod:`vmcrash.capture.reconcile` reads this table and nothing else):
#:
#: * ``rehandle``: the guest is still panicked and nothing was kept: run the handling again on the
#:   same row (attempts + 1) — a capture that had not been recovered from is simply taken again;
#: * ``finalize``: the guest runs again (or is gone); a complete capture may exist: make it final
#:   with its sidecar and close the row ``done``, else close it ``failed`` (``lost`` for a held image
#:   that died with the daemon);
#: * ``recover``: the recovery was interrupted: a guest a ``restart`` left shut off (killed between
#:   its destroy and its start) is started, then as ``finalize``;
#: * ``finish``: the dump is final already, only bookkeeping was left: close the row ``done``;
#: * ``close``: nothing was captured and the guest is not panicked any more: close the row ``failed``.
RESUME: dict[tuple[CrashState, bool], str] = {
    (S.EVENT, True): "rehandle",
    (S.EVENT, False): "close",
    (S.CAPTURING, True): "rehandle",
    (S.CAPTURING, False): "close",
    (S.CAPTURED, True): "rehandle",
    (S.CAPTURED, False): "finalize",
    (S.RECOVERING, True): "rehandle",
    (S.RECOVERING, False): "recover",
    (S.RECOVERED, True): "finalize",
    (S.RECOVERED, False): "finalize",
    (S.CLOCK, True): "finalize",
    (S.CLOCK, False): "finalize",
    (S.TRIAGED, True): "finish",
    (S.TRIAGED, False): "finish",
}

#: Names older catalogues (schema < 4) and older code used, mapped to today's states.
LEGACY: dict[str, CrashState] = {
    "detected": S.EVENT,
    "dumping": S.CAPTURING,
    "held": S.CAPTURED,
    "dumped": S.CAPTURED,
}


def parse_state(value: str) -> CrashState:
    """The state named ``value`` (legacy names accepted). :raises ValueError: unknown name."""
    legacy = LEGACY.get(value)
    return legacy if legacy is not None else CrashState(value)


def can_move(old: CrashState, new: CrashState) -> bool:
    """Whether the table allows ``old`` → ``new``. Pure."""
    return new in TRANSITIONS[old]


class CompactState(enum.StrEnum):
    """A finished dump's background compaction (the ``crashes.compact_state`` column)."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING_SPACE = "waiting-space"
    DONE = "done"
    FAILED = "failed"


#: Compaction states that still have work to do (resumed at start, scheduled after a crash).
COMPACT_OPEN: frozenset[CompactState] = frozenset({CompactState.PENDING, CompactState.RUNNING,
                                                   CompactState.WAITING_SPACE})


@dataclass(frozen=True)
class StateChange:
    """One committed move of a crash row, as observers (metrics, notifications) see it."""

    crash_id: int
    old: CrashState
    new: CrashState

    @property
    def final(self) -> bool:
        return self.new in FINAL


class InvalidTransition(ValueError):
    """A move the transition table does not allow (a bug in the caller, never the guest's input)."""
