"""The crash state machine's table (pure)."""

from __future__ import annotations

import pytest

from vmcrash.store.states import FINAL, LEGACY, RESUME, TRANSITIONS, UNFINISHED, CrashState, can_move, parse_state

S = CrashState


def test_the_happy_path_is_allowed_step_by_step() -> None:
    path = [S.EVENT, S.CAPTURING, S.CAPTURED, S.RECOVERING, S.RECOVERED, S.CLOCK, S.TRIAGED, S.DONE]
    for old, new in zip(path, path[1:]):
        assert can_move(old, new), (old, new)


def test_final_states_never_move_and_every_unfinished_state_can_fail_or_be_lost() -> None:
    for state in FINAL:
        assert TRANSITIONS[state] == frozenset()
    for state in UNFINISHED:
        assert can_move(state, S.FAILED) and can_move(state, S.LOST)
        # every unfinished state has a way forward, and reconciliation knows what to do with it
        assert TRANSITIONS[state] - {S.FAILED, S.LOST}
        assert (state, True) in RESUME and (state, False) in RESUME
    assert set(TRANSITIONS) == set(CrashState)


def test_no_going_back_past_the_recovery() -> None:
    assert not can_move(S.RECOVERED, S.CAPTURING)
    assert not can_move(S.TRIAGED, S.EVENT)
    assert not can_move(S.DONE, S.FAILED)


def test_legacy_names_map_forward() -> None:
    assert parse_state("detected") is S.EVENT and parse_state("dumping") is S.CAPTURING
    assert parse_state("dumped") is S.CAPTURED and parse_state("done") is S.DONE
    assert set(LEGACY.values()) <= set(CrashState)
    with pytest.raises(ValueError):
        parse_state("exploded")
