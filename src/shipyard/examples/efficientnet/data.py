"""Real photos that ship inside installed wheels, as validation, calibration and example data.

No ImageNet-labelled image ships offline, so the example validates int8 models on their
agreement with the fp32 model over many real inputs: 16 photos from scikit-image
(``skimage/data``: people, animals, objects, and microscope, telescope and retina images;
its textures, text pages, drawings and test patterns are left out), scikit-learn
(``china.jpg``, ``flower.jpg``) and matplotlib (``grace_hopper.jpg``), read as files (no
download, and skimage is never imported), decoded by ``shipyard.processing.decode``.

Each data set is made of *views* of those photos: a crop of ``scale`` times the photo's
height and width at an anchor, mirrored or not, then ``shipyard.processing.preprocess``
(resize, centre crop, normalise), the same code the package's server runs. The functions
take the recipe's ``preprocess`` settings (``shipyard.data.load_data`` passes them), so the
data follows the recipe; without them they use ``PREPROCESS``, the recipe's values.

- ``validation()``: 22 views per photo (352): the whole photo and its mirror image, and at
  scales 0.8 and 0.6 the four corners and the centre, each also mirrored.
- ``calibration(n)``: ``n`` views at scales 0.9, 0.7 and 0.5, never used by validation, at
  seeded random anchors, mirrored at random (seeded), taken from the photos in turn.
- ``examples()``: each whole photo once, with its name as the label: the report shows every
  artifact's top-5 classes for them.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shipyard.errors import MissingExtraError
from shipyard.processing import ImagePreprocess, Preprocess, decode
from shipyard.processing import preprocess as preprocess_images

#: TensorFlow's EfficientNet-Lite preprocessing (mean 127, std 128 on 0-255 pixels) at 224,
#: after resizing the shorter side to 256 (224 / 0.875, TensorFlow's centre-crop fraction).
PREPROCESS = ImagePreprocess(
    resize=256, crop=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3, interpolation="bilinear"
)
#: name -> (distribution's top-level package, path inside it)
PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "camera": ("skimage", "data/camera.png"),
    "cell": ("skimage", "data/cell.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "coins": ("skimage", "data/coins.png"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg"),
    "ihc": ("skimage", "data/ihc.png"),
    "moon": ("skimage", "data/moon.png"),
    "motorcycle_left": ("skimage", "data/motorcycle_left.png"),
    "motorcycle_right": ("skimage", "data/motorcycle_right.png"),
    "retina": ("skimage", "data/retina.jpg"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}
_ANCHORS = ((0.5, 0.5), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))
VALIDATION_SCALES = (1.0, 0.8, 0.6)
CALIBRATION_SCALES = (0.9, 0.7, 0.5)
CALIBRATION_SEED = 0


@dataclass(frozen=True)
class View:
    """A crop of ``scale`` x the photo's size whose corner sits at ``anchor`` (x, y) of the
    free room (0: left/top, 1: right/bottom), mirrored left-right when ``flip``."""

    photo: str
    scale: float
    anchor: tuple[float, float]
    flip: bool

    def box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) in pixels."""
        h, w = max(1, round(height * self.scale)), max(1, round(width * self.scale))
        top, left = round((height - h) * self.anchor[1]), round((width - w) * self.anchor[0])
        return top, left, top + h, left + w

    def apply(self, image: np.ndarray) -> np.ndarray:
        top, left, bottom, right = self.box(*image.shape[:2])
        crop = image[top:bottom, left:right]
        return np.ascontiguousarray(crop[:, ::-1] if self.flip else crop)


def photo_path(name: str) -> Path:
    """The file of photo ``name`` inside its installed package (MissingExtraError if none)."""
    package, relative = PHOTOS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        distribution = {"skimage": "scikit-image", "sklearn": "scikit-learn"}.get(package, package)
        raise MissingExtraError(f"the example photos ({distribution})", "pretrained", package)
    return Path(next(iter(spec.submodule_search_locations))) / relative


@functools.cache
def photo(name: str) -> np.ndarray:
    """Photo ``name`` decoded to (H, W, 3) uint8 RGB (read-only; cached)."""
    array = decode(photo_path(name).read_bytes())
    array.setflags(write=False)
    return array


def validation_views() -> list[View]:
    """The 22 views of every photo that ``validation()`` is made of, photo by photo."""
    views = []
    for name in PHOTOS:
        views += [View(name, 1.0, _ANCHORS[0], flip) for flip in (False, True)]
        for scale in VALIDATION_SCALES[1:]:
            views += [View(name, scale, a, flip) for a in _ANCHORS for flip in (False, True)]
    return views


def calibration_views(n: int) -> list[View]:
    """``n`` seeded views at ``CALIBRATION_SCALES``, the photos in turn (disjoint from
    ``validation_views``: no scale is shared)."""
    rng = np.random.default_rng(CALIBRATION_SEED)
    names = list(PHOTOS)
    views = []
    for i in range(n):
        scale = CALIBRATION_SCALES[(i // len(names)) % len(CALIBRATION_SCALES)]
        x, y = rng.uniform(0.0, 1.0, size=2)
        flip = bool(rng.integers(2))
        views.append(View(names[i % len(names)], scale, (float(x), float(y)), flip))
    return views


def _image_config(settings: Preprocess | None) -> ImagePreprocess:
    return settings.image if settings is not None and settings.image is not None else PREPROCESS


def render(views: Sequence[View], settings: Preprocess | None = None) -> np.ndarray:
    """The model's input batch for ``views``, through ``shipyard.processing.preprocess``."""
    batch = [view.apply(photo(view.photo)) for view in views]
    return preprocess_images(batch, _image_config(settings))


def validation(preprocess: Preprocess | None = None) -> tuple[np.ndarray, None]:
    """352 views (22 per photo), float32 (352, 3, 224, 224); no labels (none exist)."""
    return render(validation_views(), preprocess), None


def calibration(n: int = 256, preprocess: Preprocess | None = None) -> tuple[np.ndarray, None]:
    """``n`` calibration views (see ``calibration_views``), none of them in validation."""
    if n < 1:
        raise ValueError(f"calibration(n={n}): n must be at least 1")
    return render(calibration_views(n), preprocess), None


def examples(preprocess: Preprocess | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each whole photo once, labelled with its name (for the report's top-5 table)."""
    views = [View(name, 1.0, _ANCHORS[0], False) for name in PHOTOS]
    return render(views, preprocess), np.asarray(list(PHOTOS))
