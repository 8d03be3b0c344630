"""etl.parquet: the rejects file's layout (the rest is exercised end to end in
test_pipeline and test_split)."""

from __future__ import annotations

import pyarrow.parquet as pq

from etl.parquet import REJECT_SCHEMA, RejectWriter, merge_rejects
from etl.parse import RejectedLine


def _column_meta(path: str) -> dict:
    meta = pq.ParquetFile(path).metadata
    return {meta.schema.column(i).name: meta.row_group(0).column(i)
            for i in range(meta.num_columns)}


def test_rejected_lines_get_no_dictionary_and_no_statistics(tmp_path):
    """Each raw line is its own value: no dictionary, and no min/max statistics, which
    copied every value several times (a 296 MB line: 4.4 s and 2.3 GB to write, 0.4 s and
    0.9 GB without). The other columns keep theirs, and the lines come back byte for
    byte, through a split shard's merge as well."""
    big = b"[" + b"1," * 3_000_000 + b"1]"
    rejects = [RejectedLine(1, 0, "not_object", "expected a JSON object", big),
               RejectedLine(2, len(big) + 1, "invalid_json", "unexpected end", b"{\xff")]
    writer = RejectWriter(str(tmp_path), "s1", "a/s1.ndjson", part=0)
    writer.write(rejects)
    part = writer.finished()
    writer.close()
    check_rejects_file(part, [big, b"{\xff"])
    merged = str(tmp_path / merge_rejects(str(tmp_path), "s1", [(part, 10, 100)]))
    check_rejects_file(merged, [big, b"{\xff"])
    assert pq.read_table(merged).column("line_no").to_pylist() == [11, 12]


def check_rejects_file(path: str, lines: list[bytes]) -> None:
    columns = _column_meta(path)
    line = columns["line"]
    assert not line.is_stats_set
    assert not any("DICTIONARY" in e for e in line.encodings)
    assert columns["reason"].is_stats_set and columns["line_no"].is_stats_set
    assert any("DICTIONARY" in e for e in columns["reason"].encodings)
    table = pq.read_table(path)
    assert table.schema == REJECT_SCHEMA
    assert table.column("line").to_pylist() == lines
