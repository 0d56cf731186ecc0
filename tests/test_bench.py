"""bench(): a tiny torch model and its ONNX export, measured side by side for real."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from shipyard.artifact import Artifact
from shipyard.bench import BenchReport, _time_rounds, bench
from shipyard.cli.render import bench as render
from shipyard.errors import InputError
from shipyard.events import BenchProgress
from shipyard.signature import Signature, TensorSpec

BATCHES = (1, 3)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> list[Artifact]:
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 4).eval()
    signature = Signature(
        inputs=(TensorSpec(name="x", dtype="float32", shape=("batch", 16)),),
        outputs=(TensorSpec(name="y", dtype="float32", shape=("batch", 4)),),
    )
    path: Path = tmp_path_factory.mktemp("bench") / "linear.onnx"
    # Plain legacy export on purpose: these tests must not depend on shipyard's export pass.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript exporter"
        torch.onnx.export(
            model,
            (torch.randn(2, 16),),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            dynamo=False,
        )
    return [
        Artifact(name="torch", format="torch", signature=signature, module=model),
        Artifact(name="onnx", format="onnx", signature=signature, path=path),
    ]


@pytest.fixture(scope="module")
def report(artifacts: list[Artifact]) -> BenchReport:
    return bench(artifacts, batch_sizes=BATCHES, threads=1, warmup=2, runs=20)


def test_every_artifact_has_consistent_stats_per_batch(report: BenchReport) -> None:
    assert [r.name for r in report.results] == ["torch", "onnx"]
    assert report.batch_sizes == list(BATCHES)
    for result in report.results:
        assert [s.batch for s in result.latency] == list(BATCHES)
        for b in BATCHES:
            s = result.at(b)
            assert s.runs == 20
            assert s.p50_ms <= s.p90_ms <= s.p99_ms
            assert s.min_ms <= s.p50_ms <= s.max_ms
            assert s.min_ms <= s.mean_ms <= s.max_ms
            assert s.samples_per_s > 0
        with pytest.raises(KeyError):
            result.at(99)


def test_sessions_ran_on_one_thread_and_sizes_are_recorded(report: BenchReport) -> None:
    by_name = {r.name: r for r in report.results}
    assert by_name["torch"].backend == "torch"
    assert by_name["onnx"].backend == "onnxruntime"
    assert all(r.threads == 1 for r in report.results)
    assert by_name["onnx"].file_bytes > 0
    assert report.peak_rss_mb > 0
    assert report.seconds > 0


def test_report_serializes_and_ratios_are_relative_to_the_baseline(report: BenchReport) -> None:
    data = json.loads(json.dumps(report.to_dict()))
    assert [r["name"] for r in data["results"]] == ["torch", "onnx"]
    assert len(data["loadavg_start"]) == 3
    speedups = report.speedups(baseline="torch", batch=1)
    torch_ms, onnx_ms = (report.get(name).at(1).p50_ms for name in ("torch", "onnx"))
    assert speedups == {"torch": 1.0, "onnx": pytest.approx(torch_ms / onnx_ms)}  # >1: faster
    with pytest.raises(KeyError):
        report.speedups(baseline="missing", batch=1)


def test_render_shows_one_row_per_artifact_and_batch(report: BenchReport) -> None:
    latency, setup, conditions = render(report, baseline="onnx").renderables
    assert latency.row_count == len(report.results) * len(BATCHES)  # type: ignore[union-attr]
    assert setup.row_count == len(report.results)  # type: ignore[union-attr]
    console = Console(width=80, record=True)
    console.print(render(report, baseline="onnx"))
    text = console.export_text()
    assert "onnxruntime" in text and "× onnx" in text
    assert str(report.fingerprint["cpu"]) in str(conditions)  # the conditions, under the tables
    assert "…" not in text  # nothing truncated on an 80-column terminal


def test_max_seconds_stops_early_but_keeps_five_rounds(artifacts: list[Artifact]) -> None:
    capped = bench(artifacts, batch_sizes=(1,), warmup=0, runs=10_000, max_seconds=0.0)
    assert all(r.at(1).runs == 5 for r in capped.results)
    assert capped.runs == 10_000


def test_bench_rejects_duplicate_names(artifacts: list[Artifact]) -> None:
    with pytest.raises(InputError, match="unique"):
        bench([artifacts[0], artifacts[0]])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"runs": 0}, "runs must be at least 1"),
        ({"warmup": -1}, "warmup must be 0 or more"),
        ({"batch_sizes": (0,)}, "batch sizes must be integers >= 1"),
        ({"batch_sizes": ()}, "batch sizes must be integers >= 1"),
        ({"max_seconds": -1.0}, "max_seconds must be 0 or more"),
    ],
)
def test_bench_refuses_impossible_counts_with_our_error(
    artifacts: list[Artifact], options: dict[str, object], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        bench(artifacts, **options)  # type: ignore[arg-type]


def test_bench_reports_progress_as_typed_events(artifacts: list[Artifact]) -> None:
    events: list[BenchProgress] = []
    bench(artifacts, batch_sizes=(1, 2), warmup=0, runs=3, on_progress=events.append)
    assert [(e.batch, e.done) for e in events] == [(1, 1), (1, 2), (1, 3), (2, 4), (2, 5), (2, 6)]
    assert all(e.total == 6 for e in events)


class _Recorder:
    """A stand-in session that logs the order in which the timed loop runs it."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.log.append(self.name)
        return {}


def test_rounds_rotate_which_session_runs_first() -> None:
    log: list[str] = []
    sessions = [_Recorder(name, log) for name in "abc"]
    samples = _time_rounds(sessions, {}, 4, None, lambda rounds: None)  # type: ignore[arg-type]
    assert "".join(log) == "abc" + "bca" + "cab" + "abc"
    assert [len(s) for s in samples] == [4, 4, 4]
