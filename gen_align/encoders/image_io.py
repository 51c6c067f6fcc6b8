"""Image decoding for the encoders: a path, PIL image or uint8 array → an RGB ``PIL.Image``.

Mode handling (the CLIP processors expect 8-bit RGB):

* Transparency (RGBA, LA, PA, RGBa, and P/L/RGB images with a transparent colour) is composited on a **white**
  background, as a viewer shows it, so transparent pixels do not turn into arbitrary colours or black.
* 1, L, P, CMYK, YCbCr, LAB, HSV use Pillow's conversion (CMYK without colour management: ICC profiles ignored).
* 16-bit (I;16*) is scaled by 255/65535; 32-bit int (I) and float (F) keep their values when they already lie in
  [0, 255] (floats in [0, 1] are multiplied by 255), and are otherwise min-max stretched to [0, 255].
* The EXIF orientation is applied (``ImageOps.exif_transpose``); animated images give their **first frame**.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from gen_align.errors import GenAlignError, InputDataError, InputFileError

ImageSource = str | os.PathLike | Image.Image | np.ndarray
PROGRESS_MIN_ITEMS = 8  # load_images shows a progress bar above this many images
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def load_image(source: ImageSource) -> Image.Image:
    """One image as 8-bit RGB (see the module notes for how each mode is converted).

    ``source`` is a file path, a ``PIL.Image.Image`` or a NumPy uint8 array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)``
    or ``(H, W, 4)`` (RGBA). File problems raise :class:`InputFileError`, in-memory ones :class:`InputDataError`.
    """
    return _load_one(source, "the image")


def load_images(sources: Iterable[ImageSource], *, progress: bool | None = None) -> list[Image.Image]:
    """:func:`load_image` over a list; a tqdm bar is shown for more than :data:`PROGRESS_MIN_ITEMS` images unless
    ``progress`` says otherwise."""
    if isinstance(sources, (str, os.PathLike, Image.Image, np.ndarray)):
        raise InputDataError(
            f"load_images takes a list of images, got a single {type(sources).__name__}; "
            "wrap it in a list or call load_image for one image."
        )
    items = list(sources)
    if not items:
        raise InputDataError("no images given (empty list); pass at least one path or image.")
    show = len(items) > PROGRESS_MIN_ITEMS if progress is None else progress
    return [
        _load_one(item, f"image sources[{i}]")
        for i, item in enumerate(tqdm(items, desc="load images", unit="image", disable=not show))
    ]


def _load_one(source: object, name: str) -> Image.Image:
    if isinstance(source, (str, os.PathLike)):
        return _open(os.fspath(source))
    if isinstance(source, Image.Image):
        return _to_rgb(source, name, InputDataError)
    if isinstance(source, np.ndarray):
        return _to_rgb(_from_array(source, name), name, InputDataError)
    hint = " Convert a CHW tensor with torchvision.transforms.functional.to_pil_image(t)." if _is_tensor(source) else ""
    raise InputDataError(
        f"cannot load an image from a {type(source).__name__}: pass a file path, a PIL image or an (H, W, 3) "
        f"uint8 NumPy array.{hint}"
    )


def _is_tensor(obj: object) -> bool:
    return type(obj).__module__.startswith("torch")


def _open(path: str) -> Image.Image:
    if not os.path.exists(path):
        raise InputFileError(f"image file {path} does not exist; check the path (relative to {os.getcwd()}).")
    if os.path.isdir(path):
        raise InputFileError(f"{path} is a directory, not an image file; pass the path of a file inside it.")
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img, path, InputFileError)
    except UnidentifiedImageError as err:
        raise InputFileError(
            f"{path} is not an image Pillow can read (unknown format or corrupt header); re-download or re-save it "
            "as PNG/JPEG."
        ) from err
    except Image.DecompressionBombError as err:
        raise InputFileError(
            f"{path} is too large to decode safely ({err}); downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS if "
            "you trust the file."
        ) from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        if isinstance(err, GenAlignError):
            raise
        raise InputFileError(
            f"{path} could not be decoded ({err}); it is corrupt or truncated. Re-download or re-save it."
        ) from err


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    if arr.dtype != np.uint8:
        raise InputDataError(
            f"{name} is a {arr.dtype} array; pass uint8 pixels in [0, 255] "
            "(for floats in [0, 1]: (arr * 255).round().astype(np.uint8))."
        )
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        chw = arr.ndim == 3 and arr.shape[0] in (1, 3, 4)
        raise InputDataError(
            f"{name} has shape {arr.shape}; an image array must be (H, W), (H, W, 3) or (H, W, 4) (channels last)."
            + (" It looks channels-first: pass arr.transpose(1, 2, 0)." if chw else "")
        )
    if 0 in arr.shape:
        raise InputDataError(f"{name} has shape {arr.shape}: zero-size images cannot be encoded.")
    return Image.fromarray(np.ascontiguousarray(arr))


def _to_rgb(img: Image.Image, name: str = "the image", error: type[GenAlignError] = InputDataError) -> Image.Image:
    """``img`` (first frame if animated, EXIF orientation applied) as a new 8-bit RGB image."""
    if getattr(img, "is_animated", False):
        img.seek(0)
    if img.width == 0 or img.height == 0:
        raise error(f"{name} is {img.width}x{img.height} pixels: zero-size images cannot be encoded.")
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I") or img.mode == "F":
        return _high_depth_to_rgb(img, name, error)
    if "transparency" in img.info and img.mode in ("P", "L", "RGB"):
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        if img.mode == "La":
            img = img.convert("LA")  # premultiplied-alpha grey: Pillow has no direct La → RGBA
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise error(
            f"{name} has mode {img.mode}, which Pillow cannot convert to RGB ({err}); re-save it as RGB."
        ) from err


def _high_depth_to_rgb(img: Image.Image, name: str, error: type[GenAlignError]) -> Image.Image:
    """I;16*, I and F images → 8-bit RGB (scaling rules in the module notes)."""
    values = np.asarray(img).astype(np.float64)
    if not np.isfinite(values).all():
        raise error(f"{name} ({img.mode} mode) contains NaN/inf pixels; replace them (e.g. np.nan_to_num) first.")
    low, high = float(values.min()), float(values.max())
    if img.mode.startswith("I;16"):
        values = values * (255.0 / 65535.0)
    elif img.mode == "F" and low >= 0.0 and high <= 1.0:
        values = values * 255.0
    elif (low < 0.0 or high > 255.0) and high > low:
        values = (values - low) * (255.0 / (high - low))
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
