"""The host side's edge: the libvirt connection, its events, domain XML and the guest agent.

libvirt's errors are translated into the project's error tree here, in one table
(:data:`vmcrash.host.connection.TRANSLATION`); the capture pipeline above still holds libvirt
domain handles, but sees only the project's errors.
"""
