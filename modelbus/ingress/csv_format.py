"""RFC 4180 CSV: CRLF line ends, fields quoted when they hold a comma, quote or line break, quotes doubled."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

__all__ = ("CSV_MEDIA_TYPE", "render_csv")

CSV_MEDIA_TYPE = "text/csv"


def render_csv(header: Sequence[str], rows: Iterable[Sequence[str]]) -> bytes:
    """The header line and one line per row, UTF-8 encoded."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(
        buffer,
        delimiter=",",
        quotechar='"',
        doublequote=True,
        quoting=csv.QUOTE_MINIMAL,
        lineterminator="\r\n",
    )
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")
