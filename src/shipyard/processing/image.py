"""Encoded images in, model tensors out: decode with safety checks, resize, crop, normalise.

This is the one implementation of image pre-processing: the example data loaders, validation,
bench and the server all call it, so a model is validated on exactly the pixels it is served.

- ``decode(data)``: JPEG, PNG, WebP, GIF, BMP or TIFF bytes to an ``(H, W, 3)`` uint8 RGB
  array. Other formats are refused (Pillow can read some through external programs, e.g.
  EPS through Ghostscript). The size is read from the header and refused above
  ``max_pixels`` *before* any pixel is decoded (a 60-byte PNG header can declare 20,000 x 20,000
  pixels: 1.2 GB once decoded). A truncated file is refused, not padded with grey. EXIF
  orientation is applied. Grayscale, palette, CMYK, 16-bit and alpha images become 8-bit
  RGB (16-bit values are scaled, not clipped; alpha is dropped).
- ``preprocess(images, config)``: encoded images or decoded arrays to one batch: resize the
  shorter side, centre-crop, scale to [0, 1], subtract ``mean``, divide by ``std``, in the
  layout and dtype the model takes.

Pillow does the work, chosen by measurement (``benchmarks/image_decode.py``, 1 thread,
interleaved): on the bundled 427x640 JPEGs every variant takes 2-3 ms (OpenCV's area resize
saves ~0.5 ms and gives other pixels); on a 4000x2667 photo this module's path (Pillow, the
resize before the array, ``reducing_gap``) took 62 ms against 102 ms for Pillow decoding
to an array first, 51-63 ms for simplejpeg or OpenCV with OpenCV's area resize, and 14 ms
for Pillow's JPEG ``draft`` mode (DCT scaling: other pixels than a full decode, so the
server would no longer see what validation saw). Pillow is already a dependency, reads
every format above, reads the size before decoding and refuses truncated files with a reason.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shipyard.errors import ImageError, InputError

#: Formats ``decode`` reads; anything else is refused before a decoder runs.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
#: Default pixel limit: a 24-megapixel camera photo passes, a 20,000 x 20,000 header does not.
DEFAULT_MAX_PIXELS = 40_000_000
_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
# Pillow first shrinks by an integer factor with a box filter while the image stays at least
# this many times the target, then filters exactly: 4000x2667 -> 384x256 took 14.7 ms instead
# of 44.8, 0.19 grey levels (mean absolute) from the exact result.
_REDUCING_GAP = 3.0
_PALETTE_MODES = ("P", "PA")


class ImagePreprocess(BaseModel):
    """``preprocess: {image: {resize: 256, crop: 224, mean: [...], std: [...]}}``

    Pixels are scaled to [0, 1] before ``mean`` and ``std`` apply (ImageNet's are
    ``[0.485, 0.456, 0.406]`` and ``[0.229, 0.224, 0.225]``); ``dtype: uint8`` passes the
    0-255 pixels unscaled and takes no mean or std.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str | None = Field(
        default=None, description="The model input the images feed (default: the only one)"
    )
    resize: int | None = Field(
        default=None, ge=1, description="Resize the shorter side to this many pixels"
    )
    crop: int | tuple[int, int] | None = Field(
        default=None, description="Centre crop: a side, or [height, width]"
    )
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos", "box"] = Field(
        default="bilinear", description="Resampling filter of the resize"
    )
    mean: tuple[float, float, float] = Field(
        default=(0.0, 0.0, 0.0), description="Per-channel (RGB) mean, pixels scaled to [0, 1]"
    )
    std: tuple[float, float, float] = Field(
        default=(1.0, 1.0, 1.0), description="Per-channel (RGB) standard deviation"
    )
    layout: Literal["NCHW", "NHWC"] = Field(default="NCHW", description="Batch layout")
    dtype: Literal["float32", "float16", "uint8"] = Field(
        default="float32", description="Element type the model takes"
    )
    max_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS, ge=1, description="Refuse larger images before decoding"
    )

    @field_validator("crop")
    @classmethod
    def _positive(cls, value: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
        sides = (value,) if isinstance(value, int) else value or ()
        if any(side < 1 for side in sides):
            raise ValueError(f"crop sides must be >= 1, got {value}")
        return value

    @field_validator("std")
    @classmethod
    def _nonzero(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in value):
            raise ValueError(f"std values must be > 0, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ImagePreprocess:
        if self.dtype == "uint8" and (self.mean != (0.0, 0.0, 0.0) or self.std != (1.0, 1.0, 1.0)):
            raise ValueError("dtype uint8 passes raw 0-255 pixels: it takes no mean or std")
        crop = self.crop_size
        if crop is not None and self.resize is not None and min(crop) > self.resize:
            raise ValueError(
                f"crop {list(crop)} is larger than the resized shorter side {self.resize}"
            )
        return self

    @property
    def crop_size(self) -> tuple[int, int] | None:
        """(height, width) of the crop, or None."""
        if self.crop is None:
            return None
        if isinstance(self.crop, int):
            return self.crop, self.crop
        height, width = self.crop
        return height, width

    def sample_shape(self) -> tuple[int, ...] | None:
        """The shape of one preprocessed image, e.g. (3, 224, 224); None without a crop."""
        crop = self.crop_size
        if crop is None:
            return None
        return (3, *crop) if self.layout == "NCHW" else (*crop, 3)


def _to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB; 16-bit values scaled to 8 bits (Pillow's convert clips them)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "I" or mode.startswith("I;16"):
        values = np.asarray(image).astype(np.int64)
        # "I" holds 16-bit PNGs and TIFFs in older Pillows, and 32-bit TIFFs: read as 16-bit.
        gray = ((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        raise ImageError("floating-point images are not supported: send 8- or 16-bit pixels")
    if mode in _PALETTE_MODES and "transparency" in image.info:
        image = image.convert("RGBA")  # the palette's transparency, then dropped with alpha
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ImageError(f"cannot convert a {mode} image to RGB: {error}") from error


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``data`` into a loaded 8-bit RGB Pillow image (see the module's docstring).

    Raises ImageError (an InputError: a 400 when served) for a non-image, a format outside
    ``FORMATS``, more than ``max_pixels`` pixels (checked from the header, before decoding),
    a truncated or corrupt file, or a pixel type without an RGB conversion.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageError(f"an encoded image is bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError("the image is empty (0 bytes)")
    try:
        image: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as error:  # Pillow's own limit, twice its default
        raise ImageError(f"image too large: {error}") from error
    except UnidentifiedImageError as error:  # its message names only the BytesIO object
        raise ImageError(f"not an image in a format read here ({', '.join(FORMATS)})") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"cannot read the image's header: {error}") from error
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height:,} pixels, above the limit of "
            f"{max_pixels:,}: send a smaller image"
        )
    try:
        image.load()
        # In place: without an orientation tag the default returns a copy (18 ms at 12 MP).
        ImageOps.exif_transpose(image, in_place=True)
    except MemoryError:
        raise
    except Exception as error:  # decoders raise OSError, SyntaxError, EOFError, zlib.error...
        raise ImageError(
            f"cannot decode the {image.format} image ({width}x{height}), truncated or "
            f"corrupt: {error}"
        ) from error
    return _to_rgb(image)


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``data`` (an encoded image) as an ``(H, W, 3)`` uint8 RGB array; see ``open_image``."""
    return np.asarray(open_image(data, max_pixels))


def _from_array(array: np.ndarray, max_pixels: int) -> Image.Image:
    if (
        array.dtype != np.uint8
        or array.ndim not in (2, 3)
        or (array.ndim == 3 and array.shape[2] != 3)
    ):
        raise ImageError(
            f"a decoded image is a uint8 array of shape (H, W, 3) or (H, W), got "
            f"{array.dtype} {list(array.shape)}"
        )
    if array.shape[0] * array.shape[1] > max_pixels:
        raise ImageError(f"image {list(array.shape)} is above the limit of {max_pixels:,} pixels")
    return Image.fromarray(np.ascontiguousarray(array), "RGB" if array.ndim == 3 else "L").convert(
        "RGB"
    )


def _resize(image: Image.Image, config: ImagePreprocess) -> Image.Image:
    if config.resize is None:
        return image
    width, height = image.size
    short = config.resize
    if width <= height:
        size = (short, max(1, round(height * short / width)))
    else:
        size = (max(1, round(width * short / height)), short)
    if size == image.size:
        return image
    return image.resize(size, _FILTERS[config.interpolation], reducing_gap=_REDUCING_GAP)


def _crop(image: Image.Image, config: ImagePreprocess) -> Image.Image:
    crop = config.crop_size
    if crop is None:
        return image
    height, width = crop
    if image.width < width or image.height < height:
        raise ImageError(
            f"image {image.width}x{image.height} is smaller than the crop {width}x{height}: "
            f"set preprocess image resize to at least the crop"
        )
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def _pixels(image: bytes | np.ndarray | Image.Image, config: ImagePreprocess) -> np.ndarray:
    """One image resized and cropped, as an (H, W, 3) uint8 array."""
    if isinstance(image, np.ndarray):
        pil = _from_array(image, config.max_pixels)
    elif isinstance(image, Image.Image):  # opened by the caller: still held to the limit
        if image.width * image.height > config.max_pixels:
            raise ImageError(f"image {image.size} is above the limit of {config.max_pixels:,}")
        pil = _to_rgb(image)
    else:
        pil = open_image(image, config.max_pixels)
    return np.asarray(_crop(_resize(pil, config), config))


def preprocess(
    images: Sequence[bytes | np.ndarray | Image.Image], config: ImagePreprocess
) -> np.ndarray:
    """A batch for the model from ``images``: encoded bytes (decoded with ``open_image``'s
    checks), ``(H, W, 3)`` / ``(H, W)`` uint8 arrays, or Pillow images, mixed as needed.

    Returns ``(N, 3, H, W)`` (or NHWC) in ``config.dtype``. Raises ImageError for an image
    that cannot be used, InputError for an empty list or images of different sizes after
    pre-processing (set ``crop``).
    """
    if len(images) == 0:
        raise InputError("preprocess needs at least one image")
    arrays = [_pixels(image, config) for image in images]
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise InputError(
            f"the images differ in size after pre-processing ({shapes[0]} and {shapes[-1]}); "
            f"set preprocess image crop so that every image has the model's size"
        )
    if config.dtype == "uint8":
        batch = np.stack(arrays)
        return np.ascontiguousarray(
            batch.transpose(0, 3, 1, 2) if config.layout == "NCHW" else batch
        )
    return _normalised(arrays, config)


def _table(config: ImagePreprocess) -> np.ndarray:
    """(3, 256): what each 0-255 value of each channel becomes, ``(v / 255 - mean) / std``
    in float32 (then ``config.dtype``), the very operations applied to every pixel before."""
    values = np.arange(256, dtype=np.float32)[None, :] / np.float32(255)
    mean = np.asarray(config.mean, np.float32)[:, None]
    std = np.asarray(config.std, np.float32)[:, None]
    return ((values - mean) / std).astype(config.dtype)


def _normalised(arrays: list[np.ndarray], config: ImagePreprocess) -> np.ndarray:
    """The batch in ``config.dtype`` and layout, each pixel looked up in :func:`_table` and
    written once into the result: the same values as converting, scaling, subtracting,
    dividing and transposing the batch (five passes and as many temporaries), 0.3 ms less
    per 224x224 image."""
    table = _table(config)
    height, width = arrays[0].shape[:2]
    if config.layout == "NCHW":
        out = np.empty((len(arrays), 3, height, width), table.dtype)
        for index, pixels in enumerate(arrays):
            for channel in range(3):
                # uint8 values always index the table: "clip" skips the check and a buffer.
                np.take(table[channel], pixels[:, :, channel], out=out[index, channel], mode="clip")
        return out
    channels = np.arange(3)
    return np.ascontiguousarray(table[channels, np.stack(arrays)])
