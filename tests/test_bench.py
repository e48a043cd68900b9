"""The benchmarks run end to end on the CPU (their figures come from the GPU; see bench/results)."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, SHAKESPEARE


def run_bench(*args):
    out = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_train_speed_bench_writes_rows_and_ratios(tmp_path):
    out = tmp_path / "speed.json"
    run_bench("bench/train_speed.py", "--preset", "tiny", "--steps", "1", "--warmup", "1", "--micro-batch", "2",
              "--only", "nimllm", "reference eager", "--out", out)
    result = json.loads(out.read_text())
    rows = {r["config"]: r for r in result["rows"]}
    assert set(rows) == {"nimllm", "reference eager"}
    assert rows["nimllm"]["tokens_per_s"] > 0 and rows["reference eager"]["vs_reference"] == 1.0


def test_quality_bench_scores_the_shakespeare_split(tmp_path):
    if not SHAKESPEARE.exists():
        pytest.skip("needs ../shared/data/tinyshakespeare.txt")
    out = tmp_path / "quality.json"
    run_bench("bench/quality.py", "--preset", "tiny", "--steps", "10", "--vocab-size", "300", "--out", out)
    row = json.loads(out.read_text())["rows"][0]
    assert row["val_chars"] == 111540 and 0 < row["val_bits_per_char"] < 8


def test_memory_bench_teaches_and_scores_facts(tmp_path):
    from conftest import real_text
    (tmp_path / "corpus.txt").write_text(real_text(100_000))
    run_bench("-m", "nimllm.cli", "train", tmp_path / "corpus.txt", "--model", tmp_path / "model",
                    "--preset", "tiny", "--vocab-size", "300", "--steps", "5")
    result = tmp_path / "memory.json"
    run_bench("bench/memory.py", "--model", tmp_path / "model", "--k", "1", "2", "--variants", "mask+ewc", "full",
              "--steps", "2", "--out", result)
    rows = json.loads(result.read_text())["rows"]
    assert [(r["variant"], r["k"]) for r in rows] == [("mask+ewc", 1), ("mask+ewc", 2), ("full", 1), ("full", 2)]
    assert all(0 <= r["recall"] <= 1 and r["base_val_bpb"] > 0 for r in rows)
    assert rows[2]["mask_fraction"] == 1.0 and rows[2]["ewc_lambda"] == 0.0
    run_bench("bench/memory.py", "--model", tmp_path / "model", "--k", "1", "--variants", "ewc", "--steps", "1",
              "--fade-or-stay", "21", "--out", result)
    curve = json.loads(result.read_text())["fade_or_stay"][0]["curve"]
    assert [c["taught"] for c in curve].count("R") == 7 and len(curve) == 21
    assert curve[0]["O1_retained"] == 1.0 or abs(curve[0]["O1_retained"] - 1.0) < 1e-4   # just learned: all of it
    assert curve[0]["R_retained"] is None and curve[-1]["R_retained"] is not None
