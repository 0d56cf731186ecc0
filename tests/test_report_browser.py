"""report.html of a real package, rendered by a real browser (headless Chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import shipyard
from shipyard.recipe import parse_recipe

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium: apt-get install chromium"
)

# An untrained net on real labelled digits: accuracy exists (so both plots are drawn), and
# the int8 candidate passes its loose gate. The description checks escaping in a browser.
RECIPE = """\
name: browser
description: "Rendering check <b>not bold</b>"
task: classification
model: {source: tests.conftest:small_net}
signature:
  inputs: [{name: x, dtype: float32, shape: [batch, 1, 8, 8]}]
data:
  validation: shipyard.examples.digits:validation
  calibration: shipyard.examples.digits:calibration
passes:
  - export: {}
  - quantize: {mode: static, activations: uint8, weights: int8, name: onnx-int8}
    gates: {max_accuracy_drop: 1.0}
validate: {gates: {atol: 1.0e-4}, samples: 64}
bench: {batch_sizes: [1], runs: 5, warmup: 1}
serve: {artifact: onnx-int8}
"""
CHOSEN_ROW = (255, 244, 204)  # --chosen in to_html's CSS: only a rendered stylesheet paints it
CHOSEN_RING = (249, 168, 37)  # the ring around the chosen point: only a decoded plot has it


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run


def test_report_html_renders_in_a_browser(tmp_path: Path) -> None:
    from PIL import Image

    result = shipyard.build(parse_recipe(RECIPE), tmp_path / "out")
    url = (result.package_dir / "report.html").as_uri()

    dom = chromium(tmp_path / "dom", "--dump-dom", url).stdout
    assert len(re.findall(r"<tr class=", dom)) == 3  # torch, onnx, onnx-int8
    assert re.search(r'<tr class="[^"]*chosen[^"]*">.*onnx-int8.*★ chosen', dom)
    assert len(re.findall(r'<img alt="[^"]+" src="data:image/png;base64,', dom)) == 2
    for section in ("Summary", "Candidates", "Plots", "Conditions"):
        assert f"<h2>{section}</h2>" in dom
    assert "&lt;b&gt;not bold&lt;/b&gt;" in dom and "<b>" not in dom

    shot = tmp_path / "report.png"
    chromium(tmp_path / "shot", f"--screenshot={shot}", "--window-size=1280,1600", url)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 1600)
    colors = {color for _, color in image.getcolors(maxcolors=1 << 24) or []}
    assert len(colors) > 100, "the page rendered (nearly) blank"
    assert CHOSEN_ROW in colors, "the chosen row is not highlighted"
    assert CHOSEN_RING in colors, "the plot of the chosen candidate is not shown"
