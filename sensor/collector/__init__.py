"""The collector side of forwarding: ``CollectorServer`` and its storage engines."""

from mamori.sensor.collector.server import CollectorServer, CollectorSettings
from mamori.sensor.collector.storage import (
           PostgresStorage,
           SensorStatus,
           SqliteStorage,
           open_storage,
)

__all__ = ["CollectorServer", "CollectorSettings", "PostgresStorage", "SensorStatus",
           "SqliteStorage", "open_storage"]
