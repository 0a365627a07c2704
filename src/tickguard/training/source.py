"""Training data read straight from a detector's source measurement in InfluxDB.

`tickguard train --from-influx --start T --end T` reads the detector's feature, label, time and kept
fields from `[source]` (database, retention policy, measurement, tag filter) through tickguard.influx,
one time page at a time (each page a chunked query), printing a progress line per page. The rows are
written to a CSV in the detector's columns and loaded by `load_detector_frame`, so data from InfluxDB is
checked, labelled (0/1 by the detector's positive values) and time-ordered exactly as a CSV is; the
CSV's sha256 goes into the model card. When the detector's time column is not a field of the
measurement, it is filled from the points' timestamps in the detector's time unit.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tickguard import influx
from tickguard.data.schema import detector_columns
from tickguard.errors import TickguardError

if TYPE_CHECKING:
    import pandas as pd

    from tickguard.detectors import DetectorSpec

DEFAULT_PAGE = "1h"
_NS_PER_UNIT = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def source_query(spec: DetectorSpec, columns: list[str], start_ns: int, end_ns: int) -> str:
    """SELECT of `columns` from the detector's source in [start, end), with its tag filter."""
    source = spec.source
    where = influx.tag_conditions(sorted(source.tags.items()))
    where.append(influx.time_range(start_ns, end_ns))
    selected = ", ".join(influx.quote_ident(name) for name in columns)
    target = influx.qualified(source.measurement, source.database, source.retention_policy)
    return f"SELECT {selected} FROM {target} WHERE {' AND '.join(where)}"


def _time_value(spec: DetectorSpec, time_ns: int) -> str:
    if spec.time.unit == "rfc3339":
        return influx.format_time(time_ns)
    step = _NS_PER_UNIT[spec.time.unit]
    return repr(time_ns / step) if step > 1 else str(time_ns)


def export_source_csv(
    spec: DetectorSpec,
    client: influx.InfluxClient,
    start: str,
    end: str,
    csv_path: Path,
    *,
    page: str = DEFAULT_PAGE,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Write the detector's rows in [start, end) to `csv_path`; return what was read (for the model card).

    Raises TickguardError naming what is missing: the measurement's fields, or any rows at all.
    """
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    start_ns, end_ns = influx.parse_time(start), influx.parse_time(end)
    page_ns = influx.parse_duration_ns(page)
    if end_ns <= start_ns:
        raise TickguardError(f"--end ({end}) must be after --start ({start})")
    if page_ns <= 0:
        raise TickguardError(f"--page {page!r} must be a positive duration")
    source = spec.source
    stored = client.field_types(source.measurement, database=source.database)
    if not stored:
        raise TickguardError(
            f"InfluxDB has no measurement {source.measurement!r} in database {source.database!r} "
            f"(detector {spec.name}'s [source])"
        )
    tag_keys = {
        key
        for series in client.query(
            f"SHOW TAG KEYS FROM {influx.quote_ident(source.measurement)}", database=source.database
        )
        for (key,) in series.get("values") or []
    }
    required, optional = detector_columns(spec)
    time_from_stamp = bool(spec.time.column) and spec.time.column not in stored
    needed = [c for c in required if not (time_from_stamp and c == spec.time.column)]
    missing = [c for c in needed if c not in stored and c not in tag_keys]
    if missing:
        raise TickguardError(
            f"measurement {source.measurement!r} in {source.database!r} lacks {', '.join(map(repr, missing))} "
            f"(detector {spec.name} needs them; it has fields {', '.join(sorted(stored))})"
        )
    kept = [c for c in optional if c in stored or c in tag_keys]
    columns = [*needed, *kept]
    header = [*required, *kept]

    rows = pages = 0
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        page_start = start_ns
        while page_start < end_ns:
            page_end = min(end_ns, page_start + page_ns)
            statement = source_query(spec, columns, page_start, page_end)
            for _tags, row in client.rows(statement, database=source.database):
                values = {name: row.get(name) for name in columns}
                if time_from_stamp:
                    values[spec.time.column] = _time_value(spec, int(row["time"]))
                writer.writerow(["" if values.get(c) is None else _text(values.get(c)) for c in header])
                rows += 1
            pages += 1
            progress(
                f"train: read {rows:,} rows of {source.measurement} up to {influx.format_time(page_end)} "
                f"({100 * (page_end - start_ns) / (end_ns - start_ns):.0f}%)"
            )
            page_start = page_end
    if rows == 0:
        raise TickguardError(
            f"no rows of {source.measurement!r} in {source.database!r} between {influx.format_time(start_ns)} "
            f"and {influx.format_time(end_ns)}" + (f" with tags {dict(source.tags)}" if source.tags else "")
        )
    return {
        "source": "influxdb",
        "url": client.url,
        "database": source.database,
        "retention_policy": source.retention_policy,
        "measurement": source.measurement,
        "start": influx.format_time(start_ns),
        "end": influx.format_time(end_ns),
        "pages": pages,
        "page": page,
        "time_from_timestamps": time_from_stamp,
    }


def _text(value: object) -> str:
    """A CSV cell: floats in repr (exact round trip), booleans as true/false, the rest as str."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def load_source_frame(
    spec: DetectorSpec,
    client: influx.InfluxClient,
    start: str,
    end: str,
    work_dir: Path,
    *,
    page: str = DEFAULT_PAGE,
    progress: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """(frame, description) of the detector's rows in [start, end), loaded as its CSV would be.

    The intermediate CSV lives in `work_dir` only while it is loaded; its sha256 is in the description.
    """
    from tickguard import modelstore
    from tickguard.data import load_detector_frame

    csv_path = Path(work_dir) / f".{spec.name}-from-influx.csv"
    try:
        info = export_source_csv(spec, client, start, end, csv_path, page=page, progress=progress)
        frame = load_detector_frame(spec, csv_path)
        info["sha256"] = modelstore.sha256_of(csv_path)
    finally:
        csv_path.unlink(missing_ok=True)
    info["file"] = None
    return frame, info
