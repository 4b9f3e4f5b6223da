"""README.md and docs/*.md hold exactly what benchmarks/report.py generates from the results files."""
import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "benchmarks", "report.py")


def test_generated_blocks_are_up_to_date():
    done = subprocess.run([sys.executable, REPORT, "--check"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, (
        "README.md/docs differ from the committed results files; run `python benchmarks/report.py`\n"
        + done.stdout + done.stderr)


def test_every_performance_generator_has_a_block():
    done = subprocess.run([sys.executable, REPORT, "--list"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=True)
    placed = {line.split(": ", 1)[1].split()[0] for line in done.stdout.splitlines() if ": " in line}
    spec = importlib.util.spec_from_file_location("unimri_benchmarks_report", REPORT)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    assert set(report.TABLES) <= placed, sorted(set(report.TABLES) - placed)


def test_readme_python_example_runs():
    """The README's Python example is what a new user copies first: it must run as written."""
    import re

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        blocks = re.findall(r"```python\n(.*?)```", fh.read(), re.S)
    assert blocks, "README.md has no python example"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
