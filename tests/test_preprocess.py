"""The one preprocessing function against an independent float reference, and every quirky input."""
import numpy as np
import pytest
from PIL import Image

from images import encode, png16_rgb
from tools import synthetic
from tools.fidelity import decode_full, psnr, reference
from pipeline.prepare.preprocess import DecodeError, to_rgb_square


@pytest.fixture(scope="module")
def photo():
    return synthetic.photo(np.random.default_rng(3), 150, 100, label=2, n_classes=5)


@pytest.mark.parametrize("wh", [(150, 100), (100, 150), (64, 64), (257, 31), (40, 300)])
def test_small_png_matches_float_reference_to_rounding(wh):
    rgb = synthetic.photo(np.random.default_rng(wh[0]), *wh, label=1, n_classes=3)
    out = to_rgb_square(encode(Image.fromarray(rgb), "PNG"), 48)
    ref = reference(rgb, 48)
    assert out.shape == (48, 48, 3) and out.dtype == np.uint8
    # Pillow's 8-bit resampler rounds (and clips) after each of its two 1-D passes: within ~2 of
    # the float result at overshooting edges, unbiased, and well above the 40 dB fidelity bar.
    err = out.astype(np.float64) - ref
    assert np.abs(err).max() <= 2.5 and abs(err.mean()) < 0.1 and psnr(out, ref) > 50


@pytest.mark.parametrize("wh", [(500, 375), (1024, 768), (768, 1024), (2000, 600)])
def test_photo_jpeg_fidelity_at_least_40db(wh):
    rgb = synthetic.photo(np.random.default_rng(wh[1]), *wh, label=3, n_classes=10)
    data = synthetic.jpeg_bytes(rgb, 90)
    out = to_rgb_square(data, 256)
    # The reference decodes at full resolution (no DCT-domain draft) and resamples in float.
    assert psnr(out, reference(decode_full(data), 256)) >= 40.0


@pytest.mark.parametrize("wh, decoded", [((800, 600), (800, 600)), ((1024, 768), (512, 384)),
                                         ((768, 1024), (384, 512)), ((3072, 2304), (768, 576))])
def test_draft_keeps_the_short_side_at_least_one_and_a_half_times_the_target(wh, decoded, monkeypatch):
    """DCT scaling by 1/2, 1/4, 1/8 only while the decoded short side stays >= 1.5 x 256 = 384."""
    from pipeline.prepare import preprocess

    seen = []
    resize = preprocess.resample.resize_box
    monkeypatch.setattr(preprocess.resample, "resize_box",
                        lambda src, box, size: seen.append(src.shape[1::-1]) or resize(src, box, size))
    rgb = np.zeros((wh[1], wh[0], 3), np.uint8)
    assert to_rgb_square(synthetic.jpeg_bytes(rgb, 90), 256).shape == (256, 256, 3)
    assert seen == [decoded]


def test_centre_crop_geometry_panorama():
    # Left half red, right half blue, a green band in the middle third: the centre square of a
    # 3:1 panorama is exactly the green band.
    w, h = 300, 100
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, :150, 0] = 255
    rgb[:, 150:, 2] = 255
    rgb[:, 100:200] = (0, 255, 0)
    out = to_rgb_square(encode(Image.fromarray(rgb), "PNG"), 32)
    assert (out[:, 2:-2] == (0, 255, 0)).all()


def test_grayscale_gives_equal_channels(photo):
    gray = Image.fromarray(photo).convert("L")
    out = to_rgb_square(encode(gray, "PNG"), 40)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    np.testing.assert_allclose(out[..., 0], reference(np.asarray(gray.convert("RGB")), 40)[..., 0], atol=1)


def test_cmyk_jpeg_matches_rgb(photo):
    cmyk = encode(Image.fromarray(photo).convert("CMYK"), "JPEG", quality=95)
    rgb = encode(Image.fromarray(photo), "JPEG", quality=95)
    assert Image.open(__import__("io").BytesIO(cmyk)).mode == "CMYK"
    assert psnr(to_rgb_square(cmyk, 64), to_rgb_square(rgb, 64)) > 30


def test_palette_png(photo):
    pal = Image.fromarray(photo).quantize(64)
    out = to_rgb_square(encode(pal, "PNG"), 40)
    assert np.abs(out.astype(float) - reference(np.asarray(pal.convert("RGB")), 40)).max() <= 1


def test_rgba_transparent_becomes_white_and_opaque_is_kept(photo):
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    rgba[:, :50, 3] = 0  # left third transparent; its RGB is garbage that must not show
    rgba[:, :50, :3] = (0, 0, 0)
    out = to_rgb_square(encode(Image.fromarray(rgba, "RGBA"), "PNG"), 100)  # centre square x 25..125
    assert (out[:, :20] >= 250).all()  # source x 25..45: transparent -> white
    expected = reference(photo, 100)
    assert np.abs(out[:, 35:].astype(float) - expected[:, 35:]).max() <= 1


def test_16bit_grey_png_scales_full_range():
    v = (np.arange(60 * 80) % 256).reshape(60, 80).astype(np.uint8)
    data = encode(Image.fromarray(v.astype(np.uint16) * 257), "PNG")
    assert Image.open(__import__("io").BytesIO(data)).mode.startswith("I")
    out = to_rgb_square(data, 30)
    np.testing.assert_array_equal(out, to_rgb_square(encode(Image.fromarray(v), "PNG"), 30))


def test_16bit_rgb_png(photo):
    data = png16_rgb(photo.astype(np.uint16) * 257)
    out = to_rgb_square(data, 50)
    assert np.abs(out.astype(float) - reference(photo, 50)).max() <= 1.5


def test_png_bytes_under_jpeg_name(tmp_path, photo):
    path = tmp_path / "n02105855_2933.JPEG"
    path.write_bytes(encode(Image.fromarray(photo), "PNG"))
    assert np.abs(to_rgb_square(path.read_bytes(), 40).astype(float) - reference(photo, 40)).max() <= 1


@pytest.mark.parametrize("wh", [(1, 1), (3, 2), (7, 13)])
def test_tiny_images_are_upsampled(wh):
    rgb = np.random.default_rng(0).integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8)
    out = to_rgb_square(encode(Image.fromarray(rgb), "PNG"), 32)
    assert out.shape == (32, 32, 3)
    if wh == (1, 1):
        assert (out == rgb[0, 0]).all()


def test_5000_pixel_photo():
    rng = np.random.default_rng(0)
    small = synthetic.photo(rng, 500, 300, 1, 4)
    big = np.asarray(Image.fromarray(small).resize((5000, 3000), Image.Resampling.BILINEAR))
    data = synthetic.jpeg_bytes(big, 90)
    out = to_rgb_square(data, 256)
    assert psnr(out, reference(decode_full(data), 256)) >= 40.0


def test_exif_orientation_is_applied(photo):
    img = Image.fromarray(photo)  # 150 wide x 100 high
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = rotate 270 (90 clockwise)
    data = encode(img, "JPEG", quality=95, exif=exif.tobytes())
    upright = np.asarray(img.transpose(Image.Transpose.ROTATE_270))
    out = to_rgb_square(data, 64)
    assert psnr(out, reference(upright, 64)) > 30
    assert psnr(out, reference(photo, 64)) < psnr(out, reference(upright, 64)) - 5


def test_animated_gif_first_frame(photo):
    frames = [Image.fromarray(photo).quantize(128), Image.fromarray(255 - photo).quantize(128)]
    buf = __import__("io").BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = to_rgb_square(buf.getvalue(), 40)
    assert np.abs(out.astype(float) - reference(np.asarray(frames[0].convert("RGB")), 40)).max() <= 1


def test_slightly_truncated_jpeg_is_repaired(photo):
    data = synthetic.jpeg_bytes(photo, 90)
    out = to_rgb_square(data[: int(len(data) * 0.8)], 40)
    full = to_rgb_square(data, 40)
    assert psnr(out[:10], full[:10]) > 35  # the top rows were in the data


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (b"this is a text file, not an image\n", "cannot identify image"),
    ("jpeg-head", "header is damaged|cannot decode"),
])
def test_undecodable_inputs_raise_decode_error(photo, data, reason):
    if data == "jpeg-head":
        data = synthetic.jpeg_bytes(photo)[:120]  # the header alone: nothing to repair
    with pytest.raises(DecodeError, match=reason):
        to_rgb_square(data, 32)


# Two decoders, one result: simplejpeg for plain JPEGs, Pillow for the rest. The reference is
# Pillow's path (preprocess.decode: Pillow's own draft, then its RGB conversion), decoded apart.

def _pillow_pixels(data: bytes, size: int = 256) -> np.ndarray:
    from pipeline.prepare import preprocess

    return np.asarray(preprocess.decode(data, size).convert("RGB"))


def _jpeg(wh, seed=0, **save) -> bytes:
    rgb = synthetic.photo(np.random.default_rng(seed), *wh, label=seed % 5, n_classes=5)
    return encode(Image.fromarray(rgb), "JPEG", **save)


_SIZES = [((500, 375), 1), ((375, 500), 1), ((777, 411), 1), ((767, 1023), 1), ((1024, 768), 2),
          ((1023, 769), 2), ((1600, 1201), 2), ((2048, 1537), 4)]
_SAVES = {"420": dict(quality=90), "444": dict(quality=75, subsampling=0),
          "422": dict(quality=95, subsampling=1), "prog": dict(quality=85, progressive=True),
          "opt": dict(quality=80, optimize=True)}


@pytest.mark.parametrize("wh, factor, save",
                         [(wh, f, save) for wh, f in _SIZES for save in _SAVES.values()]
                         + [((4097, 3073), 8, _SAVES["420"])],
                         ids=[f"{w}x{h}-{k}" for (w, h), _ in _SIZES for k in _SAVES] + ["4097x3073-420"])
def test_plain_jpeg_decoder_gives_pillows_pixels(wh, factor, save):
    from pipeline.prepare import preprocess

    if preprocess.simplejpeg is None:
        pytest.skip("simplejpeg not installed: Pillow decodes every input")
    data = _jpeg(wh, seed=wh[0], **save)
    assert preprocess._plain_jpeg_size(data) == wh  # read from the markers, without Pillow
    fast = preprocess._decode_plain_jpeg(data, *wh, 256)
    assert fast is not None, "a plain JPEG must take the fast path"
    expected = _pillow_pixels(data)
    assert expected.shape[:2] == (-(-wh[1] // factor), -(-wh[0] // factor))  # the DCT scale meant
    assert fast.shape == expected.shape and fast.dtype == np.uint8
    np.testing.assert_array_equal(fast, expected)


def test_greyscale_jpeg_decoder_gives_pillows_pixels():
    from pipeline.prepare import preprocess

    if preprocess.simplejpeg is None:
        pytest.skip("simplejpeg not installed")
    for wh in ((500, 333), (1024, 768)):
        rgb = synthetic.photo(np.random.default_rng(1), *wh, label=1, n_classes=3)
        data = encode(Image.fromarray(rgb).convert("L"), "JPEG", quality=90)
        assert preprocess._plain_jpeg_size(data) == wh
        fast = preprocess._decode_plain_jpeg(data, *wh, 256)
        assert fast is not None and fast.shape[2] == 3
        np.testing.assert_array_equal(fast, _pillow_pixels(data))


def test_other_inputs_leave_the_plain_jpeg_decoder(photo):
    """CMYK, EXIF-rotated, truncated and non-JPEG inputs are Pillow's (its CMYK inversion, its
    rotation, its notes on what a truncated file lost)."""
    from pipeline.prepare import preprocess

    exif = Image.Exif()
    exif[0x0112] = 6
    full = synthetic.jpeg_bytes(photo, 90)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    cmyk = encode(Image.fromarray(photo).convert("CMYK"), "JPEG", quality=95)
    rotated = encode(Image.fromarray(photo), "JPEG", quality=95, exif=exif.tobytes())
    xmp_rotated = encode(Image.fromarray(photo), "JPEG", quality=95, xmp=xmp)
    mpo = encode(Image.fromarray(photo), "MPO", quality=95, save_all=True,
                 append_images=[Image.fromarray(photo[::-1])])  # two frames: Pillow opens it as MPO
    for data in (cmyk, rotated, xmp_rotated, mpo, encode(Image.fromarray(photo), "PNG")):
        assert preprocess._plain_jpeg_size(data) is None  # neither from the markers...
        img = preprocess.open_image(data)
        assert not preprocess._is_plain_jpeg(img)  # ...nor by Pillow's header parse
    assert preprocess.open_image(xmp_rotated).getexif()[0x0112] == 6  # Pillow reads XMP's orientation
    truncated = full[: int(len(full) * 0.8)]
    assert preprocess._decode_plain_jpeg(truncated, *photo.shape[1::-1], 256) is None  # strict
    notes = []
    to_rgb_square(full[: int(len(full) * 0.8)], 40, notes)
    assert len(notes) == 1 and "missing, filled grey" in notes[0]


def test_conversion_bytes_do_not_depend_on_the_decoder(tmp_path, monkeypatch):
    """The same source tree (plain, greyscale, progressive, EXIF- and XMP-rotated, EXIF-upright, CMYK
    JPEGs) converts to the same bytes with simplejpeg and with Pillow alone."""
    from helpers import tree_digest
    from pipeline.prepare import preprocess
    from pipeline.prepare.convert import convert

    if preprocess.simplejpeg is None:
        pytest.skip("simplejpeg not installed")
    rng = np.random.default_rng(9)
    exif, upright = Image.Exif(), Image.Exif()
    exif[0x0112], upright[0x0112] = 8, 1
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="3"/></rdf:RDF></x:xmpmeta>'
    for split in ("train", "val"):
        for c in range(2):
            folder = tmp_path / "src" / split / f"c{c}"
            folder.mkdir(parents=True)
            for i, (wh, mode, save) in enumerate([((500, 375), "RGB", {}), ((1024, 768), "RGB", {}),
                                                  ((640, 480), "L", {}), ((800, 600), "RGB", {"progressive": True}),
                                                  ((333, 500), "RGB", {"exif": exif.tobytes()}),
                                                  ((500, 333), "RGB", {"exif": upright.tobytes()}),
                                                  ((375, 500), "RGB", {"xmp": xmp}),
                                                  ((400, 300), "CMYK", {})]):
                img = Image.fromarray(synthetic.photo(rng, *wh, label=c, n_classes=2)).convert(mode)
                (folder / f"{i}.jpg").write_bytes(encode(img, "JPEG", quality=90, **save))

    convert(tmp_path / "src", tmp_path / "fast", size=64, workers=1, progress=False)
    monkeypatch.setattr(preprocess, "simplejpeg", None)
    convert(tmp_path / "src", tmp_path / "pillow", size=64, workers=1, progress=False)
    assert tree_digest(tmp_path / "fast") == tree_digest(tmp_path / "pillow")


def test_damaged_headers_end_as_they_do_through_pillows_header_parse(monkeypatch):
    """The marker walk that lets plain JPEGs skip Pillow's header parse changes no outcome: 300
    JPEGs with bytes changed, cut or inserted in their first 700 bytes give the same pixels, or the
    same DecodeError, as with every input opened by Pillow first."""
    from pipeline.prepare import preprocess

    if preprocess.simplejpeg is None:
        pytest.skip("simplejpeg not installed")

    def outcome(data):
        try:
            return to_rgb_square(data, 32).tobytes()
        except DecodeError as e:
            return str(e)

    rng = np.random.default_rng(5)
    walked = 0
    for trial in range(300):
        w, h = (int(v) for v in rng.integers(40, 120, 2))
        data = bytearray(encode(Image.fromarray(synthetic.photo(rng, w, h, 1, 3)), "JPEG",
                                quality=int(rng.integers(50, 95)), progressive=trial % 5 == 0))
        for _ in range(int(rng.integers(1, 4))):
            p = int(rng.integers(0, min(len(data), 700)))
            kind = int(rng.integers(0, 3))
            if kind == 0:
                data[p] = int(rng.integers(0, 256))
            elif kind == 1:
                del data[p:p + int(rng.integers(1, 20))]
            else:
                data[p:p] = rng.integers(0, 256, int(rng.integers(1, 10)), dtype=np.uint8).tobytes()
        data = bytes(data)
        walked += preprocess._plain_jpeg_size(data) is not None
        with monkeypatch.context() as m:
            m.setattr(preprocess, "_plain_jpeg_size", lambda data: None)
            expected = outcome(data)
        assert outcome(data) == expected, f"trial {trial}"
    assert walked > 30  # the walk accepted a share of them: the comparison covered its path
