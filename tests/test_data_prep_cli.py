"""data_prep.py end to end on the shipped synthetic sample, with UltraChat prompts from JSONL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_on_the_shipped_sample(tmp_path):
    ultrachat = tmp_path / "ultrachat.jsonl"
    rows = [{"prompt": p, "prompt_id": str(i), "messages": [{"role": "user", "content": p}]}
            for i, p in enumerate(["How do tides work?", "how do  tides work?", "Write a haiku about rain."])]
    ultrachat.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(ROOT / "data_prep.py"), "--input", str(ROOT / "data" / "sample"),
                          "--out", str(out), "--ultrachat", str(ultrachat)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["records_kept"] + stats["records_skipped"] == stats["records_read"] > 2000
    assert f"read {stats['records_read']:,} records" in run.stdout and "rewarding rate" in run.stdout
    train = [json.loads(line) for f in sorted(out.glob("train-*.jsonl")) for line in f.read_text().splitlines()]
    assert len(train) == stats["splits"]["train"]["examples"] > 500
    assert 0.3 < stats["splits"]["train"]["rewarding_rate"] < 0.7
    assert {"id", "split", "thread_id", "messages", "response", "label", "score", "parent_score", "siblings",
            "meta"} <= set(train[0])
    prompts = [json.loads(line) for line in (out / "prompts-ultrachat.jsonl").read_text().splitlines()]
    assert [p["messages"][0]["content"] for p in prompts] == ["How do tides work?", "Write a haiku about rain."]
    assert stats["ultrachat"]["skipped"] == {"duplicate": 1}
    assert len((out / "prompts-reddit.jsonl").read_text().splitlines()) == stats["reddit_prompts"] > 0


def test_missing_ultrachat_path_fails_before_the_reddit_pass(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(ROOT / "data_prep.py"), "--input", str(ROOT / "data" / "sample"),
                          "--out", str(out), "--ultrachat", str(tmp_path / "missing")],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith(f"data_prep.py: error: {tmp_path / 'missing'}: no such file")
    assert not out.exists()  # nothing written: the error came before the Reddit pass
