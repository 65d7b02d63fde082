"""The host side's edge: the libvirt connection, its events, domain XML and the guest agent.

Everything that imports ``libvirt`` lives here, so the rest of the package sees narrow interfaces
and the project's own errors.
"""
