"""Loading units like systemd: precedence, masks, aliases, templates, drop-ins, .wants; on fakes and on disk."""

from __future__ import annotations

import os
from pathlib import Path

from _guestsys import ETC, LIB, system, write_tree

from vmcrash.guest.sources import Link, MemorySource, RootSource, resolve
from vmcrash.guest.units import UnitLoader


def loader(files: dict) -> UnitLoader:  # type: ignore[type-arg]
    return UnitLoader(MemorySource(files))


def test_etc_overrides_lib_and_run_sits_between() -> None:
    ld = loader({f"{LIB}/a.service": "[Unit]\nDescription=lib\n",
                 f"{ETC}/a.service": "[Unit]\nDescription=etc\n",
                 "/run/systemd/system/b.service": "[Unit]\nDescription=run\n",
                 f"{LIB}/b.service": "[Unit]\nDescription=lib\n"})
    assert ld.load("a.service").last("Unit", "Description") == "etc"
    assert ld.load("a.service").fragment == f"{ETC}/a.service"
    assert ld.load("b.service").last("Unit", "Description") == "run"


def test_masks_by_dev_null_link_and_empty_file() -> None:
    ld = loader({f"{LIB}/a.service": "[Unit]\n", f"{ETC}/a.service": Link("/dev/null"),
                 f"{LIB}/b.service": ""})
    assert ld.load("a.service").load_state == "masked"
    assert ld.load("b.service").load_state == "masked"
    assert ld.load("c.service").load_state == "not-found"


def test_alias_symlinks_merge_into_the_target_unit() -> None:
    ld = loader({f"{LIB}/ssh.service": "[Unit]\nDescription=ssh\n",
                 f"{ETC}/sshd.service": Link(f"{LIB}/ssh.service"),
                 f"{LIB}/runlevel3.target": Link("multi-user.target"),
                 f"{LIB}/multi-user.target": "[Unit]\n"})
    sshd = ld.load("sshd.service")
    assert sshd.id == "ssh.service"
    assert set(sshd.names) == {"ssh.service", "sshd.service"}
    assert ld.load("ssh.service") is sshd
    assert ld.resolve_name("runlevel3.target") == "multi-user.target"


def test_template_instances_use_the_template_file_and_its_dropins() -> None:
    ld = loader({f"{LIB}/getty@.service": "[Unit]\nAfter=dev-%i.device\n[Install]\nWantedBy=getty.target\n",
                 f"{LIB}/autovt@.service": Link("getty@.service"),
                 f"{ETC}/getty@.service.d/10-all.conf": "[Unit]\nAfter=all.target\n",
                 f"{ETC}/getty@tty1.service.d/20-one.conf": "[Unit]\nAfter=one.target\n"})
    tty1 = ld.load("getty@tty1.service")
    assert tty1.fragment == f"{LIB}/getty@.service"
    assert set(tty1.names) == {"getty@tty1.service", "autovt@tty1.service"}
    assert [d.name for d in tty1.deps_of("after")] == ["dev-tty1.device", "all.target", "one.target"]
    assert ld.load("autovt@tty2.service").id == "getty@tty2.service"
    # [Install] is install information only
    assert not tty1.deps_of("wants") and tty1.install("WantedBy") == ["getty.target"]


def test_dropins_sorted_by_name_across_dirs_same_name_overrides_and_masks() -> None:
    ld = loader({f"{LIB}/a-b-c.service": "[Service]\nType=simple\n",
                 f"{LIB}/a-b-c.service.d/10-lib.conf": "[Service]\nType=forking\n",
                 f"{ETC}/a-b-c.service.d/10-lib.conf": "[Service]\nType=notify\n",
                 "/run/systemd/system/a-b-c.service.d/05-run.conf": "[Unit]\nAfter=run.target\n",
                 f"{LIB}/service.d/00-all.conf": "[Unit]\nAfter=every.target\n",
                 f"{LIB}/a-.service.d/50-prefix.conf": "[Unit]\nAfter=prefix.target\n",
                 f"{ETC}/a-b-c.service.d/60-masked.conf": Link("/dev/null"),
                 f"{LIB}/a-b-c.service.d/60-masked.conf": "[Unit]\nAfter=masked.target\n",
                 f"{LIB}/a-b-c.service.d/README": "not a conf file\n"})
    unit = ld.load("a-b-c.service")
    assert [os.path.basename(p) for p in unit.dropins] == ["00-all.conf", "05-run.conf", "10-lib.conf",
                                                          "50-prefix.conf"]
    assert unit.last("Service", "Type") == "notify"
    assert [d.name for d in unit.deps_of("after")] == ["every.target", "run.target", "prefix.target"]


def test_wants_and_requires_dirs_with_origins() -> None:
    files = system()
    files[f"{ETC}/multi-user.target.requires/db.service"] = Link(f"{LIB}/db.service")
    files[f"{ETC}/multi-user.target.wants/gone.service"] = Link("/dev/null")
    mu = loader(files).load("multi-user.target")
    wants = {d.name: d.origin for d in mu.deps_of("wants")}
    assert set(wants) == {"chrony.service", "web.service", "db.service"}
    assert wants["web.service"] == f"{ETC}/multi-user.target.wants/web.service"
    assert [d.name for d in mu.deps_of("requires")] == ["basic.target", "db.service"]


def test_dependencies_cannot_be_reset_and_bad_names_are_problems() -> None:
    ld = loader({f"{LIB}/a.service": "[Unit]\nAfter=x.service\n",
                 f"{ETC}/a.service.d/r.conf": "[Unit]\nAfter=\nAfter=not_a_unit y.service\n"})
    unit = ld.load("a.service")
    assert [d.name for d in unit.deps_of("after")] == ["x.service", "y.service"]
    assert [(p.path, p.line) for p in ld.problems] == [(f"{ETC}/a.service.d/r.conf", 3)]


def test_malformed_files_report_and_loading_goes_on() -> None:
    ld = loader({f"{LIB}/bad.service": "[Unit\nAfter=x.service\n",
                 f"{LIB}/ok.service": "[Unit]\nAfter=x.service\nGarbage line\n",
                 f"{ETC}/loop.service": Link("loop2.service"), f"{ETC}/loop2.service": Link("loop.service")})
    assert ld.load("bad.service").load_state == "error"
    assert ld.load("ok.service").load_state == "loaded"
    assert ld.load("loop.service").load_state == "not-found"
    where = {(p.path, p.line) for p in ld.problems}
    assert (f"{LIB}/bad.service", 1) in where and (f"{LIB}/ok.service", 3) in where
    assert any(p.path == f"{ETC}/loop.service" and "loop" in p.message for p in ld.problems)


def test_root_source_resolves_links_inside_the_root(tmp_path: Path) -> None:
    files = system()
    write_tree(tmp_path, files)
    # Debian's merged /usr: /lib -> usr/lib; an absolute link must resolve inside the image
    (tmp_path / "usr").mkdir()
    os.rename(tmp_path / "lib", tmp_path / "usr/lib")
    (tmp_path / "lib").symlink_to("usr/lib")
    src = RootSource(tmp_path)
    assert resolve(src, f"{ETC}/multi-user.target.wants/web.service") == "/usr/lib/systemd/system/web.service"
    ld = UnitLoader(src)
    assert ld.load("web.service").loaded
    # /lib and /usr/lib are the same directory: scanned once
    assert ld.search_dirs.count("/lib/systemd/system") + ld.search_dirs.count("/usr/lib/systemd/system") == 1
    # a link pointing outside (to the host's /etc/passwd) resolves inside the root: not found
    (tmp_path / "etc/systemd/system/evil.service").symlink_to("/etc/passwd")
    assert UnitLoader(src).load("evil.service").load_state == "not-found"


def test_unreadable_and_oversized_files(tmp_path: Path) -> None:
    unit_dir = tmp_path / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / "big.service").write_bytes(b"[Unit]\n" + b"#" * (1 << 20) + b"\n")
    os.mkfifo(unit_dir / "fifo.service")
    ld = UnitLoader(RootSource(tmp_path))
    assert ld.load("big.service").load_state == "error"
    ld.load("fifo.service")
    msgs = {p.path: p.message for p in ld.problems}
    assert "larger than" in msgs["/etc/systemd/system/big.service"]
