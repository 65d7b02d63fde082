"""The host side's edge: the libvirt connection, its events, domain XML and the guest agent.

libvirt's errors are translated into the project's error tree here, in one table
(:data:`vmcrash.host.connection.TRANSLATION`); the capture pipeline above still holds libvirt
domain handles, but sees only the project's errors. Some rooms here are pure and import no
libvirt: the agent's wire protocol (:mod:`vmcrash.host.agent_protocol`, which :mod:`vmcrash.clock`
uses), domain XML (:mod:`vmcrash.host.domxml`), who owns a crash (:mod:`vmcrash.host.crash_owner`).
"""
