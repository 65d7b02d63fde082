"""The ordering graph and the boot transaction, on miniature systems (pure logic)."""

from __future__ import annotations

from _guestsys import ETC, LIB, system

from vmcrash.guest.graph import BootGraph
from vmcrash.guest.sources import Link, MemorySource
from vmcrash.guest.units import UnitLoader


def graph(files: dict) -> BootGraph:  # type: ignore[type-arg]
    return BootGraph(UnitLoader(MemorySource(files)))


def test_default_dependencies_of_a_service() -> None:
    g = graph(system())
    after = g.edges("web.service", "after")
    assert {"sysinit.target", "basic.target", "system.slice", "systemd-journald.socket"} <= set(after)
    assert "implicit" in after["basic.target"].origin
    assert "sysinit.target" in g.edges("web.service", "requires")
    assert "shutdown.target" in g.edges("web.service", "before")


def test_default_dependencies_off() -> None:
    files = system({f"{LIB}/early.service": "[Unit]\nDefaultDependencies=no\n[Service]\nStandardOutput=null\n",
                    f"{ETC}/multi-user.target.wants/early.service": Link(f"{LIB}/early.service")})
    g = graph(files)
    assert set(g.edges("early.service", "after")) == {"system.slice"}
    # a target is not ordered after a unit without default dependencies
    assert "early.service" not in g.edges("multi-user.target", "after")
    assert "web.service" in g.edges("multi-user.target", "after")


def test_target_not_ordered_after_a_unit_it_is_before() -> None:
    files = system({f"{LIB}/late.service": "[Unit]\nAfter=multi-user.target\n[Service]\nExecStart=/x\n",
                    f"{ETC}/multi-user.target.wants/late.service": Link(f"{LIB}/late.service")})
    g = graph(files)
    assert "late.service" not in g.edges("multi-user.target", "after")
    assert g.cycles() == []


def test_before_is_the_reverse_of_after_with_its_origin() -> None:
    g = graph(system())
    edge = g.edges("time-sync.target", "after")["chrony.service"]
    assert edge.origin == f"Before= at {LIB}/chrony.service:5"


def test_timer_socket_and_private_tmp_implicit_edges() -> None:
    files = system({
        f"{LIB}/backup.timer": "[Timer]\nOnCalendar=daily\nPersistent=yes\n",
        f"{LIB}/backup.service": "[Service]\nType=oneshot\nExecStart=/x\n",
        f"{ETC}/timers.target.wants/backup.timer": Link(f"{LIB}/backup.timer"),
        f"{LIB}/web.socket": "[Socket]\nListenStream=/run/web.sock\n",
        f"{ETC}/sockets.target.wants/web.socket": Link(f"{LIB}/web.socket"),
    })
    g = graph(files)
    assert {"time-sync.target", "time-set.target", "sysinit.target", "-.mount"} <= set(g.edges("backup.timer", "after"))
    assert "backup.timer" in g.edges("backup.service", "after")
    assert "web.socket" in g.edges("web.service", "after")
    assert "web.socket" in g.edges("sockets.target", "after")
    chrony_after = set(g.edges("chrony.service", "after"))
    assert {"tmp.mount", "systemd-tmpfiles-setup.service", "-.mount"} <= chrony_after
    assert "tmp.mount" in g.edges("chrony.service", "wants")


def test_transaction_skips_missing_wants_and_units_requiring_missing_ones() -> None:
    files = system({
        f"{LIB}/needy.service": "[Unit]\nRequires=absent.service\n[Service]\nExecStart=/x\n",
        f"{ETC}/multi-user.target.wants/needy.service": Link(f"{LIB}/needy.service"),
        f"{ETC}/multi-user.target.wants/ghost.service": Link(f"{LIB}/ghost.service"),
        f"{LIB}/masked.service": "[Service]\nExecStart=/x\n",
        f"{ETC}/masked.service": Link("/dev/null"),
        f"{ETC}/multi-user.target.wants/masked.service": Link(f"{LIB}/masked.service"),
    })
    g = graph(files)
    assert {"web.service", "db.service", "chrony.service", "time-sync.target", "basic.target"} <= g.transaction
    assert not {"needy.service", "ghost.service", "masked.service", "absent.service"} & g.transaction
    assert "absent.service" in g.failed["needy.service"]
    assert "chrony-wait.service" not in g.transaction
    chain = g.pull_chain("time-sync.target")
    assert chain is not None and [(e.src, e.kind, e.dst) for e in chain] == [
        ("graphical.target", "requires", "multi-user.target"),  # default.target -> graphical.target
        ("multi-user.target", "wants", "chrony.service"), ("chrony.service", "wants", "time-sync.target")]


def test_order_chain_goes_only_through_units_with_jobs() -> None:
    files = system({
        f"{LIB}/app.service": "[Unit]\nAfter=helper.service\n[Service]\nExecStart=/x\n",
        f"{ETC}/multi-user.target.wants/app.service": Link(f"{LIB}/app.service"),
        # helper waits for time-sync but nothing pulls helper in: app does not wait for time-sync
        f"{LIB}/helper.service": "[Unit]\nAfter=time-sync.target\n[Service]\nExecStart=/x\n",
    })
    g = graph(files)
    assert g.order_chain("app.service", "time-sync.target") is None
    files[f"{ETC}/multi-user.target.wants/helper.service"] = Link(f"{LIB}/helper.service")
    g = graph(files)
    chain = g.order_chain("app.service", "time-sync.target")
    assert chain is not None and [(e.src, e.dst) for e in chain] == [
        ("app.service", "helper.service"), ("helper.service", "time-sync.target")]
    assert "chrony.service" in g.waited_for_by("time-sync.target")
    assert "app.service" not in g.waited_for_by("time-sync.target")


def test_ordering_cycles_are_found() -> None:
    files = system({
        f"{LIB}/a.service": "[Unit]\nAfter=b.service\n[Service]\nExecStart=/x\n",
        f"{LIB}/b.service": "[Unit]\nAfter=a.service\n[Service]\nExecStart=/x\n",
        f"{ETC}/multi-user.target.wants/a.service": Link(f"{LIB}/a.service"),
        f"{ETC}/multi-user.target.wants/b.service": Link(f"{LIB}/b.service"),
    })
    assert graph(files).cycles() == [["a.service", "b.service"]]
