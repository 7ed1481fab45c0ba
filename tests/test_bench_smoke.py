"""The benchmark still runs: `python -m bench --quick` on its cheapest cases writes a table and
a JSON whose figures come from both sides of each comparison."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def test_quick_bench_writes_table_and_json(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "cpu", "staleness",
         "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"cpu", "cores", "ram_gb", "date", "versions"} <= results["machine"].keys()
    assert {"python", "refreshd", "gpg", "parcimonie"} <= results["machine"]["versions"].keys()
    cases = {c["name"]: c for c in results["cases"]}
    assert set(cases) == {"cpu", "staleness"}
    for case in cases.values():
        assert "error" not in case
        for row in case["rows"]:
            for side in ("refreshd", "peer"):
                figure = row[side]
                assert figure["min"] <= figure["median"] <= figure["max"]
                assert figure["min"] == min(figure["values"])
            assert row["ratio"] == pytest.approx(row["refreshd"]["median"] / row["peer"]["median"])
    assert all(v > 0 for r in cases["cpu"]["rows"] for v in r["peer"]["values"])
    table = (tmp_path / "results.md").read_text()
    assert table in done.stdout
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + sum(len(c["rows"]) for c in cases.values())
