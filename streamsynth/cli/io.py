"""``streamsynth produce`` (files -> topic) and ``streamsynth consume`` (topic -> file)."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.markup import escape

from streamsynth.cli.common import (
    BootstrapOption,
    ConfigOption,
    KafkaTarget,
    kafka_failure,
    kafka_target,
    progress,
    quiet_kafka_logs,
    start_kafka_client,
    unreachable,
)
from streamsynth.cli.errors import RUNTIME, USAGE, CliError, err_console

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from streamsynth.kafka.connection import KafkaConnection

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")
TEXT_SUFFIXES = (".txt", ".md", ".text")
#: How many sends may be outstanding before we wait for their acknowledgements.
SEND_WINDOW = 1000


class InputFormat(StrEnum):
    auto = "auto"
    jsonl = "jsonl"
    parquet = "parquet"
    text = "text"


class OutputFormat(StrEnum):
    auto = "auto"
    jsonl = "jsonl"
    parquet = "parquet"


class TextUnit(StrEnum):
    file = "file"
    paragraph = "paragraph"
    line = "line"


def make_id(text: str) -> str:
    """A stable id from the content: producing the same file twice gives the same ids."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# -- reading input files ----------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    path: Path
    fmt: InputFormat


def _format_of(path: Path, fmt: InputFormat) -> InputFormat:
    if fmt is not InputFormat.auto:
        return fmt
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return InputFormat.jsonl
    if suffix in PARQUET_SUFFIXES:
        return InputFormat.parquet
    return InputFormat.text


def resolve_inputs(paths: list[Path], fmt: InputFormat) -> list[Source]:
    """Files as given; directories expand to the files in them with a known suffix."""
    known = JSONL_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES
    sources: list[Source] = []
    for path in paths:
        if not path.exists():
            raise CliError(f"input not found: {path}")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in known)
            if not found:
                raise CliError(f"{path}: no .jsonl, .parquet or .txt files in this directory")
            sources.extend(Source(p, _format_of(p, fmt)) for p in found)
        else:
            sources.append(Source(path, _format_of(path, fmt)))
    return sources


def _jsonl_rows(path: Path, text_field: str) -> Iterator[dict[str, Any]]:
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise CliError(f"{path}:{lineno}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise CliError(f"{path}:{lineno}: each line must be a JSON object")
            if not isinstance(row.get(text_field), str):
                raise CliError(f"{path}:{lineno}: no text field {text_field!r} (see --text-field)")
            yield row


def _parquet_rows(path: Path, text_field: str) -> Iterator[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CliError(f"{path}: not a readable Parquet file ({exc})") from None
    if text_field not in pf.schema_arrow.names:
        names = ", ".join(pf.schema_arrow.names)
        raise CliError(f"{path}: no column {text_field!r} (columns: {names}; see --text-field)")
    for batch in pf.iter_batches(batch_size=4096):
        yield from batch.to_pylist()


def _text_rows(path: Path, text_field: str, unit: TextUnit) -> Iterator[dict[str, Any]]:
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{path}: not UTF-8 text (use --format for JSONL or Parquet)") from None
    if unit is TextUnit.file:
        pieces = [content.strip()]
    elif unit is TextUnit.paragraph:
        pieces = [p.strip() for p in content.split("\n\n")]
    else:
        pieces = [p.strip() for p in content.splitlines()]
    for piece in pieces:
        if piece:
            yield {text_field: piece, "source": path.name}


def iter_rows(src: Source, text_field: str, unit: TextUnit) -> Iterator[dict[str, Any]]:
    if src.fmt is InputFormat.jsonl:
        return _jsonl_rows(src.path, text_field)
    if src.fmt is InputFormat.parquet:
        return _parquet_rows(src.path, text_field)
    return _text_rows(src.path, text_field, unit)


def count_rows(sources: list[Source], text_field: str, unit: TextUnit) -> int:
    """Count (and so validate) every record before the first one is sent.

    A bad line found half-way would otherwise leave a partly produced topic.
    """
    total = 0
    for src in sources:
        if src.fmt is InputFormat.parquet:
            import pyarrow.parquet as pq

            next(iter(_parquet_rows(src.path, text_field)), None)  # checks the columns
            total += pq.ParquetFile(src.path).metadata.num_rows
        else:
            total += sum(1 for _ in iter_rows(src, text_field, unit))
    return total


def with_id(row: dict[str, Any], id_field: str, text_field: str) -> tuple[dict[str, Any], bool]:
    """``row`` with an id (generated from the text when missing or empty)."""
    value = row.get(id_field)
    if value is None or value == "":
        row[id_field] = make_id(str(row.get(text_field) or ""))
        return row, True
    return row, False


# -- produce ----------------------------------------------------------------------------


@dataclass
class ProduceResult:
    records: int = 0
    generated_ids: int = 0


async def produce_rows(
    sources: list[Source],
    *,
    topic: str,
    kafka: KafkaConnection,
    id_field: str = "id",
    text_field: str = "text",
    unit: TextUnit = TextUnit.file,
    create_partitions: int | None = 4,
    timeout_s: float = 30.0,
    show_progress: bool = True,
) -> ProduceResult:
    """Send every record of ``sources`` to ``topic``, keyed by id, and wait for the acks."""
    total = count_rows(sources, text_field, unit)
    if create_partitions:
        await _create_topic(kafka, topic, create_partitions, timeout_s)
    producer = build_producer(kafka, timeout_s)
    await start_kafka_client(producer, kafka, timeout_s)
    result = ProduceResult()
    try:
        with progress() as bar:
            task = bar.add_task(f"produce -> {escape(topic)}", total=total, visible=show_progress)
            pending: list[asyncio.Future[Any]] = []
            for src in sources:
                for raw in iter_rows(src, text_field, unit):
                    row, generated = with_id(raw, id_field, text_field)
                    result.generated_ids += generated
                    value = orjson.dumps(row, default=str)
                    key = str(row[id_field]).encode("utf-8")
                    pending.append(await producer.send(topic, value=value, key=key))
                    if len(pending) >= SEND_WINDOW:
                        result.records += await _acked(pending, bar, task)
            result.records += await _acked(pending, bar, task)
    finally:
        await producer.stop()
    return result


async def _acked(pending: list[asyncio.Future[Any]], bar: Any, task: Any) -> int:
    await asyncio.gather(*pending)
    n = len(pending)
    bar.advance(task, n)
    pending.clear()
    return n


def build_producer(kafka: KafkaConnection, timeout_s: float) -> AIOKafkaProducer:
    """The producer of ``streamsynth produce`` (security settings from ``kafka``)."""
    return kafka.producer(acks="all", linger_ms=5, request_timeout_ms=int(timeout_s * 1000))


async def _create_topic(
    kafka: KafkaConnection, topic: str, partitions: int, timeout_s: float
) -> None:
    from aiokafka.errors import KafkaError

    from streamsynth.kafka.admin import create_topics

    quiet_kafka_logs()
    try:
        await asyncio.wait_for(create_topics(kafka, {topic: partitions}), timeout=timeout_s)
    except (TimeoutError, OSError) as exc:
        raise unreachable(kafka, exc) from exc
    except KafkaError as exc:
        raise kafka_failure(kafka, exc) from exc


def produce_command(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="JSONL, Parquet or text files, or directories of them."),
    ],
    topic: Annotated[
        str | None,
        typer.Option(
            "--topic", "-t", help="Topic to write to (default: the --config input_topic)."
        ),
    ] = None,
    config: ConfigOption = None,
    bootstrap_servers: BootstrapOption = None,
    fmt: Annotated[
        InputFormat,
        typer.Option("--format", "-f", help="Input format; auto picks it from the suffix."),
    ] = InputFormat.auto,
    id_field: Annotated[
        str | None,
        typer.Option(
            help="Id field; missing ids are generated from the text (SHA-256). "
            "Default: the --config record.id_field, else 'id'."
        ),
    ] = None,
    text_field: Annotated[
        str | None,
        typer.Option(
            help="Field holding the document text. Default: the --config record.text_field, "
            "else 'text'."
        ),
    ] = None,
    text_unit: Annotated[
        TextUnit, typer.Option(help="For text files: one record per file, paragraph or line.")
    ] = TextUnit.file,
    create_topic: Annotated[
        bool, typer.Option(help="Create the topic if it does not exist.")
    ] = True,
    partitions: Annotated[
        int, typer.Option(min=1, help="Partitions of a topic this command creates.")
    ] = 4,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for the broker before giving up.")
    ] = 30.0,
) -> None:
    """Send documents from files to a Kafka topic (one record per document, keyed by id).

    Every record is checked before the first is sent, so a bad line leaves the topic
    untouched. Records are JSON objects with at least the id and text fields.
    """
    target = kafka_target(config, bootstrap_servers, client_id="streamsynth-produce")
    topic = topic or _input_topic(target)
    record = target.settings.record if target.settings is not None else None
    sources = resolve_inputs(inputs, fmt)
    result = asyncio.run(
        produce_rows(
            sources,
            topic=topic,
            kafka=target.connection,
            id_field=id_field or (record.id_field if record else "id"),
            text_field=text_field or (record.text_field if record else "text"),
            unit=text_unit,
            create_partitions=partitions if create_topic else None,
            timeout_s=timeout,
        )
    )
    err_console().print(
        f"[green]produced {result.records} records to {escape(topic)}[/]"
        f" ({result.generated_ids} ids generated)"
    )


def _input_topic(target: KafkaTarget) -> str:
    if target.settings is None:
        raise CliError("missing option '--topic' (or give --config to use its input topic)")
    return target.settings.kafka.input_topics[0]


# -- consume ----------------------------------------------------------------------------


class _JsonlSink:
    def __init__(self, out: IO[bytes]) -> None:
        self.out = out

    def write(self, row: dict[str, Any]) -> None:
        self.out.write(orjson.dumps(row, default=str) + b"\n")

    def close(self) -> None:
        self.out.flush()


class _ParquetSink:
    """Parquet wants one schema: rows are gathered and written once, at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pq.write_table(pa.Table.from_pylist(self.rows), self.path)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise CliError(
                f"these records cannot be one Parquet table, write JSONL instead ({exc})", RUNTIME
            ) from None


def _row_of(msg: Any, with_metadata: bool) -> dict[str, Any]:
    value: Any = None
    if msg.value is not None:
        try:
            value = orjson.loads(msg.value)
        except orjson.JSONDecodeError:
            value = msg.value.decode("utf-8", errors="replace")
    row: dict[str, Any] = value if isinstance(value, dict) else {"value": value}
    if with_metadata:
        meta: dict[str, Any] = {
            "topic": msg.topic,
            "partition": msg.partition,
            "offset": msg.offset,
            "timestamp_ms": msg.timestamp,
            "key": msg.key.decode("utf-8", errors="replace") if msg.key is not None else None,
        }
        if msg.headers:
            # Parquet cannot store an empty struct: headers appear only when there are some.
            meta["headers"] = {k: v.decode("utf-8", errors="replace") for k, v in msg.headers}
        row["_kafka"] = meta
    return row


@dataclass
class ConsumeOptions:
    topic: str
    kafka: KafkaConnection
    group_id: str | None = None
    max_records: int | None = None
    idle_timeout_s: float = 10.0
    with_metadata: bool = False
    timeout_s: float = 30.0
    show_progress: bool = True


async def consume_rows(opts: ConsumeOptions, sink: _JsonlSink | _ParquetSink) -> int:
    """Copy records from the topic into ``sink`` until ``max_records`` or an idle timeout."""
    from aiokafka import TopicPartition

    consumer = build_consumer(opts)
    await start_kafka_client(consumer, opts.kafka, opts.timeout_s)
    try:
        if opts.topic not in await consumer.topics():
            where = opts.kafka.bootstrap_servers
            raise CliError(f"topic {opts.topic!r} does not exist on {where}", USAGE)
        if opts.group_id:
            consumer.subscribe([opts.topic])
        else:
            parts = consumer.partitions_for_topic(opts.topic) or set()
            tps = [TopicPartition(opts.topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
        return await _copy(consumer, opts, sink)
    finally:
        await consumer.stop()


def build_consumer(opts: ConsumeOptions) -> AIOKafkaConsumer:
    """The consumer of ``streamsynth consume`` (security settings from ``opts.kafka``)."""
    return opts.kafka.consumer(
        group_id=opts.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=int(opts.timeout_s * 1000),
        # A CLI run is short: a short session lets the next run's join finish sooner when
        # the broker did not register this one's leave (Tansu waits out the session).
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        rebalance_timeout_ms=6000,
    )


async def _copy(consumer: Any, opts: ConsumeOptions, sink: _JsonlSink | _ParquetSink) -> int:
    from aiokafka import TopicPartition

    count = 0
    idle_since: float | None = None
    with progress() as bar:
        task = bar.add_task(
            f"consume <- {escape(opts.topic)}", total=opts.max_records, visible=opts.show_progress
        )
        while opts.max_records is None or count < opts.max_records:
            batches = await consumer.getmany(timeout_ms=200, max_records=1000)
            messages = [m for msgs in batches.values() for m in msgs]
            if not messages:
                # The idle clock starts once partitions are assigned: a group join is not idle.
                if consumer.assignment():
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since >= opts.idle_timeout_s:
                        break
                continue
            idle_since = None
            if opts.max_records is not None:
                messages = messages[: opts.max_records - count]
            positions: dict[TopicPartition, int] = {}
            for msg in messages:
                sink.write(_row_of(msg, opts.with_metadata))
                positions[TopicPartition(msg.topic, msg.partition)] = msg.offset + 1
            count += len(messages)
            bar.advance(task, len(messages))
            if opts.group_id:
                await consumer.commit(positions)
    return count


def consume_command(
    topic: Annotated[str, typer.Argument(help="Topic to read.")],
    output: Annotated[
        str,
        typer.Option("--output", "-o", help="File to write, or - for JSONL on stdout."),
    ] = "-",
    config: ConfigOption = None,
    bootstrap_servers: BootstrapOption = None,
    fmt: Annotated[
        OutputFormat,
        typer.Option("--format", "-f", help="Output format; auto picks it from the suffix."),
    ] = OutputFormat.auto,
    max_records: Annotated[
        int | None, typer.Option("--max-records", "-n", min=1, help="Stop after N records.")
    ] = None,
    idle_timeout: Annotated[
        float,
        typer.Option(min=0.0, help="Stop when no record arrives for this many seconds."),
    ] = 10.0,
    group_id: Annotated[
        str | None,
        typer.Option(
            help="Consume as this consumer group and commit; without it, read every "
            "partition from the beginning and commit nothing."
        ),
    ] = None,
    with_metadata: Annotated[
        bool, typer.Option(help="Add a _kafka field: topic, partition, offset, key, headers.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for the broker before giving up.")
    ] = 30.0,
) -> None:
    """Copy records from a Kafka topic into a JSONL or Parquet file.

    Stops after --max-records records or when the topic has been idle for --idle-timeout
    seconds. JSON object values are written as they are; others as {"value": ...}.
    """
    target = kafka_target(config, bootstrap_servers, client_id="streamsynth-consume")
    to_stdout = output == "-"
    out_fmt = fmt
    if out_fmt is OutputFormat.auto:
        is_parquet = not to_stdout and Path(output).suffix.lower() in PARQUET_SUFFIXES
        out_fmt = OutputFormat.parquet if is_parquet else OutputFormat.jsonl
    if to_stdout and out_fmt is OutputFormat.parquet:
        raise CliError("--format parquet needs --output FILE (stdout gets JSONL only)")
    if not to_stdout and not Path(output).parent.is_dir():
        raise CliError(f"--output: directory {Path(output).parent} does not exist")
    opts = ConsumeOptions(
        topic=topic,
        kafka=target.connection,
        group_id=group_id,
        max_records=max_records,
        idle_timeout_s=idle_timeout,
        with_metadata=with_metadata,
        timeout_s=timeout,
    )
    count = _consume_to(output, out_fmt, opts)
    where = "stdout" if to_stdout else output
    err_console().print(f"[green]consumed {count} records from {escape(topic)} to {where}[/]")


def _consume_to(output: str, fmt: OutputFormat, opts: ConsumeOptions) -> int:
    if fmt is OutputFormat.parquet:
        parquet = _ParquetSink(Path(output))
        count = asyncio.run(consume_rows(opts, parquet))
        parquet.close()
        return count
    if output == "-":
        sink = _JsonlSink(sys.stdout.buffer)
        try:
            return asyncio.run(consume_rows(opts, sink))
        finally:
            sink.close()
    with Path(output).open("wb") as fh:
        sink = _JsonlSink(fh)
        return asyncio.run(consume_rows(opts, sink))
