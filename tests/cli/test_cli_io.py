"""``produce`` and ``consume`` against a real broker: JSONL, Parquet and text, both ways."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from streamsynth.cli.io import make_id
from streamsynth.cli.main import app

pytestmark = pytest.mark.integration


def _produce(runner: CliRunner, bootstrap: str, topic: str, *args: str) -> str:
    result = runner.invoke(
        app, ["produce", *args, "-t", topic, "-b", bootstrap, "--partitions", "2"]
    )
    assert result.exit_code == 0, result.stderr
    return result.stderr


def _consume_jsonl(runner: CliRunner, bootstrap: str, topic: str, *args: str) -> list[Any]:
    result = runner.invoke(app, ["consume", topic, "-b", bootstrap, "--idle-timeout", "1", *args])
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_jsonl_round_trip_generates_missing_ids(
    runner: CliRunner, bootstrap: str, tmp_path: Path
) -> None:
    src = tmp_path / "docs.jsonl"
    rows = [
        {"id": "kept-1", "text": "first document", "lang": "en"},
        {"text": "second document has no id"},
        {"id": "", "text": "third has an empty id"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")  # a blank line too
    err = _produce(runner, bootstrap, "cli.jsonl", str(src))
    assert "produced 3 records to cli.jsonl (2 ids generated)" in err

    out = tmp_path / "out.jsonl"
    result = runner.invoke(
        app, ["consume", "cli.jsonl", "-b", bootstrap, "-o", str(out), "--idle-timeout", "1"]
    )
    assert result.exit_code == 0, result.stderr
    got = {r["text"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(got) == {r["text"] for r in rows}
    assert got["first document"] == rows[0]
    assert got["second document has no id"]["id"] == make_id("second document has no id")
    assert got["third has an empty id"]["id"] == make_id("third has an empty id")


def test_parquet_in_and_out_with_metadata(
    runner: CliRunner, bootstrap: str, tmp_path: Path
) -> None:
    src = tmp_path / "docs.parquet"
    pq.write_table(
        pa.table({"doc": ["alpha text", "beta text", "gamma text"], "id": ["a", None, "c"]}), src
    )
    _produce(runner, bootstrap, "cli.parquet", str(src), "--text-field", "doc")
    out = tmp_path / "out.parquet"
    result = runner.invoke(
        app,
        ["consume", "cli.parquet", "-b", bootstrap, "-o", str(out), "--with-metadata",
         "--idle-timeout", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(out).to_pylist()
    assert sorted(r["doc"] for r in table) == ["alpha text", "beta text", "gamma text"]
    by_doc = {r["doc"]: r for r in table}
    assert by_doc["beta text"]["id"] == make_id("beta text")
    meta = by_doc["alpha text"]["_kafka"]
    # Records are keyed by id: the key is what partitions them.
    assert meta["topic"] == "cli.parquet" and meta["key"] == "a"
    assert meta["partition"] in (0, 1) and meta["offset"] >= 0


def test_text_files_by_file_and_by_paragraph(
    runner: CliRunner, bootstrap: str, tmp_path: Path
) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("Paragraph one.\nStill one.\n\nParagraph two.\n")
    (folder / "b.md").write_text("Only paragraph.\n")
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    _produce(runner, bootstrap, "cli.text.files", str(folder))
    whole = _consume_jsonl(runner, bootstrap, "cli.text.files")
    assert sorted(r["text"] for r in whole) == [
        "Only paragraph.",
        "Paragraph one.\nStill one.\n\nParagraph two.",
    ]
    assert {r["source"] for r in whole} == {"a.txt", "b.md"}

    _produce(runner, bootstrap, "cli.text.paras", str(folder / "a.txt"), "--text-unit", "paragraph")
    paras = _consume_jsonl(runner, bootstrap, "cli.text.paras")
    assert sorted(r["text"] for r in paras) == ["Paragraph one.\nStill one.", "Paragraph two."]
    assert all(r["id"] == make_id(r["text"]) for r in paras)


def test_consume_stops_after_max_records_and_groups_resume(
    runner: CliRunner, bootstrap: str, tmp_path: Path
) -> None:
    src = tmp_path / "many.jsonl"
    src.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": f"doc {i}"}) + "\n" for i in range(12))
    )
    _produce(runner, bootstrap, "cli.many", str(src))
    first = _consume_jsonl(runner, bootstrap, "cli.many", "-n", "5", "--group-id", "g")
    assert len(first) == 5
    # The group committed what it wrote: the next run gets exactly the other seven.
    rest = _consume_jsonl(runner, bootstrap, "cli.many", "--group-id", "g")
    assert len(rest) == 7
    assert {r["id"] for r in first + rest} == {f"d{i}" for i in range(12)}
    # Without a group nothing is committed: every record again, from the beginning.
    assert len(_consume_jsonl(runner, bootstrap, "cli.many")) == 12


def test_producing_twice_gives_the_same_ids(
    runner: CliRunner, bootstrap: str, tmp_path: Path
) -> None:
    src = tmp_path / "plain.txt"
    src.write_text("a line\nanother line\n")
    for _ in range(2):
        _produce(runner, bootstrap, "cli.twice", str(src), "--text-unit", "line")
    rows = _consume_jsonl(runner, bootstrap, "cli.twice")
    assert len(rows) == 4
    assert {r["id"] for r in rows} == {make_id("a line"), make_id("another line")}
