"""The README stays true: its architecture table, its Python example, its test command."""

from __future__ import annotations

import os
import re
import shutil
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
    assert "pip install -e ." in commands[0] and "pytest" in commands[1], "the quick start: two commands first"
    test_command = commands[1].strip().split("&&")[-1].strip().replace(".venv/bin/", "")
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci


def test_finetune_example_runs_as_written(tmp_path):
    """The `zoo finetune` example (then `zoo run` on its model), with the installed `zoo` command."""
    (block,) = [b for b in re.findall(r"```bash\n(.*?)```", README, re.S) if "zoo finetune" in b]
    output = re.search(r"--output (\S+)", block).group(1)
    shutil.rmtree(output, ignore_errors=True)  # a run left there would be resumed, not rerun
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    try:
        result = subprocess.run(["bash", "-e", "-c", block], cwd=ROOT, capture_output=True, text=True, env=env,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        first, last = map(float, re.search(r"loss (\S+) -> (\S+)", result.stdout).groups())
        assert abs(first - 0.6932) < 1e-3 and last < 0.3, result.stdout     # README: 0.69 -> about 0.15
        scores = dict(re.findall(r"^  (high|low): (\S+)$", result.stdout, re.M))
        assert float(scores["high"]) > 0.7, result.stdout                 # tokens 64..127: "high"
    finally:
        shutil.rmtree(output, ignore_errors=True)
