"""The page's CSV downloads: the alert list (with the page's filters) and the assets.

Served by the same app, so the session (or bearer token), the request limits and
the security headers of every other route apply. The alert CSV streams the list
newest first, a keyset page at a time over the page's own read-only queries
(mamori.sensor.web.data), so a large store downloads in bounded memory; the rows are
those of ``mamori alerts --csv`` (mamori.sensor.alerting.export).
"""

from __future__ import annotations

from collections.abc import Iterator

from starlette.responses import StreamingResponse

from mamori.sensor.alerting.export import (
    ALERT_COLUMNS,
    ASSET_COLUMNS,
    alert_row,
    asset_row,
    csv_lines,
)
from mamori.sensor.web.data import AlertFilter, StoreReader

PAGE = 1000


def _csv(lines: Iterator[str], filename: str) -> StreamingResponse:
    return StreamingResponse(lines, media_type="text/csv; charset=utf-8",
                             headers={"content-disposition":
                                      f'attachment; filename="{filename}"'})


def alerts_csv(reader: StoreReader, filt: AlertFilter) -> StreamingResponse:
    def rows() -> Iterator[list[str]]:
        before: int | None = None
        while True:
            page, more = reader.alert_page(filt, before, PAGE)
            for row in page:
                yield alert_row(row.alert)
            if more is None:
                return
            before = more
    return _csv(csv_lines(ALERT_COLUMNS, rows()), "mamori-alerts.csv")


def assets_csv(reader: StoreReader) -> StreamingResponse:
    return _csv(csv_lines(ASSET_COLUMNS, (asset_row(a) for a in reader.assets())),
                "mamori-assets.csv")
