"""vmcrash: catch guest kernel panics on KVM/libvirt hosts, dump them fast, recover, fix the clock, triage.

The package follows the data flow: ``host`` (libvirt, events, domain XML, agent) → ``capture`` (the crash
pipeline, dump files, retention) → ``vmcore`` (pure dump readers and triage) → ``store`` (catalogue) →
``cli`` (one thin module per verb). ``clock`` estimates and corrects guest clocks, ``guest`` runs inside
guests (stdlib only), ``lab`` builds the throwaway crash guests used by ``selftest`` and the tests.

Public surface: ``__version__``.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
