"""Pure parts of the lab: the cpio writer (checked by GNU cpio), the domain XML (checked by libvirt's schema)
and the ``--fill-mib`` option of the lab verbs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vmcrash.cli._common import fill_mib_option
from vmcrash.lab.cpio import CpioEntry, write_newc
from vmcrash.lab.guest import GuestSpec, domain_xml, unique_name
from vmcrash.lab.image import LabImage


def test_newc_archive_lists_and_extracts_with_gnu_cpio(tmp_path: Path) -> None:
    archive = write_newc([
        CpioEntry("/bin", "dir"),
        CpioEntry("/bin/hello", "file", 0o755, b"#!/bin/sh\necho hi\n"),
        CpioEntry("/bin/sh", "symlink", data=b"/bin/busybox"),
        CpioEntry("/odd", "file", 0o600, b"x" * 5),  # length not a multiple of 4
    ])
    (tmp_path / "a.cpio").write_bytes(archive)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "-F", str(tmp_path / "a.cpio")], cwd=out, check=True)
    assert (out / "bin/hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (out / "bin/hello").stat().st_mode & 0o777 == 0o755
    assert (out / "bin/sh").is_symlink() and str((out / "bin/sh").readlink()) == "/bin/busybox"
    assert (out / "odd").read_bytes() == b"xxxxx"


def test_newc_is_deterministic() -> None:
    entries = [CpioEntry("/a", "file", 0o644, b"abc")]
    assert write_newc(entries) == write_newc(entries)


def _image(tmp_path: Path) -> LabImage:
    return LabImage(tmp_path, tmp_path / "vmlinuz", tmp_path / "initrd.img", "6.1.0-test", "0" * 16)


@pytest.mark.parametrize("spec", [
    GuestSpec(),
    GuestSpec(panic_model="pci", rtc="guest", vmcoreinfo=False, agent=False, memory_mib=2048, fill_mib=1024),
    GuestSpec(clock_offset_s=-600, vcpus=2, on_crash="coredump-restart", panic_model="none"),
])
def test_domain_xml_passes_libvirt_schema(tmp_path: Path, spec: GuestSpec) -> None:
    xml = domain_xml(unique_name(), spec, _image(tmp_path), tmp_path / "serial.log", "qemu")
    path = tmp_path / "dom.xml"
    path.write_text(xml)
    res = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert ("<vmcoreinfo state=\"on\" />" in xml) == spec.vmcoreinfo
    assert ("org.qemu.guest_agent.0" in xml) == spec.agent
    assert ("pvpanic-pci" in xml) == (spec.panic_model == "pci")
    assert ("<panic model=\"isa\">" in xml) == (spec.panic_model == "isa")
    assert ("track=\"guest\"" in xml) == (spec.rtc == "guest")
    assert f"fill_mb={spec.fill_mib}" in xml if spec.fill_mib else "fill_mb" not in xml


def test_unique_names_differ() -> None:
    names = {unique_name() for _ in range(100)}
    assert len(names) == 100


def test_lab_names_are_the_ones_a_daemon_leaves_alone() -> None:
    """One prefix: the names the lab makes are the ones the daemon's config does not watch by glob."""
    from vmcrash.config import Config

    name = unique_name()
    assert re.fullmatch(rf"vmcrash-lab-{os.getpid()}-\d+-[0-9a-f]{{4}}", name)
    assert not Config(domains=(("*", (("watch", True),)),)).watches(name)
    assert Config(domains=((name, (("watch", True),)),)).watches(name)


def _fill_command() -> click.Command:
    @click.command()
    @fill_mib_option("MiB of random data.")
    def cmd(fill_mib: int) -> None:
        click.echo(f"fill_mib={fill_mib}")

    return cmd


@pytest.mark.parametrize("args, out", [([], "fill_mib=0"), (["--fill-mib", "7"], "fill_mib=7"),
                                       (["--fill-mb", "7"], "fill_mib=7")])
def test_fill_mib_option_and_its_old_spelling(args: list[str], out: str) -> None:
    res = CliRunner().invoke(_fill_command(), args)
    assert res.exit_code == 0, res.output
    assert res.output.strip() == out


def test_fill_mib_and_fill_mb_together_are_a_usage_error() -> None:
    res = CliRunner().invoke(_fill_command(), ["--fill-mib", "7", "--fill-mb", "7"])
    assert res.exit_code == 2 and "--fill-mb is the older spelling of --fill-mib" in res.output


@pytest.mark.parametrize("verb", [["lab", "boot"], ["selftest"]])
def test_lab_verbs_show_fill_mib_and_hide_fill_mb(verb: list[str]) -> None:
    run = [sys.executable, "-m", "vmcrash.cli.main", *verb]
    shown = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "--fill-mib" in shown.stdout and "--fill-mb" not in shown.stdout
    # refused while parsing, before any guest is booted
    both = subprocess.run([*run, "--fill-mib", "1", "--fill-mb", "1"], capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and "older spelling of --fill-mib" in both.stderr
