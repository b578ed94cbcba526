"""``/alerts/ID/pcap``: the packets behind an alert, downloaded from the box (issue 20).

The store records where ``mamori.sensor.capture.packet_evidence`` wrote an alert's pcap. The page
serves that file only if it is one of its own names, directly inside the configured
pcap directory (symbolic links refused), so a tampered path in the store cannot
make the page read anything else. The file is read whole, bounded, in a worker
thread; retention may have deleted it since, which is a 404 that says so.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.responses import Response

from mamori.sensor.capture.packet_evidence import PCAP_NAME
from mamori.sensor.web.data import StoreReader

MEDIA_TYPE = "application/vnd.tcpdump.pcap"
MAX_PCAP_BYTES = 256 * 1024 * 1024  # beyond [packets] flow_bytes' own maximum


def confined(stored: str, directory: Path) -> Path | None:
    """``stored`` when it names one of our pcaps directly inside ``directory``, else None."""
    path = Path(stored)
    if not path.is_absolute() or PCAP_NAME.match(path.name) is None:
        return None
    try:
        if os.path.realpath(path.parent) != os.path.realpath(directory):
            return None
    except (OSError, ValueError):
        return None
    return path


def read_pcap(reader: StoreReader, directory: Path | None, alert_id: int) -> bytes | str:
    """The pcap's bytes, or why there are none (for the 404 page)."""
    stored = reader.pcap(alert_id)
    if stored is None:
        return f"packets of alert {alert_id}"
    path = confined(stored, directory) if directory is not None else None
    if path is None:
        return f"packets of alert {alert_id} (not in the pcap directory)"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"packets of alert {alert_id} (deleted by retention)"
    except OSError:  # a symbolic link put in its place (ELOOP), permissions
        return f"packets of alert {alert_id} (cannot be read)"
    with os.fdopen(fd, "rb") as stream:
        data = stream.read(MAX_PCAP_BYTES + 1)
    if len(data) > MAX_PCAP_BYTES:
        return f"packets of alert {alert_id} (file too large to serve)"
    return data


def pcap_response(data: bytes, alert_id: int) -> Response:
    return Response(data, media_type=MEDIA_TYPE, headers={
        "Content-Disposition": f'attachment; filename="alert-{alert_id}.pcap"'})
