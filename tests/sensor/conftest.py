"""Fixtures shared by the sensor tests."""

from __future__ import annotations

import pytest

from mamori.sensor.advisories.csaf import document_files, read_document
from mamori.sensor.advisories.index import AdvisoryIndex
from mamori.sensor.advisories.matcher import Matcher
from mamori.sensor.advisories.normalise import default_tables
from tests.conftest import csaf_path


@pytest.fixture(scope="session")
def matcher(tmp_path_factory: pytest.TempPathFactory) -> Matcher:
    """The whole real advisory set, indexed once: a device must stand out of 2,379
    advisories, not of the three a test names."""
    path = tmp_path_factory.mktemp("adv") / "adv.db"
    with AdvisoryIndex(path) as index:
        for doc in document_files([csaf_path()]):
            index.put(read_document(doc))
        return Matcher(index.affected_products(), default_tables())
