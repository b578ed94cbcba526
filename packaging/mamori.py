#!/usr/bin/python3
"""The ``mamori`` command as packaged: its modules live in a private directory.

The project's top-level packages are called ``sensor`` and ``parsers``: generic names
that must not land in the system-wide dist-packages, so the package installs them
under /usr/share/mamori and this launcher puts that directory first on sys.path.
"""
import sys

sys.path.insert(0, "/usr/share/mamori")

from sensor.cli import main

sys.exit(main())
