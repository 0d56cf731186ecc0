"""Which library should decode and resize images? Pillow vs simplejpeg vs OpenCV, measured.

Each variant turns JPEG bytes into an RGB uint8 array whose shorter side is 256 pixels (what
``processing/image.py`` does before its centre crop): decode, colour conversion, resize.
``shipyard`` is ``shipyard.processing.preprocess`` itself (Pillow; resize before taking the
array, with ``reducing_gap``); ``pillow`` decodes to an array first, then resizes exactly.
The JPEGs are the real photos that ship inside installed wheels (scikit-learn's china.jpg and
flower.jpg, matplotlib's grace_hopper.jpg, scikit-image's rocket.jpg), plus china.jpg
re-encoded at 4000x2667 (quality 90), the size of a phone photo, since uploads are that big.
One thread everywhere (Pillow and simplejpeg use one; OpenCV is told ``setNumThreads(1)``),
variants interleaved in each round, median per variant. ``diff`` is the mean absolute pixel
difference from the Pillow result (0-255). simplejpeg and OpenCV are not dependencies of
Shipyard; variants whose library is missing are left out. Usage::

    pip install simplejpeg opencv-python-headless     # for their variants
    OMP_NUM_THREADS=1 python benchmarks/image_decode.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

import numpy as np
from PIL import Image

from shipyard.hardware import hardware_fingerprint
from shipyard.processing import ImagePreprocess, preprocess

SHORT_SIDE = 256


def _jpegs() -> dict[str, bytes]:
    import matplotlib
    import skimage
    import sklearn

    files = {
        "china.jpg": Path(sklearn.__file__).parent / "datasets/images/china.jpg",
        "flower.jpg": Path(sklearn.__file__).parent / "datasets/images/flower.jpg",
        "grace_hopper.jpg": Path(matplotlib.get_data_path()) / "sample_data/grace_hopper.jpg",
        "rocket.jpg": Path(skimage.__file__).parent / "data/rocket.jpg",
    }
    data = {name: path.read_bytes() for name, path in files.items()}
    big = Image.open(io.BytesIO(data["china.jpg"])).resize((4000, 2667), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=90)
    data["china-4000x2667.jpg"] = buffer.getvalue()
    return data


def _target(height: int, width: int) -> tuple[int, int]:
    scale = SHORT_SIDE / min(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


SHIPYARD = ImagePreprocess(resize=SHORT_SIDE, layout="NHWC", dtype="uint8")


def shipyard(data: bytes) -> np.ndarray:
    return preprocess([data], SHIPYARD)[0]


def pillow(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    size = _target(image.height, image.width)
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR))


def pillow_reduce(data: bytes) -> np.ndarray:
    """Pillow with ``reducing_gap``: JPEG DCT scaling (``draft``) before the filter."""
    image = Image.open(io.BytesIO(data))
    size = _target(image.height, image.width)
    image.draft("RGB", size)
    image = image.convert("RGB")
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))


def simplejpeg_pillow(data: bytes) -> np.ndarray:
    import simplejpeg

    array = simplejpeg.decode_jpeg(data, colorspace="RGB")
    size = _target(*array.shape[:2])
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BILINEAR))


def simplejpeg_cv2_area(data: bytes) -> np.ndarray:
    import cv2
    import simplejpeg

    array = simplejpeg.decode_jpeg(data, colorspace="RGB")
    return cv2.resize(array, _target(*array.shape[:2]), interpolation=cv2.INTER_AREA)


def opencv_area(data: bytes) -> np.ndarray:
    import cv2

    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    return cv2.resize(array, _target(*array.shape[:2]), interpolation=cv2.INTER_AREA)


def opencv_linear(data: bytes) -> np.ndarray:
    """OpenCV's bilinear does not low-pass filter: downscaling by more than 2x aliases."""
    import cv2

    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    return cv2.resize(array, _target(*array.shape[:2]), interpolation=cv2.INTER_LINEAR)


VARIANTS: dict[str, Callable[[bytes], np.ndarray]] = {
    "pillow": pillow,
    "shipyard": shipyard,
    "pillow+draft": pillow_reduce,
    "simplejpeg+pillow": simplejpeg_pillow,
    "simplejpeg+cv2 area": simplejpeg_cv2_area,
    "opencv area": opencv_area,
    "opencv linear": opencv_linear,
}


def available() -> dict[str, Callable[[bytes], np.ndarray]]:
    """The variants whose libraries are installed (OpenCV told to use one thread)."""
    has_cv2, has_simplejpeg = find_spec("cv2") is not None, find_spec("simplejpeg") is not None
    if has_cv2:
        import cv2

        cv2.setNumThreads(1)
    return {
        name: function
        for name, function in VARIANTS.items()
        if (has_cv2 or not ("cv2" in name or "opencv" in name))
        and (has_simplejpeg or "simplejpeg" not in name)
    }


def measure(rounds: int) -> dict[str, dict[str, tuple[float, float]]]:
    """{image: {variant: (median ms, mean abs difference from pillow)}}."""
    variants = available()
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for name, data in _jpegs().items():
        reference = pillow(data)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(rounds):
            for variant, function in variants.items():  # interleaved: drift hits all alike
                started = time.perf_counter()
                function(data)
                times[variant].append((time.perf_counter() - started) * 1e3)
        results[name] = {}
        for variant, function in variants.items():
            out = function(data)
            diff = float(np.abs(out.astype(np.int16) - reference).mean())
            results[name][variant] = (statistics.median(times[variant]), diff)
    return results


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    fingerprint = hardware_fingerprint()
    print(f"{fingerprint['cpu']}, ISA {', '.join(fingerprint['isa'])}; {args.rounds} rounds")
    versions = {name: _version(name) for name in ("pillow", "simplejpeg", "opencv-python-headless")}
    print(", ".join(f"{k} {v}" for k, v in versions.items()))
    results = measure(args.rounds)
    variants = list(next(iter(results.values())))
    print("| image | " + " | ".join(variants) + " |")
    print("|---|" + "---:|" * len(variants))
    for name, row in results.items():
        cells = [f"{row[v][0]:.2f} ms" + (f" (diff {row[v][1]:.2f})" if v != "pillow" else "")
                 for v in variants]  # fmt: skip
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
