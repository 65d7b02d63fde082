"""Configuration: defaults, merging of domain policies, and errors that name file and key."""

from __future__ import annotations

from collections.abc import Callable
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
    assert cfg.policy_for("anything").recovery == "auto"  # restart when an image is held, else reset
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


Read = Callable[[Config], tuple[float, ...]]

# Keys renamed to say their unit (issue 11): (TOML section, old key, new key, how to read the value).
RENAMES = [
    ("", "min_free_mb", "min_free_mib", lambda c: (c.min_free_mib, c.min_free_bytes)),
    ("retention", "max_total_gb", "max_total_gib", lambda c: (c.retention.max_total_gib,
                                                              c.retention.max_total_bytes)),
    ("staging", "ram_headroom_mb", "ram_headroom_mib", lambda c: (c.staging.ram_headroom_mib,)),
    ("staging", "hold_headroom_mb", "hold_headroom_mib", lambda c: (c.staging.hold_headroom_mib,)),
]
# 3 MiB / 3 GiB in bytes, for the settings that have a byte form
EXPECTED = {"min_free_mb": (3, 3 * 1024 * 1024), "max_total_gb": (3, 3 * 1024**3),
            "ram_headroom_mb": (3,), "hold_headroom_mb": (3,)}


def _doc(section: str, *lines: str) -> str:
    return (f"[{section}]\n" if section else "") + "".join(f"{line}\n" for line in lines)


@pytest.mark.parametrize("section, old, new, read", RENAMES, ids=[r[1] for r in RENAMES])
def test_old_unit_key_is_read_with_one_deprecation_line(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                        section: str, old: str, new: str, read: Read) -> None:
    p = _write(tmp_path, _doc(section, f"{old} = 3"))
    with caplog.at_level("INFO", logger="vmcrash.config"):
        cfg = load_config(p)
    assert read(cfg) == EXPECTED[old]
    records = [r for r in caplog.records if r.name == "vmcrash.config"]
    assert [r.levelname for r in records] == ["WARNING"]
    lines = [r.getMessage() for r in records]
    assert str(p) in lines[0] and old in lines[0] and "deprecated" in lines[0] and new in lines[0]


@pytest.mark.parametrize("section, old, new, read", RENAMES, ids=[r[2] for r in RENAMES])
def test_new_unit_key_is_read_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                      section: str, old: str, new: str, read: Read) -> None:
    with caplog.at_level("INFO", logger="vmcrash.config"):
        cfg = load_config(_write(tmp_path, _doc(section, f"{new} = 3")))
    assert read(cfg) == EXPECTED[old]
    assert [r for r in caplog.records if r.name == "vmcrash.config"] == []


@pytest.mark.parametrize("section, old, new, read", RENAMES, ids=[r[1] for r in RENAMES])
def test_old_and_new_unit_key_together_are_refused(tmp_path: Path, section: str, old: str, new: str,
                                                   read: Read) -> None:
    p = _write(tmp_path, _doc(section, f"{new} = 3", f"{old} = 3"))
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    key = f"{section}.{old}" if section else old
    assert msg.startswith(f"{p}: {key}: ") and new in msg and "\n" not in msg
    assert err.value.path == str(p) and err.value.key == key


def test_old_unit_key_errors_name_the_key_as_written(tmp_path: Path) -> None:
    p = _write(tmp_path, "[staging]\nram_headroom_mb = -1\n")
    with pytest.raises(ConfigError, match=r"staging\.ram_headroom_mb: must not be negative"):
        load_config(p)
    p = _write(tmp_path, 'min_free_mb = "lots"\n')
    with pytest.raises(ConfigError, match=r": min_free_mb: expected int"):
        load_config(p)


def test_default_sizes_are_unchanged() -> None:
    cfg = Config()
    assert (cfg.min_free_mib, cfg.retention.max_total_gib, cfg.staging.ram_headroom_mib,
            cfg.staging.hold_headroom_mib) == (1024, 0, 2048, 1024)


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("where", ["README.md", "packaging/vmcrash.toml"])
def test_documented_configurations_load_without_old_key_names(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                               where: str) -> None:
    text = (ROOT / where).read_text()
    if where.endswith(".md"):
        text = text.split("\n```toml\n", 1)[1].split("\n```", 1)[0]
    with caplog.at_level("INFO", logger="vmcrash.config"):
        load_config(_write(tmp_path, text))
    assert [r.getMessage() for r in caplog.records if r.name == "vmcrash.config"] == []


def test_split_host_port_takes_ascii_ports_only() -> None:
    from vmcrash.config import split_host_port

    assert split_host_port("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert split_host_port("[::1]:9465") == ("::1", 9465)
    assert split_host_port(":9464") == ("", 9464)
    for bad in ("127.0.0.1", "h:0", "h:65536", "h:²", "h:٣٣", "h:" + "1" * 5000, "h:-1", "h: 80"):
        assert split_host_port(bad) is None, bad
