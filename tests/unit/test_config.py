"""Configuration: defaults, merging of domain policies, and errors that name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmcrash.config import Config, load_config
from vmcrash.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "vmcrash.toml"
    p.write_text(text)
    return p


def test_only_dump_dir_works(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, 'dump_dir = "/srv/dumps"\n'))
    assert cfg.dump_dir == Path("/srv/dumps")
    assert cfg.libvirt_uri == "qemu:///system"
    assert cfg.policy_for("anything").recovery == "restart"
    assert cfg.max_parallel_dumps >= 1


def test_missing_default_file_means_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VMCRASH_CONFIG", raising=False)
    monkeypatch.setattr("vmcrash.config.DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    assert load_config() == Config()


def test_env_variable_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    p = _write(tmp_path, 'dump_dir = "/x"\n')
    monkeypatch.setenv("VMCRASH_CONFIG", str(p))
    assert load_config().dump_dir == Path("/x")


def test_policy_merge_globs_then_exact(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, """
[domains."*"]
recovery = "reset"
[domains."db-*"]
format = "kdump-zlib"
[domains."db-main"]
recovery = "preserve"
[domains."web-*"]
watch = false
"""))
    assert cfg.policy_for("db-main").recovery == "preserve"
    assert cfg.policy_for("db-main").format == "kdump-zlib"
    assert cfg.policy_for("db-2").recovery == "reset"
    assert cfg.policy_for("web-1").watch is False
    assert cfg.policy_for("other").format == "elf"


@pytest.mark.parametrize("text, key, reason", [
    ('dump_dirr = "/x"', "dump_dirr", "unknown key"),
    ("dump_dir = 5", "dump_dir", "expected str"),
    ('dump_dir = "relative/path"', "dump_dir", "absolute"),
    ("max_parallel_dumps = 0", "max_parallel_dumps", "between 1 and 64"),
    ("max_parallel_dumps = true", "max_parallel_dumps", "expected a number"),
    ('catalog = "postgres://db/x"', "catalog", "unsupported database URL"),
    ('[domains."a"]\nrecovery = "reboot"', "recovery", "unknown recovery action"),
    ('[domains."a"]\nformat = "zip"', "format", "unknown dump format"),
    ('[domains."a"]\ncolour = "red"', "colour", "unknown key"),
    ("[retention]\nmax_dumps_per_domain = -1", "retention.max_dumps_per_domain", "negative"),
    ('[crash_loop]\nfallback = "explode"', "crash_loop.fallback", "unknown action"),
    ("this is not toml", None, "TOML syntax error"),
])
def test_errors_name_file_key_and_reason(tmp_path: Path, text: str, key: str | None, reason: str) -> None:
    p = _write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg and reason in msg
    if key:
        assert key in msg


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


def test_sqlite_url(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, 'catalog = "sqlite:////var/x.db"\n'))
    assert cfg.catalog_path == Path("/var/x.db")


def test_lab_domains_are_watched_only_by_exact_name(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, '[domains."*"]\nwatch = true\n[domains."vmcrash-lab-1-1-abcd"]\nwatch = true\n'))
    assert cfg.watches("web1")
    assert not cfg.watches("vmcrash-lab-2-1-ffff")
    assert cfg.watches("vmcrash-lab-1-1-abcd")
