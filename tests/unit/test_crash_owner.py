"""Who owns a crash (pure, on XML strings), libvirt's dump file names, ELF completeness, config keys."""

from __future__ import annotations

import struct
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vmcrash.capture.adopt import is_adoption, job_wait_s, libvirt_dump_dir
from vmcrash.config import load_config
from vmcrash.errors import BadDataError, ConfigError
from vmcrash.host.crash_owner import (
    DEFAULT_AUTO_DUMP_PATH,
    OnCrash,
    Owner,
    decide,
    elf_expected_size,
    freeze_explanation,
    on_crash_of,
    parse_auto_dump_name,
    parse_qemu_conf_dump_path,
    pick_auto_dump,
    short_name_prefixes,
)


def _xml(on_crash: str | None) -> str:
    oc = f"<on_crash>{on_crash}</on_crash>" if on_crash is not None else ""
    return (f"<domain type='qemu'><name>web1</name><memory unit='KiB'>524288</memory>"
            f"<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>{oc}<devices/></domain>")


@pytest.mark.parametrize(("on_crash", "owner", "dumps", "restarts"), [
    ("preserve", Owner.VMCRASH, False, False),
    ("coredump-restart", Owner.LIBVIRT_DUMP, True, True),
    ("coredump-destroy", Owner.LIBVIRT_DUMP, True, False),
    ("restart", Owner.LIBVIRT, False, True),
    ("rename-restart", Owner.LIBVIRT, False, True),
    ("destroy", Owner.LIBVIRT, False, False),
    (None, Owner.LIBVIRT, False, False),  # libvirt's default is destroy
])
def test_owner_per_on_crash(on_crash: str | None, owner: Owner, dumps: bool, restarts: bool) -> None:
    own = decide(_xml(on_crash))
    assert own.owner is owner
    assert own.on_crash.dumps is dumps and own.on_crash.restarts is restarts
    assert own.adopts is (owner is Owner.LIBVIRT_DUMP)
    assert not own.needs_takeover
    plan = own.plan()
    assert f"on_crash={own.on_crash.value}" in plan
    if owner is Owner.LIBVIRT_DUMP:
        assert "adopts" in plan and "never dumps it again" in plan
    if owner is Owner.LIBVIRT:
        assert "no dump" in plan and "records the panic" in plan
    if restarts:
        assert "clock" in plan


def test_whitespace_and_unknown_actions() -> None:
    assert on_crash_of(_xml("  coredump-restart\n")) is OnCrash.COREDUMP_RESTART
    with pytest.raises(BadDataError, match="unknown <on_crash>"):
        on_crash_of(_xml("explode"))
    with pytest.raises(BadDataError, match="does not parse"):
        on_crash_of("<domain><on_crash>")


def test_takeover_never_changes_the_owner_by_itself() -> None:
    own = decide(_xml("coredump-restart"), takeover=True)
    assert own.owner is Owner.LIBVIRT_DUMP and own.needs_takeover
    assert "doctor --fix" in own.plan()
    done = decide(_xml("preserve"), takeover=True)
    assert done.owner is Owner.VMCRASH and not done.needs_takeover


def test_freeze_explanation_names_the_ram_size() -> None:
    text = freeze_explanation(decide(_xml("coredump-restart")), 2048 * 1024 * 1024)
    assert "all 2048 MiB" in text and "raw dump" in text and "zero pages" in text
    assert "lost" in freeze_explanation(decide(_xml("restart")), 512 << 20)
    assert "512 MiB" in freeze_explanation(decide(_xml("preserve")), 512 << 20)


def test_qemu_conf_dump_path() -> None:
    assert parse_qemu_conf_dump_path("") == DEFAULT_AUTO_DUMP_PATH
    assert parse_qemu_conf_dump_path('#auto_dump_path = "/nope"\n') == DEFAULT_AUTO_DUMP_PATH
    text = 'auto_dump_path = "/srv/a"\n  auto_dump_path="/srv/b"  # later wins\nauto_dump_path = "rel"\n'
    assert parse_qemu_conf_dump_path(text) == "/srv/b"


def test_libvirt_dump_dir_from_config(tmp_path: Path) -> None:
    conf = tmp_path / "qemu.conf"
    conf.write_text('auto_dump_path = "/srv/crash"\n')
    cfg = load_config(_cfg(tmp_path, f'[libvirt_dumps]\nqemu_conf = "{conf}"\n'))
    assert libvirt_dump_dir(cfg) == Path("/srv/crash")
    cfg = load_config(_cfg(tmp_path, '[libvirt_dumps]\ndump_path = "/x/y"\nplace = "move"\n'))
    assert libvirt_dump_dir(cfg) == Path("/x/y") and cfg.libvirt_dumps.place == "move"
    assert job_wait_s(cfg, 2 << 30) == 120.0


def _cfg(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "vmcrash.toml"
    p.write_text('dump_dir = "/srv/dumps"\n' + text)
    return p


@pytest.mark.parametrize(("text", "key"), [
    ('[libvirt_dumps]\nplace = "copy"\n', "libvirt_dumps.place"),
    ('[libvirt_dumps]\ndump_path = "relative"\n', "libvirt_dumps.dump_path"),
    ('[libvirt_dumps]\nbogus = 1\n', "libvirt_dumps.bogus"),
    ('[domains."*"]\ncrash_owner = "libvirt"\n', "crash_owner"),
])
def test_bad_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(_cfg(tmp_path, text))
    assert key in str(ei.value)


def test_crash_owner_policy_merges(tmp_path: Path) -> None:
    cfg = load_config(_cfg(tmp_path, '[domains."db-*"]\ncrash_owner = "vmcrash"\n'))
    assert cfg.policy_for("db-1").crash_owner == "vmcrash"
    assert cfg.policy_for("web").crash_owner == "auto"


# -- libvirt's file names ----------------------------------------------------------------------

def test_short_name_is_cut_to_20_characters() -> None:
    # seen on libvirt 9.0: domain vmcrash-lab-14996-1-a9d0, id 55 -> 55-vmcrash-lab-14996-1--2026-12-02-04:33:54
    assert short_name_prefixes(55, "vmcrash-lab-14996-1-a9d0") == [b"55-vmcrash-lab-14996-1--"]
    both = short_name_prefixes(3, "名" * 30)
    assert both[0] == b"3-" + ("名" * 20).encode() + b"-" and both[1] == b"3-" + ("名" * 30).encode()[:20] + b"-"


def test_parse_name_seen_on_libvirt_9() -> None:
    f = parse_auto_dump_name(b"55-vmcrash-lab-14996-1--2026-12-02-04:33:54", "vmcrash-lab-14996-1-a9d0",
                             utc_offset_s=0)
    assert f is not None and f.dom_id == 55
    assert f.started_s == datetime(2026, 12, 2, 4, 33, 54, tzinfo=UTC).timestamp()
    # local time: libvirtd at UTC+1 wrote 05:33:54 for the same instant
    g = parse_auto_dump_name(b"55-vmcrash-lab-14996-1--2026-12-02-05:33:54", "vmcrash-lab-14996-1-a9d0",
                             utc_offset_s=3600)
    assert g is not None and g.started_s == f.started_s


@pytest.mark.parametrize("fn", [
    b"55-vmcrash-lab-14996-1--2026-12-02-04:33:54.part",
    b"55-other-2026-12-02-04:33:54",
    b"0055-vmcrash-lab-14996-1--2026-12-02-04:33:54",
    b"55-vmcrash-lab-14996-1--2026-13-02-04:33:54",
    b"x-vmcrash-lab-14996-1--2026-12-02-04:33:54",
    b"55-vmcrash-lab-14996-1--2026-12-02-04:33:54/../x",
])
def test_other_files_are_not_ours(fn: bytes) -> None:
    assert parse_auto_dump_name(fn, "vmcrash-lab-14996-1-a9d0", utc_offset_s=0) is None


def test_pick_the_dump_of_this_panic() -> None:
    name = "web1"
    panic = datetime(2026, 12, 2, 4, 33, 54, tzinfo=UTC).timestamp()
    names = [b"7-web1-2026-12-02-03:00:00",      # an older panic of the same QEMU
             b"7-web1-2026-12-02-04:33:54",      # this one
             b"7-web1-2026-12-02-04:40:00",      # a later one (not yet: beyond now)
             b"8-web1-2026-12-02-04:33:54",      # another QEMU process (id 8)
             b"7-web10-2026-12-02-04:33:54"]
    got = pick_auto_dump(names, name, panic_s=panic + 0.4, now_s=panic + 3, utc_offset_s=0, dom_id=7)
    assert got is not None and got.name == b"7-web1-2026-12-02-04:33:54"
    # already catalogued: never adopted twice
    assert pick_auto_dump(names, name, panic_s=panic, now_s=panic + 3, utc_offset_s=0, dom_id=7,
                          taken={b"7-web1-2026-12-02-04:33:54"}) is None
    # time unknown (found at start-up): the newest that exists by now
    got = pick_auto_dump(names, name, panic_s=None, now_s=panic + 3600, utc_offset_s=0, dom_id=7)
    assert got is not None and got.name == b"7-web1-2026-12-02-04:40:00"


# -- ELF completeness --------------------------------------------------------------------------

def _elf(loads: list[tuple[int, int]]) -> bytes:
    phnum = 1 + len(loads)
    hdr = bytearray(64)
    hdr[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", hdr, 32, 64)
    struct.pack_into("<HH", hdr, 54, 56, phnum)
    ph = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56 * phnum, 0, 0, 100, 100, 0)  # PT_NOTE
    for off, size in loads:
        ph += struct.pack("<IIQQQQQQ", 1, 0, off, 0, 0, size, size, 0)
    return bytes(hdr) + ph


def test_elf_expected_size() -> None:
    head = _elf([(4096, 512 << 20), (4096 + (512 << 20), 256 << 10)])
    assert elf_expected_size(head) == 4096 + (512 << 20) + (256 << 10)
    assert elf_expected_size(head[:100]) is None  # program headers cut off
    assert elf_expected_size(b"KDUMP   " + bytes(100)) is None
    assert elf_expected_size(b"") is None
    hostile = bytearray(_elf([(1 << 63, 1)]))
    assert elf_expected_size(bytes(hostile)) is None


def test_is_adoption_reads_the_owner_mark() -> None:
    class Row:
        capture: dict[str, str] | None = {"owner": "libvirt-dump"}

    assert is_adoption(Row())  # type: ignore[arg-type]
    Row.capture = {"mode": "stream"}
    assert not is_adoption(Row())  # type: ignore[arg-type]
    assert not is_adoption(None)


# -- waiting for libvirt (fakes for the pure waiting logic; the real thing is in tests/lab/test_adopt.py) --

class FakeDom:
    """Plays back (state, job type) pairs, one per poll; the last one repeats."""

    def __init__(self, script: list[tuple[int, int]]) -> None:
        self.script = script
        self.i = 0

    def name(self) -> str:
        return "fake"

    def state(self) -> list[int]:
        s = self.script[min(self.i, len(self.script) - 1)][0]
        return [s, 0]

    def jobInfo(self) -> list[int]:  # noqa: N802 - libvirt's name
        j = self.script[min(self.i, len(self.script) - 1)][1]
        self.i += 1
        return [j] + [0] * 11


def test_wait_libvirt_sees_dump_job_then_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    import libvirt

    from vmcrash.capture import adopt

    monkeypatch.setattr(adopt, "POLL_S", 0.001)
    crashed, running = libvirt.VIR_DOMAIN_CRASHED, libvirt.VIR_DOMAIN_RUNNING
    dom = FakeDom([(crashed, 2)] * 5 + [(crashed, 3), (crashed, 0), (crashed, 0), (running, 0)])
    out = adopt.wait_libvirt(dom, OnCrash.COREDUMP_RESTART, timeout_s=5)  # type: ignore[arg-type]
    assert out.state is adopt.LibvirtState.RUNNING and out.saw_job
    assert out.job_ended_ns is not None and out.running_again_ns is not None
    assert out.running_again_ns >= out.job_ended_ns


def test_wait_libvirt_notices_a_lost_action_and_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    import libvirt

    from vmcrash.capture import adopt

    monkeypatch.setattr(adopt, "POLL_S", 0.001)
    monkeypatch.setattr(adopt, "ABANDON_GRACE_S", 0.05)
    lost = adopt.wait_libvirt(FakeDom([(libvirt.VIR_DOMAIN_CRASHED, 0)]), OnCrash.COREDUMP_RESTART,  # type: ignore[arg-type]
                              timeout_s=5)
    assert lost.state is adopt.LibvirtState.ABANDONED and not lost.saw_job
    busy = adopt.wait_libvirt(FakeDom([(libvirt.VIR_DOMAIN_CRASHED, 2)]), OnCrash.COREDUMP_RESTART,  # type: ignore[arg-type]
                              timeout_s=0.05)
    assert busy.state is adopt.LibvirtState.TIMEOUT
    off = adopt.wait_libvirt(FakeDom([(libvirt.VIR_DOMAIN_SHUTOFF, 0)]), OnCrash.COREDUMP_DESTROY,  # type: ignore[arg-type]
                             timeout_s=5)
    assert off.state is adopt.LibvirtState.SHUTOFF


def test_wait_complete_on_a_growing_and_a_truncated_file(tmp_path: Path) -> None:
    import threading

    from vmcrash.capture.adopt import wait_complete
    from vmcrash.errors import StorageError

    head = _elf([(4096, 1 << 20)])
    path = tmp_path / "7-web1-2026-12-02-04:33:54"
    path.write_bytes(head)

    def grow() -> None:
        time.sleep(0.3)
        with open(path, "r+b") as f:
            f.truncate(4096 + (1 << 20))

    t = threading.Thread(target=grow)
    t.start()
    assert wait_complete(path, stall_s=5) == ("elf", 4096 + (1 << 20))
    t.join()
    short = tmp_path / "short"
    short.write_bytes(head + bytes(100))
    with pytest.raises(StorageError, match="incomplete"):
        wait_complete(short, stall_s=0.3)
