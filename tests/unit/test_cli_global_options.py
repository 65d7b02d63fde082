"""Global options (``--config``, ``-v``) are accepted after the verb too, on every verb."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vmcrash.cli.main import VERBS

SUBCOMMANDS = {"clock": ["check"], "lab": ["build"], "guest": ["audit"]}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmcrash.cli.main", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("verb", list(VERBS))
def test_config_and_verbose_after_the_verb_are_accepted(verb: str, tmp_path: Path) -> None:
    cfg = tmp_path / "vmcrash.toml"
    cfg.write_text('dump_dir = "/tmp/x"\n')
    words = [verb, *SUBCOMMANDS.get(verb, [])]
    after = run(*words, "--config", str(cfg), "-v", "--help")
    assert after.returncode == 0, after.stderr
    assert "No such option" not in after.stderr


@pytest.mark.parametrize("verb", ["watch", "dump", "doctor", "list", "show"])
def test_config_after_the_verb_is_the_one_read(verb: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("nonsense_key = 1\n")
    args = {"dump": ["web1"], "show": ["1"]}.get(verb, [])
    before = run("--config", str(bad), verb, *args)
    after = run(verb, *args, "--config", str(bad))
    for res in (before, after):
        assert res.returncode == 2, res.stderr
        assert res.stderr.strip().splitlines() == [f"error: {bad}: nonsense_key: unknown key (known: "
                                                   + res.stderr.split("(known: ", 1)[1].strip()]


def test_guest_audit_keeps_its_own_verbose_flag() -> None:
    res = run("guest", "audit", "--help")
    assert "Every edge chain" in res.stdout
