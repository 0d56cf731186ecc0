from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

from shipyard.artifact import sha256_file
from shipyard.errors import PackageError
from shipyard.package import (
    MANIFEST,
    MANIFEST_DIGEST,
    check_writable,
    content_digest,
    is_report_file,
    load_package,
    preflight,
    seal,
    staging,
    write_manifest,
)


def test_staging_renames_into_place_only_on_success(tmp_path: Path) -> None:
    with staging(tmp_path, "m", 1) as folder:
        (folder / "model.onnx").write_bytes(b"x")
        write_manifest(folder, {"name": "m", "version": 1, "artifacts": [], "files": {}})
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == b"x"
    with pytest.raises(RuntimeError), staging(tmp_path, "m", 2) as folder:
        (folder / "half.onnx").write_bytes(b"x")
        raise RuntimeError("a step failed")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_existing_version_refused_unless_overwrite(tmp_path: Path) -> None:
    with staging(tmp_path, "m", 1) as folder:
        (folder / "a").write_text("old")
    with (
        pytest.raises(PackageError, match="already exists.*--overwrite"),
        staging(tmp_path, "m", 1),
    ):
        pass
    with staging(tmp_path, "m", 1, overwrite=True) as folder:
        (folder / "b").write_text("new")
    assert sorted(p.name for p in (tmp_path / "m" / "1").iterdir()) == ["b"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_output_under_a_file_is_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PackageError, match="cannot create output folder"):
        check_writable(blocker / "repo")


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions"
)
def test_read_only_folder_is_not_writable(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(PackageError, match="not writable"):
            check_writable(tmp_path)
    finally:
        tmp_path.chmod(0o700)


def test_read_only_filesystem_is_not_writable() -> None:
    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc (a read-only file system) to test against")
    with pytest.raises(PackageError):
        check_writable(Path("/proc/self/shipyard-out"))


def test_modified_file_is_detected(tmp_path: Path) -> None:
    with staging(tmp_path, "m", 1) as folder:
        (folder / "model.onnx").write_bytes(b"x")
        write_manifest(
            folder,
            {
                "name": "m",
                "version": 1,
                "artifacts": [],
                "files": {"model.onnx": __import__("hashlib").sha256(b"x").hexdigest()},
            },
        )
    load_package(tmp_path / "m" / "1")
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(PackageError, match="modified after packaging"):
        load_package(tmp_path / "m" / "1")


def test_artifact_path_cannot_escape(tmp_path: Path) -> None:
    with staging(tmp_path, "m", 1) as folder:
        write_manifest(
            folder,
            {
                "name": "m",
                "version": 1,
                "files": {},
                "signature": {"inputs": [{"name": "x", "shape": [1]}]},
                "artifacts": [{"name": "a", "format": "onnx", "file": "../../etc/passwd"}],
            },
        )
    with pytest.raises(PackageError, match="escapes the package folder"):
        load_package(tmp_path / "m" / "1")


def test_package_is_readable_by_other_users(tmp_path: Path) -> None:
    from shipyard.artifact import write_text_atomic

    with staging(tmp_path, "m", 1) as folder:
        write_text_atomic(folder / "a.txt", "x")
        (folder / "sub").mkdir()
    version = tmp_path / "m" / "1"
    assert version.stat().st_mode & 0o777 == 0o755
    assert (version / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (version / "sub").stat().st_mode & 0o777 == 0o755


def test_a_failed_build_leaves_no_folder_it_created(tmp_path: Path) -> None:
    out = tmp_path / "new" / "repo"
    with pytest.raises(RuntimeError, match="boom"), staging(out, "m", 1) as folder:
        (folder / "model.onnx").write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # neither repo/m nor repo nor new


def test_a_failed_build_keeps_folders_that_were_there(tmp_path: Path) -> None:
    with staging(tmp_path, "m", 1) as folder:
        (folder / "a").write_text("v1")
    with pytest.raises(RuntimeError), staging(tmp_path, "m", 2):
        raise RuntimeError("boom")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_an_existing_version_says_how_to_go_on(tmp_path: Path) -> None:
    with staging(tmp_path, "m", 1) as folder:
        (folder / "a").write_text("v1")
    with pytest.raises(PackageError, match=r"--overwrite \(Python: overwrite=True\).*--version N"):
        preflight(tmp_path, "m", 1)


# -- integrity: what is served is covered, derived documents are not ---------------------------

TINY = """\
name: tiny
model: {source: tests.conftest:small_net}
signature:
  inputs: [{name: x, dtype: float32, shape: [batch, 1, 8, 8]}]
  outputs: [{name: logits, dtype: float32, shape: [batch, 10]}]
passes: [{export: {dynamo: false}}]
validate: {samples: 4}
"""
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [1.0] * 64}]}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real package (torch.onnx.export, validation, report), built once."""
    import shipyard
    from shipyard.recipe import parse_recipe

    root = tmp_path_factory.mktemp("built")
    return shipyard.build(parse_recipe(TINY), root, run_bench=False).package_dir


@pytest.fixture
def package(built: Path, tmp_path: Path) -> Path:
    """A fresh copy of the built package in ``<repository>/tiny/1``, free to damage."""
    return Path(shutil.copytree(built, tmp_path / "repo" / "tiny" / "1"))


def cli(*args: str | Path) -> int:
    from shipyard.cli.app import main

    return main([str(arg) for arg in args])


def test_report_files_are_not_covered_and_everything_else_is(package: Path) -> None:
    manifest = json.loads((package / MANIFEST).read_text())
    assert sorted(manifest["files"]) == ["model.onnx"]
    assert (package / "report.md").is_file() and (package / "report.html").is_file()
    assert is_report_file("report.md") and is_report_file("report-size-accuracy.png")
    assert not is_report_file("sub/report.md") and not is_report_file("tokenizer.json")
    assert manifest[MANIFEST_DIGEST] == content_digest(manifest)


def test_processing_files_are_covered(tmp_path: Path) -> None:
    with staging(tmp_path, "m", 1) as folder:
        (folder / "tokenizer.json").write_text("{}")
        (folder / "report.md").write_text("# notes")
        seal(folder, {"name": "m", "version": 1, "artifacts": []})
    folder = tmp_path / "m" / "1"
    assert list(json.loads((folder / MANIFEST).read_text())["files"]) == ["tokenizer.json"]
    (folder / "tokenizer.json").write_text('{"vocab": {}}')
    with pytest.raises(PackageError, match=r"tokenizer\.json is missing or was modified"):
        load_package(folder)


def test_edited_report_still_loads_inspects_and_serves(package: Path) -> None:
    from tests.serve.conftest import serving

    with (package / "report.md").open("a") as handle:
        handle.write("\nNote for the team: checked by hand.\n")
    (package / "report.html").unlink()
    assert load_package(package).name == "tiny"
    assert cli("inspect", package) == 0
    with serving(package.parent.parent) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/v2/models/tiny/versions/1/ready").status_code == 200
        answer = client.post("/v2/models/tiny/infer", json=BODY)
        assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [1, 10]


def test_report_command_recreates_a_deleted_report(
    package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = (package / MANIFEST).read_bytes()
    (package / "report.html").unlink()
    (package / "report.md").write_text("scribbles")
    assert cli("report", package) == 0
    assert "<table>" in (package / "report.html").read_text()
    assert "| 2 | **onnx** ★ chosen |" in (package / "report.md").read_text()
    # A current manifest is not rewritten (a watching server would reload the version).
    assert (package / MANIFEST).read_bytes() == manifest
    assert "updated" not in capsys.readouterr().out


def test_report_command_repairs_a_manifest_from_the_previous_version(
    package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What the previous version wrote: every file hashed, reports included; no digest.
    manifest = json.loads((package / MANIFEST).read_text())
    del manifest[MANIFEST_DIGEST]
    manifest["files"] = {p.name: sha256_file(p) for p in sorted(package.iterdir())}
    del manifest["files"][MANIFEST]
    (package / MANIFEST).write_text(json.dumps(manifest, indent=2))
    assert "report.html" in manifest["files"]
    load_package(package)  # still loads: no digest to check
    (package / "report.html").unlink()
    load_package(package)  # derived documents are skipped even where listed
    assert cli("report", package) == 0
    assert "shipyard.json updated" in capsys.readouterr().out
    repaired = json.loads((package / MANIFEST).read_text())
    assert repaired["files"] == {"model.onnx": manifest["files"]["model.onnx"]}
    assert repaired[MANIFEST_DIGEST] == content_digest(repaired)
    assert not list(package.glob(".*.tmp")), "atomic write left its temporary file"
    load_package(package)


def test_a_changed_byte_in_the_model_is_refused(
    package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shipyard.serve.version import open_version

    data = bytearray((package / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (package / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"model\.onnx is missing or was modified after"):
        load_package(package)
    with pytest.raises(PackageError, match="modified after packaging"):
        open_version(package)
    # `shipyard report` does not bless a modified model by hashing it again.
    assert cli("report", package) == 2
    assert "model.onnx is missing or was modified" in capsys.readouterr().err


def test_an_edited_manifest_is_refused(package: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = json.loads((package / MANIFEST).read_text())
    manifest["signature"]["inputs"][0]["shape"] = ["batch", 1, 16, 16]
    (package / MANIFEST).write_text(json.dumps(manifest, indent=2))
    with pytest.raises(PackageError, match=r"shipyard\.json was modified after packaging"):
        load_package(package)
    assert cli("inspect", package) == 2
    assert "shipyard.json was modified after packaging" in capsys.readouterr().err
    load_package(package, verify=False)  # reading without verifying still works


def test_serving_settings_and_version_stay_editable(package: Path) -> None:
    # A repository's operator tunes batching in place, or copies a package to version 2.
    manifest = json.loads((package / MANIFEST).read_text())
    manifest["serving"] = {"max_batch_size": 4}
    manifest["version"] = 2
    (package / MANIFEST).write_text(json.dumps(manifest))
    assert load_package(package).manifest["serving"] == {"max_batch_size": 4}


def test_an_artifact_without_a_hash_is_refused(package: Path) -> None:
    manifest = json.loads((package / MANIFEST).read_text())
    manifest["files"] = {}
    write_manifest(package, manifest)
    with pytest.raises(PackageError, match="served but the manifest holds no sha256"):
        load_package(package)
