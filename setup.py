"""The ``mamori`` namespace over the tree's top-level folders: what pyproject.toml cannot say.

``parsers/``, ``sensor/`` and ``rules/`` stay at the top of the source tree and install
as ``mamori.parsers``, ``mamori.sensor`` and ``mamori.rules``. The subpackages are
found here, so a new folder ships without a list to keep in step.
"""

from setuptools import find_packages, setup

ROOTS = ("parsers", "sensor", "rules")

packages = ["mamori"]
for root in ROOTS:
    packages += [f"mamori.{root}"] + [f"mamori.{root}.{p}" for p in find_packages(root)]

setup(
    packages=packages,
    package_dir={"mamori": "mamori", **{f"mamori.{root}": root for root in ROOTS}},
)
