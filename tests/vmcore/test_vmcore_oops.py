"""Finding the panic, the report that led to it and its call trace in kernel log text (literal logs)."""

from __future__ import annotations

from vmcrash.vmcore._oops import find_crash, parse_frame

# Console of a lab guest after `echo c > /proc/sysrq-trigger` (Debian 6.1), timestamps removed.
SYSRQ = """\
vmcrash-lab ready marker never reaches the kernel log
clocksource: Switched to clocksource tsc
sysrq: Trigger a crash
Kernel panic - not syncing: sysrq triggered crash
CPU: 0 PID: 94 Comm: sh Not tainted 6.1.0-56-amd64 #1  Debian 6.1.192-2
Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
Call Trace:
 <TASK>
 dump_stack_lvl+0x44/0x5c
 panic+0x118/0x2f4
 ? _printk+0x68/0x83
 sysrq_handle_crash+0x16/0x20
 __handle_sysrq.cold+0x44/0x11c
 write_sysrq_trigger+0x24/0x40
 entry_SYSCALL_64_after_hwframe+0x6e/0xd8
RIP: 0033:0x47b7a0
Code: 40 00 48 c7 c2 e0 ff ff ff f7 d8 64 89 02 48 c7 c0 ff ff ff ff eb b7 0f 1f 00
RSP: 002b:00007ffe83681f18 EFLAGS: 00000202 ORIG_RAX: 0000000000000001
RAX: ffffffffffffffda RBX: 0000000000000001 RCX: 000000000047b7a0
 </TASK>""".splitlines()

# A NULL pointer dereference in a module, then "Fatal exception" (Linux 6.x layout).
NULL_DEREF = """\
virtio_net virtio0 enp1s0: renamed from eth0
BUG: kernel NULL pointer dereference, address: 0000000000000008
#PF: supervisor read access in kernel mode
#PF: error_code(0x0000) - not-present page
PGD 0 P4D 0
Oops: 0000 [#1] PREEMPT SMP NOPTI
CPU: 1 PID: 311 Comm: insmod Tainted: G           OE      6.1.0-56-amd64 #1  Debian 6.1.192-2
Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
RIP: 0010:crashme_init+0x15/0x1000 [crashme]
Code: Unable to access opcode bytes at 0xffffffffc0344feb.
RSP: 0018:ffffb1a8c04cfc60 EFLAGS: 00010246
RAX: 0000000000000000 RBX: 0000000000000000 RCX: 0000000000000000
FS:  00007f4f2e9a0740(0000) GS:ffff9b3e3ec80000(0000) knlGS:0000000000000000
CS:  0010 DS: 0000 ES: 0000 CR0: 0000000080050033
CR2: 0000000000000008 CR3: 000000000240a000 CR4: 00000000000006e0
Call Trace:
 <TASK>
 ? crashme_init+0x15/0x1000 [crashme]
 do_one_initcall+0x59/0x220
 do_init_module+0x4a/0x1f0
 __do_sys_finit_module+0xac/0x120
 do_syscall_64+0x58/0xc0
 entry_SYSCALL_64_after_hwframe+0x63/0xcd
RIP: 0033:0x7f4f2eac2f29
 </TASK>
Modules linked in: crashme(OE+) virtio_net
CR2: 0000000000000008
---[ end trace 0000000000000000 ]---
RIP: 0010:crashme_init+0x15/0x1000 [crashme]
Kernel panic - not syncing: Fatal exception
Kernel Offset: 0x26200000 from 0xffffffff81000000 (relocation range: 0xffffffff80000000-0xffffffffbfffffff)
---[ end Kernel panic - not syncing: Fatal exception ]---""".splitlines()

WARNING_ONLY = """\
random: crng init done
WARNING: CPU: 0 PID: 1 at drivers/foo/bar.c:42 bar_probe+0x20/0x40
Modules linked in:
CPU: 0 PID: 1 Comm: swapper/0 Not tainted 6.1.0 #1
RIP: 0010:bar_probe+0x20/0x40
Call Trace:
 <TASK>
 really_probe+0xde/0x380
 driver_probe_device+0x1e/0x90
 </TASK>
---[ end trace 0000000000000000 ]---
later unrelated message""".splitlines()


def test_sysrq_crash() -> None:
    r = find_crash(SYSRQ)
    assert r.panic_index == 3
    assert [SYSRQ[i] for i in r.oops_indices] == SYSRQ[2:6]
    assert [str(f) for f in r.call_trace] == [
        "dump_stack_lvl+0x44/0x5c", "panic+0x118/0x2f4", "? _printk+0x68/0x83", "sysrq_handle_crash+0x16/0x20",
        "__handle_sysrq.cold+0x44/0x11c", "write_sysrq_trigger+0x24/0x40",
        "entry_SYSCALL_64_after_hwframe+0x6e/0xd8"]
    assert r.cpu == 0


def test_oops_then_fatal_exception() -> None:
    r = find_crash(NULL_DEREF)
    assert NULL_DEREF[r.panic_index] == "Kernel panic - not syncing: Fatal exception"
    report = [NULL_DEREF[i] for i in r.oops_indices]
    assert report[0] == "BUG: kernel NULL pointer dereference, address: 0000000000000008"
    assert "Oops: 0000 [#1] PREEMPT SMP NOPTI" in report
    assert "RIP: 0010:crashme_init+0x15/0x1000 [crashme]" in report
    assert report[-1] == "Kernel panic - not syncing: Fatal exception"
    assert not any(line.startswith(("RAX:", "RSP:", "Code:", " do_one_initcall")) for line in report)
    assert r.call_trace[0].function == "crashme_init" and r.call_trace[0].module == "crashme"
    assert not r.call_trace[0].reliable
    assert [f.function for f in r.call_trace][1:3] == ["do_one_initcall", "do_init_module"]
    assert r.cpu == 1


def test_warning_without_panic() -> None:
    r = find_crash(WARNING_ONLY)
    assert r.panic_index is None
    assert WARNING_ONLY[r.report_start].startswith("WARNING: CPU: 0 PID: 1")
    assert [f.function for f in r.call_trace] == ["really_probe", "driver_probe_device"]


def test_nothing_to_find() -> None:
    r = find_crash(["hello", "world"])
    assert r.panic_index is None and r.report_start is None and r.call_trace == () and r.cpu is None
    assert find_crash([]).panic_index is None


def test_parse_frame_forms() -> None:
    f = parse_frame(" ? do_fault+0x1a7/0x410")
    assert f is not None and (f.function, f.offset, f.size, f.reliable) == ("do_fault", 0x1A7, 0x410, False)
    old = parse_frame(" [<ffffffff8106a3c5>] warn_slowpath_common+0x85/0xc0 [mod]")
    assert old is not None and old.function == "warn_slowpath_common" and old.module == "mod"
    assert parse_frame("Call Trace:") is None
    assert parse_frame(" <TASK>") is None


def test_banner_scan() -> None:
    from vmcrash.vmcore._scan import find_banner

    data = (b"\0junk Linux version %s\0Linux version 6.1.0-56-amd64 (gcc) # SMP PREEMPT\n\0"
            b"Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1 SMP Debian 6.1.192-2\n")
    assert find_banner(data) == ("6.1.0-56-amd64", "#1 SMP Debian 6.1.192-2")
    assert find_banner(b"Linux version 5.10.0-9-amd64 (x) # template\n") == ("5.10.0-9-amd64", None)
    assert find_banner(b"no banner here") is None
