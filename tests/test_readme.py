"""The README stays true: its architecture table, its Python example, its test command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from zoo.registry import list_architectures

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_architecture_table_equals_registry():
    table = README.split("<!-- architectures-table")[1].split("<!-- /architectures-table -->")[0]
    rows = [tuple(c.strip() for c in line.strip("|").split("|"))
            for line in table.strip().splitlines()[3:]]
    assert rows == list_architectures()


def test_python_example_runs_as_written():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    for code in blocks:
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
    assert "Data2VecTextForMaskedLM (1, 8, 128) 3" in "".join(
        subprocess.run([sys.executable, "-c", blocks[0]], cwd=ROOT, capture_output=True, text=True).stdout)


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)```", README, re.S)
    assert len(commands) == 2, "the README gives exactly two quick-start commands"
    test_command = commands[1].strip().split("&&")[-1].strip().replace(".venv/bin/", "")
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci
