"""DocumentBatch: a pyarrow table of documents plus where each row came from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa


@dataclass(frozen=True, slots=True)
class SourceRef:
    """The Kafka coordinates of the record a row was read from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    timestamp_ms: int | None = None


#: Columns that carry each row's source coordinates inside the table.
SOURCE_COLUMNS: tuple[str, ...] = (
    "_src_topic",
    "_src_partition",
    "_src_offset",
    "_src_key",
    "_src_timestamp_ms",
)

_SOURCE_SCHEMA = pa.schema(
    [
        ("_src_topic", pa.string()),
        ("_src_partition", pa.int32()),
        ("_src_offset", pa.int64()),
        ("_src_key", pa.binary()),
        ("_src_timestamp_ms", pa.int64()),
    ]
)


@dataclass
class DocumentBatch:
    """A batch of documents backed by a :class:`pyarrow.Table`.

    Source coordinates live in the reserved ``_src_*`` columns so that they follow
    rows through filters and explosions; :meth:`to_pandas` and :meth:`to_pyarrow`
    hide them unless asked.
    """

    data: pa.Table
    dataset_name: str = "streamsynth"
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_records(
        cls,
        records: Sequence[Mapping[str, Any]],
        sources: Sequence[SourceRef | None] | None = None,
        *,
        dataset_name: str = "streamsynth",
    ) -> DocumentBatch:
        if sources is not None and len(sources) != len(records):
            raise ValueError(f"{len(sources)} sources for {len(records)} records")
        table = pa.Table.from_pylist([dict(r) for r in records]) if records else pa.table({})
        if sources is not None:
            table = _with_sources(table, sources)
        return cls(table, dataset_name=dataset_name)

    @classmethod
    def from_pandas(cls, df: pd.DataFrame, *, dataset_name: str = "streamsynth") -> DocumentBatch:
        return cls(pa.Table.from_pandas(df, preserve_index=False), dataset_name=dataset_name)

    @property
    def num_items(self) -> int:
        return int(self.data.num_rows)

    def __len__(self) -> int:
        return self.num_items

    @property
    def columns(self) -> list[str]:
        return [c for c in self.data.column_names if c not in SOURCE_COLUMNS]

    def has_sources(self) -> bool:
        return "_src_offset" in self.data.column_names

    def to_pyarrow(self, *, include_sources: bool = False) -> pa.Table:
        if include_sources or not self.has_sources():
            return self.data
        return self.data.drop_columns([c for c in SOURCE_COLUMNS if c in self.data.column_names])

    def to_pandas(self, *, include_sources: bool = False) -> pd.DataFrame:
        df: pd.DataFrame = self.to_pyarrow(include_sources=include_sources).to_pandas()
        return df

    def to_records(self) -> list[dict[str, Any]]:
        """Rows as dicts, without the source columns."""
        return list(self.to_pyarrow().to_pylist())

    def sources(self) -> list[SourceRef | None]:
        if not self.has_sources():
            return [None] * self.num_items
        cols = {name: self.data.column(name).to_pylist() for name in SOURCE_COLUMNS}
        out: list[SourceRef | None] = []
        for i in range(self.num_items):
            topic = cols["_src_topic"][i]
            if topic is None:
                out.append(None)
                continue
            out.append(
                SourceRef(
                    topic=topic,
                    partition=cols["_src_partition"][i],
                    offset=cols["_src_offset"][i],
                    key=cols["_src_key"][i],
                    timestamp_ms=cols["_src_timestamp_ms"][i],
                )
            )
        return out

    def with_rows(
        self,
        records: Sequence[Mapping[str, Any]],
        sources: Sequence[SourceRef | None] | None = None,
    ) -> DocumentBatch:
        """A new batch with the same name and metadata and the given rows."""
        out = DocumentBatch.from_records(records, sources, dataset_name=self.dataset_name)
        out.metadata = dict(self.metadata)
        return out


def _with_sources(table: pa.Table, sources: Iterable[SourceRef | None]) -> pa.Table:
    rows = list(sources)
    arrays = [
        pa.array([s.topic if s else None for s in rows], pa.string()),
        pa.array([s.partition if s else None for s in rows], pa.int32()),
        pa.array([s.offset if s else None for s in rows], pa.int64()),
        pa.array([s.key if s else None for s in rows], pa.binary()),
        pa.array([s.timestamp_ms if s else None for s in rows], pa.int64()),
    ]
    for name, arr in zip(_SOURCE_SCHEMA.names, arrays, strict=True):
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, arr)
    return table
