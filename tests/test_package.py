from __future__ import annotations

import os
from pathlib import Path

import pytest

from shipyard.errors import PackageError
from shipyard.package import check_writable, load_package, preflight, staging, write_manifest


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
