"""Image decoding in every Pillow mode, EXIF orientation, animations, bad files; text checks and token truncation."""

from __future__ import annotations

import unicodedata
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from gen_align.encoders.image_io import load_image, load_images
from gen_align.encoders.text_io import check_texts, truncate_token_ids
from gen_align.errors import ConfigError, GenAlignError, InputDataError, InputFileError

WHITE, RED, BLACK = (255, 255, 255), (255, 0, 0), (0, 0, 0)


def rgb_at(img: Image.Image, xy=(0, 0)) -> tuple[int, int, int]:
    assert img.mode == "RGB"
    return img.getpixel(xy)


def grey_image(mode: str, values: list[float]) -> Image.Image:
    """A 1-row image in ``mode`` holding ``values`` (for the high-depth modes)."""
    dtype = {"I;16": np.uint16, "I;16B": ">u2", "I": np.int32, "F": np.float32}[mode]
    return Image.frombytes(mode, (len(values), 1), np.asarray(values, dtype=dtype).tobytes())


def palette_image(transparent: bool) -> Image.Image:
    img = Image.new("P", (2, 2), 1)
    img.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)  # index 0 blue, index 1 red
    if transparent:
        img.info["transparency"] = 1
    return img


# ------------------------------------------------------------------------------------------------- modes


@pytest.mark.parametrize(
    ("img", "expected"),
    [
        (Image.new("RGB", (2, 2), RED), RED),
        (Image.new("RGBA", (2, 2), (255, 0, 0, 0)), WHITE),  # fully transparent → white background
        (Image.new("RGBA", (2, 2), (255, 0, 0, 255)), RED),
        (Image.new("RGBA", (2, 2), (0, 0, 0, 128)), (127, 127, 127)),
        (Image.new("LA", (2, 2), (0, 0)), WHITE),
        (Image.new("LA", (2, 2), (100, 255)), (100, 100, 100)),
        (Image.new("RGBa", (2, 2), (0, 0, 0, 0)), WHITE),
        (Image.new("La", (2, 2), (0, 0)), WHITE),
        (Image.new("L", (2, 2), 100), (100, 100, 100)),
        (Image.new("1", (2, 2), 1), WHITE),
        (Image.new("1", (2, 2), 0), BLACK),
        (palette_image(transparent=False), RED),
        (palette_image(transparent=True), WHITE),
        (Image.new("PA", (2, 2), (1, 0)), WHITE),
        (Image.new("CMYK", (2, 2), (0, 255, 255, 0)), RED),
        (Image.new("HSV", (2, 2), (0, 255, 255)), RED),
        (Image.new("YCbCr", (2, 2), (76, 85, 255)), (254, 0, 0)),
    ],
    ids=lambda v: v.mode if isinstance(v, Image.Image) else None,
)
def test_every_mode_becomes_rgb(img, expected):
    out = load_image(img)
    assert out.mode == "RGB" and out.size == img.size
    assert rgb_at(out) == pytest.approx(expected, abs=1)


def test_grey_with_transparent_colour_is_composited():
    img = Image.new("L", (2, 1), 7)
    img.putpixel((1, 0), 200)
    img.info["transparency"] = 7
    out = load_image(img)
    assert rgb_at(out, (0, 0)) == WHITE and rgb_at(out, (1, 0)) == (200, 200, 200)


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I;16", [0, 32768, 65535], [0, 128, 255]),  # fixed 16-bit → 8-bit scale
        ("I;16B", [0, 32768, 65535], [0, 128, 255]),
        ("I", [0, 100, 255], [0, 100, 255]),  # already 8-bit range: kept
        ("I", [-1000, 0, 1000], [0, 128, 255]),  # otherwise min-max stretched
        ("F", [0.0, 0.5, 1.0], [0, 128, 255]),  # unit floats × 255
        ("F", [0.0, 2.0, 255.0], [0, 2, 255]),
        ("F", [-1.0, 0.0, 1.0], [0, 128, 255]),
    ],
)
def test_high_depth_modes_are_scaled_to_8_bit(mode, values, expected):
    out = load_image(grey_image(mode, values))
    assert [rgb_at(out, (i, 0))[0] for i in range(len(values))] == expected


def test_non_finite_float_pixels_are_refused():
    with pytest.raises(InputDataError, match=r"F mode\) contains NaN/inf pixels"):
        load_image(grey_image("F", [0.0, float("nan")]))


@pytest.mark.parametrize(
    ("fmt", "img"),
    [
        ("png", Image.new("RGBA", (3, 2), (255, 0, 0, 0))),
        ("png", Image.new("LA", (3, 2), (0, 0))),
        ("png", palette_image(transparent=True)),
        ("png", grey_image("I;16", [0, 65535])),
        ("png", Image.new("1", (3, 2), 1)),
        ("jpeg", Image.new("CMYK", (3, 2), (0, 0, 0, 0))),
        ("tiff", grey_image("F", [0.0, 1.0])),
        ("bmp", Image.new("L", (3, 2), 255)),
        ("webp", Image.new("RGBA", (3, 2), (0, 0, 0, 0))),
    ],
)
def test_files_in_every_mode_load_as_rgb(tmp_path, fmt, img):
    path = tmp_path / f"img.{fmt}"
    img.save(path, format=fmt)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == img.size
    assert max(rgb_at(out, (out.width - 1, 0))) >= 250  # all cases end bright at the right edge


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (4, 2), BLACK)
    img.putpixel((0, 0), RED)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img.save(tmp_path / "rot.png", exif=exif)
    out = load_image(tmp_path / "rot.png")
    assert out.size == (2, 4) and rgb_at(out, (1, 0)) == RED


def test_animated_images_give_their_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), RED), Image.new("RGB", (4, 4), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    with Image.open(tmp_path / "anim.gif") as opened:
        assert opened.is_animated
        opened.seek(1)
        assert rgb_at(load_image(opened)) == RED  # rewinds an in-memory animation too
    assert rgb_at(load_image(tmp_path / "anim.gif")) == RED


# ------------------------------------------------------------------------------------------------- arrays


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((4, 5, 3), (10, 20, 30)), ((4, 5), (10, 10, 10)), ((4, 5, 1), (10, 10, 10)), ((4, 5, 4), WHITE)],
)
def test_uint8_arrays(shape, expected):
    arr = np.zeros(shape, np.uint8)
    arr[...] = [10, 20, 30, 0][: shape[2]] if len(shape) == 3 else 10
    out = load_image(arr)
    assert out.size == (5, 4) and rgb_at(out) == expected


def test_bad_arrays_and_types_are_refused():
    with pytest.raises(InputDataError, match=r"float32 array; pass uint8.*\(arr \* 255\)"):
        load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InputDataError, match=r"shape \(3, 8, 8\).*channels-first: pass arr.transpose\(1, 2, 0\)"):
        load_image(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(InputDataError, match=r"shape \(2, 4, 4, 3\)"):
        load_image(np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(InputDataError, match="zero-size"):
        load_image(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(InputDataError, match="0x5 pixels: zero-size"):
        load_image(Image.new("RGB", (0, 5)))
    with pytest.raises(InputDataError, match="from a Tensor.*to_pil_image"):
        load_image(torch.zeros(3, 4, 4))
    with pytest.raises(InputDataError, match="from a bytes"):
        load_image(b"\x89PNG")


# ------------------------------------------------------------------------------------------------- bad files


def test_missing_directory_corrupt_and_truncated_files(tmp_path):
    with pytest.raises(InputFileError, match=r"nope.png does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InputFileError, match="is a directory"):
        load_image(tmp_path)
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(InputFileError, match=r"noise.png is not an image Pillow can read"):
        load_image(tmp_path / "noise.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputFileError, match=r"empty.jpg is not an image"):
        load_image(tmp_path / "empty.jpg")
    noisy = Image.effect_noise((128, 128), 60).convert("RGB")
    for fmt in ("png", "jpeg"):
        path = tmp_path / f"cut.{fmt}"
        noisy.save(path, format=fmt)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(InputFileError, match=rf"cut.{fmt} could not be decoded .*corrupt or truncated") as info:
            load_image(path)
        assert isinstance(info.value, OSError) and isinstance(info.value, GenAlignError)


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(InputFileError, match=r"big.png is too large.*MAX_IMAGE_PIXELS"):
        load_image(tmp_path / "big.png")


def test_load_images(tmp_path, capsys):
    Image.new("RGB", (3, 3), RED).save(tmp_path / "a.png")
    sources = [tmp_path / "a.png", str(tmp_path / "a.png"), Image.new("L", (3, 3)), np.zeros((3, 3, 3), np.uint8)]
    out = load_images(sources * 3)
    assert len(out) == 12 and all(img.mode == "RGB" for img in out)
    assert "load images" in capsys.readouterr().err
    load_images(sources)
    assert "load images" not in capsys.readouterr().err
    with pytest.raises(InputDataError, match=r"image sources\[1\] is a float64 array"):
        load_images([np.zeros((2, 2), np.uint8), np.zeros((2, 2))])
    with pytest.raises(InputDataError, match="takes a list of images, got a single str"):
        load_images("a.png")
    with pytest.raises(InputDataError, match="no images given"):
        load_images([])


# ------------------------------------------------------------------------------------------------- texts


def test_check_texts_normalises():
    assert check_texts("  a dog  ") == ["a dog"]
    decomposed = "cafe\u0301"
    out = check_texts([decomposed, "x\n"])
    assert out == ["caf\u00e9", "x"] and unicodedata.is_normalized("NFC", out[0])
    assert check_texts(("a", "b")) == ["a", "b"]
    assert check_texts(t for t in ["a", np.str_("b")]) == ["a", "b"]


def test_check_texts_refuses_empty_and_non_strings():
    with pytest.raises(InputDataError, match=r"texts\[1\], texts\[3\] are empty or whitespace-only"):
        check_texts(["ok", "", "fine", " \t\n"])
    with pytest.raises(InputDataError, match=r"texts\[0\] is empty"):
        check_texts("   ")
    with pytest.raises(InputDataError, match=r"texts\[1\] is not a string \(texts\[1\] is NoneType: None\)"):
        check_texts(["a", None])
    with pytest.raises(InputDataError, match=r"texts\[0\], texts\[2\] are not a string.*bytes.*decode"):
        check_texts([b"a", "b", 3])
    with pytest.raises(InputDataError, match="got bytes.*decode"):
        check_texts(b"a dog")
    with pytest.raises(InputDataError, match="got int"):
        check_texts(3)
    with pytest.raises(InputDataError, match="no texts given"):
        check_texts([])
    with pytest.raises(InputDataError, match=r"and 2 more"):
        check_texts([""] * 7)


def test_truncate_token_ids():
    ids = [[49406, 1, 2, 49407], [49406, 1, 2, 3, 4, 5, 49407], [49406, 1, 2, 3, 4, 49407]]
    with pytest.warns(UserWarning, match=r"2 of 3 text inputs .* longer than the 5-token limit \(longest: 7 tokens\)"):
        out = truncate_token_ids(ids, 5, end_token_id=49407, warn_name="text")
    assert out == [[49406, 1, 2, 49407], [49406, 1, 2, 3, 49407], [49406, 1, 2, 3, 49407]]
    assert ids[1] == [49406, 1, 2, 3, 4, 5, 49407]  # input untouched
    with pytest.warns(UserWarning, match="1 of 1"):
        assert truncate_token_ids([[1, 2, 3]], 2) == [[1, 2]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert truncate_token_ids([(1, 2)], 2, end_token_id=9) == [[1, 2]]
    with pytest.raises(ConfigError, match="max_length must be an integer >= 2"):
        truncate_token_ids([[1, 2]], 1, end_token_id=9)
    with pytest.raises(ConfigError, match="max_length must be an integer >= 1"):
        truncate_token_ids([[1, 2]], 0)
