"""karma/records.py: JSONL and parquet rows with every bad line or row named by file and place."""

import gc
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from karma.records import Skips, jsonl_objects, jsonl_rows, parquet_rows


def test_jsonl_rows_name_each_bad_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": \n[1, 2]\n{"a": NaN}\n{"a": "\xff"}\n{"b": 2}\n')
    assert list(jsonl_rows(path)) == [
        (f"{path}:1", {"a": 1}, None), (f"{path}:3", None, "malformed_json"), (f"{path}:4", None, "not_an_object"),
        (f"{path}:5", None, "malformed_json"),  # NaN is not JSON
        (f"{path}:6", None, "malformed_json"),  # invalid UTF-8
        (f"{path}:7", {"b": 2}, None)]
    skips = Skips()
    assert [obj for _, obj in jsonl_objects(path, skips)] == [{"a": 1}, {"b": 2}]
    assert skips.report() == {"skipped": {"malformed_json": 3, "not_an_object": 1},
                              "skip_locations": {"malformed_json": [f"{path}:3", f"{path}:5", f"{path}:6"],
                                                 "not_an_object": [f"{path}:4"]}}


def test_parquet_rows_read_in_batches_and_name_rows(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"x": list(range(5)), "y": list("abcde"), "unused": [0] * 5}), path)
    rows = list(parquet_rows(path, ("x", "y", "missing"), batch_rows=2))
    assert rows == [(f"{path}:row {i}", {"x": i, "y": "abcde"[i]}, None) for i in range(5)]
    with pytest.raises(ValueError, match=r"rows\.parquet: no 'z' or 'w' column"):
        list(parquet_rows(path, ("z",), 2, required_any=("z", "w")))


def test_parquet_conversion_errors_name_the_file_and_row(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"x": list(range(5))}), path)

    def to_rows(batch):  # fails on the fourth row, in the second batch
        for row in batch.to_pylist():
            if row["x"] == 3:
                raise ValueError("cannot convert")
            yield row
    with pytest.raises(ValueError, match=r"rows\.parquet: unreadable parquet data at row 3 \(cannot convert\)"):
        list(parquet_rows(path, ("x",), 2, to_rows=to_rows))
    # pyarrow's own conversion failing (a time zone it does not know) is reported the same way
    zoned = tmp_path / "zoned.parquet"
    pq.write_table(pa.table({"t": pa.array([0, 1], pa.timestamp("s", tz="Mars/Olympus"))}), zoned)
    with pytest.raises(ValueError, match=r"zoned\.parquet: unreadable parquet data at row 0"):
        list(parquet_rows(zoned, ("t",), 2))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_readers_close_their_file_when_the_consumer_stops(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"a": 1}\n{"a": 2}\n')
    pq.write_table(pa.table({"x": [1, 2, 3]}), tmp_path / "rows.parquet")
    before = len(os.listdir("/proc/self/fd"))
    for rows in (jsonl_rows(tmp_path / "rows.jsonl"), parquet_rows(tmp_path / "rows.parquet", ("x",), 1)):
        next(rows)
        rows.close()
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before
