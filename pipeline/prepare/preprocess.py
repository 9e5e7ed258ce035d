"""The one preprocessing function (paper section 2): decode, RGB, short side to ``size``, centre crop.

Used by the converter, the benchmarks and the tests. The geometry is exact: the output covers the
centred ``s x s`` square of the (EXIF-oriented) input, ``s`` its shorter side, resampled with an
antialiased bicubic filter (``resample.resize_box``: Pillow's filter and geometry, float
accumulation, compiled). Only that square is resampled, and JPEGs are first decoded at a reduced
DCT scale as far as the short side stays at least 1.5x the target (``draft``): both are large
speed-ups whose effect on the pixels the tests bound (PSNR against a full-resolution float reference).

Two decoders, one result: a plain JPEG (YCbCr or greyscale, upright: nearly every ImageNet photo)
is decoded by libjpeg-turbo through ``simplejpeg`` straight into an (H, W, 3) array, at the DCT
scale Pillow's ``draft`` picks; everything else (PNG, CMYK, EXIF-rotated, damaged or truncated
data...) goes through Pillow. The tests hold the two to the same bytes on every JPEG kind (they are
the same library's integer IDCT and colour conversion). The fast one skips Pillow's RGBX storage
and the copy out of it: 0.7 ms less per photo-size image, a quarter of the decode (BENCHMARKS.md).
A JPEG without APP1 (EXIF, XMP) or MPF segments skips Pillow's header parse too (a marker walk and
libjpeg-turbo's own header read, 0.07 ms less); one with them is opened by Pillow, which reads its
orientation, and is still decoded by simplejpeg when upright.
"""
from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

from . import resample

try:
    import simplejpeg
except ImportError:  # pragma: no cover - a dependency (setup.py); without it Pillow decodes all
    simplejpeg = None

# Panoramas and 5,000-pixel photos are legitimate inputs; beyond this, refuse (decompression bomb).
# Pillow's own limit is a process-wide global that importing this module leaves alone: open_image
# applies ours for the duration of its own Image.open (where Pillow checks it).
MAX_PIXELS = 16_000 * 16_000
# A JPEG is decoded at a reduced DCT scale only as far as its short side stays >= DRAFT_MARGIN x size.
# Measured (BENCHMARKS.md): 2 gives min PSNR 56.8 dB on photo-size JPEGs, 1.5 gives 45.8 dB and
# 15 % less CPU per image (1024x768 photos are then decoded at 1/2), 1 gives 42.1 dB: too thin.
DRAFT_MARGIN = 1.5
# The resampler is named: it decides the output bytes (Pillow's own 8-bit resampler, used before,
# differs by a level or two on photos, more where it clips between its passes), and the job
# identity compares PARAMS when a conversion resumes.
PARAMS = {"resize": "short side", "filter": "bicubic-antialiased", "crop": "centre",
          "resampler": resample.IDENTITY, "exif_orientation": True, "alpha": "composited over white",
          "draft": f"JPEG DCT scaling while the short side stays >= {DRAFT_MARGIN} x size"}


class DecodeError(Exception):
    """The input is not a decodable image (the message says why)."""


def open_image(data: bytes) -> Image.Image:
    """Open encoded bytes lazily (the decode happens in ``to_rgb_square``)."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_PIXELS
            try:
                return Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except Image.DecompressionBombError as e:
        raise DecodeError(f"too large: {e}") from None
    except Image.UnidentifiedImageError:
        # Its message holds the BytesIO's address: different on every run (skipped.json must not).
        raise DecodeError("cannot identify image (not an image, or its header is damaged)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DecodeError(f"cannot identify image (not an image, or its header is damaged): {e}") from None


def centre_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The centred square of side min(width, height), in pixel-edge coordinates."""
    side = min(width, height)
    x0, y0 = (width - side) / 2, (height - side) / 2
    return (x0, y0, x0 + side, y0 + side)


def truncation_note(img: Image.Image) -> str:
    """What a truncated input lost, for the output's list of them: the share of rows at the bottom
    that the decoder filled with its flat grey (128) for a baseline JPEG; a progressive JPEG has
    every row, with coarser detail (its later scans are missing)."""
    a = np.asarray(img)
    grey = a.reshape(a.shape[0], -1) == 128
    filled = int(np.argmin(grey[::-1].all(axis=1))) if not grey.all() else a.shape[0]
    what = (f"{filled} of {a.shape[0]} rows ({100 * filled / a.shape[0]:.0f}%) missing, filled grey"
            if filled else "all rows decoded, later detail scans missing")
    return f"data ends early (no end-of-image marker), decoded as far as it goes: {what}"


def _draft_request(width: int, height: int, size: int) -> tuple[int, int] | None:
    """The size asked of a JPEG's ``draft`` (None: decode in full).

    DRAFT_MARGIN x the target resolution, so the bicubic filter still does the final antialiasing
    (DCT scaling alone aliases on fine texture: 42 dB instead of 57 dB on our test photos). Pillow
    reduces by a power of two only, so this halves the decode from a 768 px short side up (quarters
    from 1536): most ImageNet photos are decoded in full."""
    if min(width, height) < DRAFT_MARGIN * size:
        return None
    scale = min(width, height) / (DRAFT_MARGIN * size)
    return max(1, int(width / scale)), max(1, int(height / scale))


def _draft_factor(width: int, height: int, request: tuple[int, int] | None) -> int:
    """The DCT reduction (8, 4, 2 or 1) that Pillow's ``JpegImageFile.draft`` picks for ``request``."""
    if request is None:
        return 1
    scale = min(width // request[0], height // request[1])
    return next(s for s in (8, 4, 2) if scale >= s) if scale >= 2 else 1


def _plain_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG that needs nothing of Pillow's header parse, read without it:
    YCbCr or greyscale, no APP1 segment (EXIF or XMP: where an orientation would be) and no MPF
    (multi-picture), at most MAX_PIXELS. None for anything else, and for any marker it does not
    follow: Pillow then opens the input, as it does every other input."""
    if simplejpeg is None or data[:3] != b"\xff\xd8\xff":
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end and data[pos] == 0xFF:  # the segments up to the first scan
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: the header is complete
            break
        if marker == 0xE1 or (marker == 0xE2 and data[pos + 4:pos + 8] == b"MPF\0"):
            return None
        if marker < 0xC0 or 0xD0 <= marker <= 0xD9 or marker == 0xFF:  # a stray marker, fill bytes
            return None
        pos += 2 + ((data[pos + 2] << 8) | data[pos + 3])
    else:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("YCbCr", "Gray") or width * height > MAX_PIXELS:
        return None
    return width, height


def _decode_plain_jpeg(data: bytes, width: int, height: int, size: int) -> np.ndarray | None:
    """A plain JPEG (Pillow mode RGB or L: YCbCr, Adobe RGB or greyscale; no EXIF rotation) of
    ``width`` x ``height`` decoded by simplejpeg into a uint8 (H, W, 3) array, at Pillow's draft
    scale: the pixels of ``_load`` then ``_to_rgb``. None for data with a fault (libjpeg's warnings
    are errors here): Pillow then decodes it, as far as it goes, and says what was missing."""
    s = _draft_factor(width, height, _draft_request(width, height, size))
    w, h = -(-width // s), -(-height // s)  # libjpeg's scaled size, as Pillow's draft computes it
    try:
        rgb = simplejpeg.decode_jpeg(data, "RGB", min_factor=s, min_height=h, min_width=w)
    except ValueError:  # strict mode: corrupt data, data ends early, a header it cannot read
        return None
    return rgb if rgb.shape == (h, w, 3) else None


def _is_plain_jpeg(img: Image.Image) -> bool:
    """Pillow's view of the same: a JPEG of mode RGB or L, upright (CMYK and YCCK: Pillow inverts
    Adobe's CMYK, simplejpeg would convert its own way)."""
    return (simplejpeg is not None and img.format == "JPEG" and img.mode in ("RGB", "L")
            and img.getexif().get(0x0112, 1) == 1)


def _load(img: Image.Image, size: int, notes: list | None = None
          ) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """Decode (at a reduced JPEG scale when possible); return the image and the crop box in it."""
    width, height = img.size
    orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
    request = _draft_request(width, height, size) if img.format == "JPEG" else None
    if request is not None:
        img.draft(None, request)
    try:
        img.load()
    except OSError as e:
        if "truncated" not in str(e):
            raise
        # Data ends early: keep what was decoded, the rest is filled grey by the decoder.
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            img.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        if notes is not None:
            notes.append(truncation_note(img))
    if orientation != 1:
        img = ImageOps.exif_transpose(img)
    return img, centre_box(*img.size)


def decode(data: bytes, size: int = 256) -> Image.Image:
    """Pillow's decode as ``to_rgb_square`` does it for inputs that are not plain JPEGs (same DCT
    scaling, EXIF orientation), to a Pillow image: the benchmark's ``decode-only`` ceiling."""
    return _load(open_image(data), size)[0]


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit (or float) greyscale: scale the full range to 8 bits instead of clipping at 255.
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode != "F" or a.max() > 1.0 else 1.0
        a = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, P, CMYK (Adobe inversion handled by the decoder), YCbCr, 1


def to_rgb_square(data, size: int = 256, notes: list | None = None) -> np.ndarray:
    """Encoded image bytes (or a uint8 (H, W) / (H, W, 3) pixel array, for sources that store
    pixels) -> uint8 array (size, size, 3): RGB, short side to size, centre crop.

    Raises DecodeError (with the reason) for anything that cannot be decoded. An input whose data
    ends early is decoded as far as it goes; ``notes`` (when given) then gets what was missing."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[2] != 3):
            raise DecodeError(f"expected uint8 (H, W) or (H, W, 3) pixels, got {data.dtype} {data.shape}")
        rgb = np.repeat(data[..., None], 3, axis=2) if data.ndim == 2 else data
        return resample.resize_box(rgb, centre_box(rgb.shape[1], rgb.shape[0]), size)
    rgb, box = decode_rgb(data, size, notes)
    return resample.resize_box(rgb, box, size)


def decode_rgb(data: bytes, size: int = 256, notes: list | None = None
               ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The decode of ``to_rgb_square``: a uint8 (H, W, 3) RGB array (at a reduced JPEG scale when
    possible) and the centre box to resample in it. Raises DecodeError like it."""
    plain = _plain_jpeg_size(data)
    if plain is not None and (rgb := _decode_plain_jpeg(data, *plain, size)) is not None:
        return rgb, centre_box(rgb.shape[1], rgb.shape[0])
    img = open_image(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if plain is None and _is_plain_jpeg(img):  # e.g. EXIF that says "upright"
                rgb = _decode_plain_jpeg(data, *img.size, size)
                if rgb is not None:
                    return rgb, centre_box(rgb.shape[1], rgb.shape[0])
            img, box = _load(img, size, notes)  # the first frame of animations
            rgb = np.asarray(_to_rgb(img))  # (H, W, 3) uint8, a copy out of Pillow's RGBX storage
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError(f"too large: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise DecodeError(f"cannot decode: {type(e).__name__}: {e}") from None
    return rgb, box


def encode_jpeg(arr: np.ndarray, quality: int) -> bytes:
    """uint8 HWC RGB -> JPEG bytes (4:2:0, the payload of --encoding=jpeg)."""
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=quality, subsampling=2)
    return buf.getvalue()
