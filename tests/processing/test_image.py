"""Image decoding and pre-processing on real photos and on hostile or unusual files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import sklearn
from PIL import Image
from pydantic import ValidationError

from shipyard.errors import ImageError, InputError
from shipyard.processing import ImagePreprocess, decode, preprocess

CHINA = Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg"


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return CHINA.read_bytes()


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png(width: int, height: int, rows: bytes = b"", bit_depth: int = 8, colour: int = 2) -> bytes:
    """A PNG written by hand: ``rows`` are its raw scanlines (each led by a filter byte).
    With no rows its header still declares ``width`` x ``height``: decoding its pixels could
    only fail (as truncated), so a size refusal proves that nothing was decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def png_rgb16(pixels: np.ndarray) -> bytes:
    """A real 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    return png(width, height, rows, bit_depth=16)


def test_decode_gives_the_photo_as_rgb_uint8(jpeg: bytes) -> None:
    array = decode(jpeg)
    assert array.shape == (427, 640, 3) and array.dtype == np.uint8
    assert np.array_equal(array, np.asarray(Image.open(CHINA).convert("RGB")))


@pytest.mark.parametrize(
    "data", [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n", bytes(range(256)) * 8]
)
def test_non_images_are_refused(data: bytes) -> None:
    with pytest.raises(ImageError) as caught:
        decode(data)
    assert isinstance(caught.value, InputError)  # served: a 400, not a 500


def test_formats_outside_the_allowlist_are_refused() -> None:
    # Pillow reads PPM (and EPS through Ghostscript...): only the listed formats are opened.
    ppm = encode(Image.new("RGB", (4, 4), "red"), "PPM")
    with pytest.raises(ImageError, match="not an image in a format read here"):
        decode(ppm)


def test_a_20000_square_header_is_refused_before_decoding() -> None:
    bomb = png(20_000, 20_000)
    assert len(bomb) < 100  # declares 1.2 GB of pixels
    with pytest.raises(ImageError, match="too large"):
        decode(bomb)


def test_the_pixel_limit_is_checked_from_the_header() -> None:
    # 8000 x 8000 is under Pillow's own bomb limit: our limit refuses it, with the numbers,
    # before any decoding (the empty IDAT would otherwise fail as truncated).
    with pytest.raises(ImageError, match=r"8000x8000 = 64,000,000 pixels, above the limit"):
        decode(png(8000, 8000))
    with pytest.raises(ImageError, match="above the limit of 1,000"):
        decode(png(40, 40), max_pixels=1000)
    small = ImagePreprocess(max_pixels=1000)  # arrays and Pillow images are held to it too
    for image in (np.zeros((40, 40, 3), np.uint8), Image.new("RGB", (40, 40))):
        with pytest.raises(ImageError, match="above the limit of 1,000"):
            preprocess([image], small)


def test_a_compressible_huge_image_is_refused() -> None:
    blank = encode(Image.new("L", (7000, 7000)), "PNG")  # 49 MP, a few kB
    assert len(blank) < 200_000
    with pytest.raises(ImageError, match="above the limit"):
        decode(blank)


def test_a_truncated_jpeg_is_refused(jpeg: bytes) -> None:
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode(jpeg[: len(jpeg) // 2])


def test_cmyk_jpeg_becomes_rgb(jpeg: bytes) -> None:
    original = decode(jpeg)
    cmyk = encode(Image.fromarray(original).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK"
    rgb = decode(cmyk)
    assert rgb.shape == original.shape and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - original).mean() < 6  # JPEG loss only


def test_16_bit_grayscale_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    png = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(png)).mode.startswith("I")
    rgb = decode(png)
    assert rgb.shape == (1, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]  # Pillow's convert("RGB") gives 255s
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_16_bit_rgb_png_keeps_the_high_bytes() -> None:
    pixels = np.random.default_rng(0).integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    rgb = decode(png_rgb16(pixels))
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 6, 3)
    assert np.abs(rgb.astype(int) - (pixels >> 8)).max() <= 1


def test_grayscale_palette_and_alpha_become_rgb() -> None:
    gray = decode(encode(Image.new("L", (3, 2), 77), "PNG"))
    assert gray.shape == (2, 3, 3) and (gray == 77).all()
    palette = Image.new("P", (2, 2))
    palette.putpalette([10, 20, 30] * 256)
    assert decode(encode(palette, "PNG", transparency=0)).tolist() == [[[10, 20, 30]] * 2] * 2
    rgba = decode(encode(Image.new("RGBA", (2, 2), (1, 2, 3, 0)), "PNG"))
    assert rgba.shape == (2, 2, 3) and (rgba == [1, 2, 3]).all()


def test_exif_orientation_is_applied(jpeg: bytes) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = encode(Image.open(CHINA), "JPEG", exif=exif.tobytes())
    assert decode(rotated).shape == (640, 427, 3)


CONFIG = ImagePreprocess(resize=256, crop=224, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))


def test_bytes_and_decoded_arrays_give_the_same_batch(jpeg: bytes) -> None:
    batch = preprocess([jpeg, decode(jpeg), Image.open(CHINA)], CONFIG)
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == np.float32
    assert batch.flags.c_contiguous
    assert np.array_equal(batch[0], batch[1]) and np.array_equal(batch[0], batch[2])


def test_normalisation_layout_and_dtype() -> None:
    flat = np.full((300, 400, 3), (255, 102, 0), dtype=np.uint8)
    nchw = preprocess([flat], CONFIG)[0]
    assert np.allclose(nchw[:, 0, 0], [(1 - 0.5) / 0.2, (0.4 - 0.4) / 0.25, (0 - 0.3) / 0.5])
    nhwc = preprocess([flat], CONFIG.model_copy(update={"layout": "NHWC", "dtype": "float16"}))
    assert nhwc.shape == (1, 224, 224, 3) and nhwc.dtype == np.float16
    assert np.allclose(nhwc[0].transpose(2, 0, 1), nchw, atol=1e-2)
    raw = preprocess([flat], ImagePreprocess(resize=256, crop=(200, 100), dtype="uint8"))
    assert raw.shape == (1, 3, 200, 100) and raw.dtype == np.uint8
    assert raw[0, :, 0, 0].tolist() == [255, 102, 0]


def test_resize_takes_the_shorter_side_and_crop_the_centre() -> None:
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, 150:] = 255  # right half white
    out = preprocess([image], ImagePreprocess(resize=50, crop=(50, 60), dtype="uint8"))
    # 100x300 -> 50x150; the centre 60 columns hold 30 black then 30 white ones
    assert out.shape == (1, 3, 50, 60)
    assert (out[0, :, :, :29] == 0).all() and (out[0, :, :, 31:] == 255).all()


def test_images_of_different_sizes_need_a_crop() -> None:
    sizes = [np.zeros((10, 20, 3), np.uint8), np.zeros((10, 30, 3), np.uint8)]
    with pytest.raises(InputError, match="differ in size"):
        preprocess(sizes, ImagePreprocess(resize=10))
    with pytest.raises(ImageError, match="smaller than the crop"):
        preprocess([np.zeros((10, 20, 3), np.uint8)], ImagePreprocess(crop=16))
    with pytest.raises(ImageError, match=r"uint8 array of shape \(H, W, 3\)"):
        preprocess([np.zeros((10, 20, 4), np.uint8)], ImagePreprocess(crop=8))
    with pytest.raises(InputError, match="at least one image"):
        preprocess([], CONFIG)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"resize": 200, "crop": 224}, "larger than the resized shorter side"),
        ({"dtype": "uint8", "mean": (0.5, 0.5, 0.5)}, "takes no mean or std"),
        ({"std": (1.0, 0.0, 1.0)}, "std values must be > 0"),
        ({"crop": (0, 4)}, "crop sides must be >= 1"),
        ({"layout": "CHW"}, "NCHW"),
    ],
)
def test_settings_are_checked(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ImagePreprocess(**fields)  # type: ignore[arg-type]
