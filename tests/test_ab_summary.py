"""benchmarks/ab_summary.py: two builds' ratio rows compared, medians over alternated runs."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import ab_summary  # noqa: E402

HEADER = "op,provider,mode,metric,unit,size,p50,device,isa,torch,timestamp,commit\n"


def _csv(tmp_path, name, ratio, commit):
    path = tmp_path / name
    path.write_text(HEADER + f"loss,F.cross_entropy,fb,time,ms,s,4.0,CPU X,AVX2,2.13,2026,{commit}\n"
                    f"loss,unimri / CE,fb,ratio,x,s,{ratio},CPU X,AVX2,2.13,2026,{commit}\n")
    return str(path)


def test_medians_and_ratio_of_two_builds(tmp_path):
    runs = [("before", _csv(tmp_path, "b1.csv", 0.20, "a" * 40)), ("after", _csv(tmp_path, "a1.csv", 0.18, "b" * 40)),
            ("before", _csv(tmp_path, "b2.csv", 0.22, "a" * 40)), ("after", _csv(tmp_path, "a2.csv", 0.22, "b" * 40)),
            ("before", _csv(tmp_path, "b3.csv", 0.30, "a" * 40)), ("after", _csv(tmp_path, "a3.csv", 0.20, "b" * 40))]
    text = ab_summary.compare(runs)
    assert "| loss: unimri / CE | 0.220 | 0.200 | 0.909 |" in text
    ratio_table, time_table = text.split("ratio row")[1].split("time row (ms)")
    assert "F.cross_entropy" not in ratio_table
    assert "| loss: F.cross_entropy | 4.000 | 4.000 | 1.000 |" in time_table
    assert text.count("| before |") == 3 and "`bbbbbbbbbbbb`" in text
    with pytest.raises(ValueError, match="exactly two builds"):
        ab_summary.compare(runs[:1])
