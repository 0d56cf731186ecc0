"""The README shows what the code does: its example outputs are regenerated and compared,
and its Python block runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"


@pytest.mark.slow
def test_readme_examples_match_what_the_code_prints() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "readme_examples.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_python_example_runs_as_written(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## The same from Python") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "the README's Python section has no python block"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    run = subprocess.run(
        [sys.executable, "-c", code[1]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "out/digits/1" in run.stdout and "(8, 10)" in run.stdout
    assert (tmp_path / "digits.int8.onnx").is_file()
