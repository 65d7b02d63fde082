"""``python3 -m vmcrash.guest audit|fix``: the guest side without click, libvirt or anything but python3."""

from __future__ import annotations

import sys

from vmcrash.guest.cli import main

if __name__ == "__main__":
    sys.exit(main())
