"""Decoding one image file (PNG/JPEG or anything PIL reads, DICOM via pydicom) into a square
uint8 array: the pixel rules of the manifest and PCam caches (``data/README.md``).

Two steps, so that a bad file fails before any decoding work:

- :func:`probe` reads only the header: the kind (``"dicom"`` when the file carries the DICOM
  preamble ``DICM`` at byte 128 or ends in ``.dcm``/``.dicom``, else ``"pil"``) and whether it
  is grey (1 channel) or colour (3). A file neither reader can open raises :class:`ImageError`.
- :func:`decode` reads the pixels, converts them to the dataset's channel count and to
  ``size`` × ``size``.

Pixel rules:

- PIL images: 8-bit grey modes are kept; 16-bit grey (``I;16*``, ``I``) is scaled by
  255/65535; colour (palette, RGBA, CMYK, ...) goes through ``convert("RGB")`` (alpha is
  dropped, not composited). A grey image in a 3-channel dataset is replicated to RGB.
- DICOM (PS3.3 C.11): the modality LUT or RescaleSlope/RescaleIntercept
  (``pydicom.pixels.apply_modality_lut``), then the first WindowCenter/WindowWidth with its
  VOILUTFunction (LINEAR, LINEAR_EXACT or SIGMOID, C.11.2.1.2-3) mapped to 0..255; without a
  window, the image's own min..max is stretched to 0..255 (a VOI LUT Sequence is not used).
  MONOCHROME1 is inverted (255 - x) so that bright means dense, as in MONOCHROME2. Colour
  DICOM (SamplesPerPixel 3; YBR is converted to RGB by pydicom) is scaled from BitsStored to
  8 bits. Multi-frame files are refused. Compressed transfer syntaxes need pydicom's optional
  decoders (``pylibjpeg``, ``gdcm``): without them :func:`probe` names what to install.
- Resizing: the centre square crop (side = the shorter side; the aspect ratio is kept and the
  longer side's edges are dropped), then PIL bicubic resampling (antialiased when shrinking)
  to ``size``; an image already ``size`` × ``size`` is not resampled (pixels exact).

The cache key includes :func:`decoder_version`, a hash of this file's source: any edit here
rebuilds the caches on the next load (never a cache decoded by older rules).
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

#: PIL modes holding one grey channel (``I`` and ``I;16*`` are 16-bit, scaled to 8 bits).
GREY_MODES: frozenset[str] = frozenset(
    {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N"}
)
SIXTEEN_BIT_MODES: frozenset[str] = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
DICOM_SUFFIXES: frozenset[str] = frozenset({".dcm", ".dicom"})
VOI_FUNCTIONS: tuple[str, ...] = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


class ImageError(ValueError):
    """A file that cannot be read or decoded; callers add which row or file it was."""


@cache
def decoder_version() -> str:
    """Hash of this module's source: part of every cache key."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM"


def probe(path: Path) -> tuple[str, int]:
    """``(kind, channels)`` of an image file from its header alone; raises :class:`ImageError`."""
    if is_dicom(path):
        return "dicom", _probe_dicom(path)
    try:
        with Image.open(path) as im:
            mode = im.mode
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ImageError(
            f"not an image PIL or pydicom can read ({type(err).__name__}: {err})"
        ) from err
    if mode == "F":
        raise ImageError("32-bit float images (PIL mode F) are not supported; save as 8/16-bit")
    return "pil", 1 if mode in GREY_MODES else 3


def _probe_dicom(path: Path) -> int:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import get_decoder

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as err:
        raise ImageError(f"not a readable DICOM file ({type(err).__name__}: {err})") from err
    missing = [k for k in ("Rows", "Columns", "SamplesPerPixel") if k not in ds]
    if missing:
        raise ImageError(f"DICOM without image attributes {missing} (no pixel data?)")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ImageError(f"multi-frame DICOM ({ds.NumberOfFrames} frames) is not supported")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None:
        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise ImageError(
                f"DICOM transfer syntax {syntax.name} needs a pixel decoder pydicom lacks here "
                "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or python-gdcm)"
            )
    samples = int(ds.SamplesPerPixel)
    if samples not in (1, 3):
        raise ImageError(f"SamplesPerPixel {samples}; only 1 (grey) and 3 (colour) are supported")
    return 1 if samples == 1 else 3


def decode(path: Path, size: int, channels: int) -> np.ndarray:
    """uint8 (size, size, channels) pixels of one file (see the module docstring's rules)."""
    try:
        image = _dicom_image(path) if is_dicom(path) else _pil_image(path)
        image = _to_channels(image, channels)
        return np.asarray(resize_square(image, size), dtype=np.uint8).reshape(size, size, channels)
    except ImageError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure names the file upstream
        raise ImageError(f"cannot be decoded ({type(err).__name__}: {err})") from err


def resize_square(image: Image.Image, size: int) -> Image.Image:
    """Centre square crop, then bicubic resampling to ``size`` (none if already that size)."""
    w, h = image.size
    side = min(w, h)
    if (w, h) != (side, side):
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image


def _to_channels(image: Image.Image, channels: int) -> Image.Image:
    if channels == 1:
        if image.mode != "L":
            raise ImageError(f"a {image.mode} image in a grey dataset (a bug: probe said grey)")
        return image
    return image if image.mode == "RGB" else image.convert("RGB")


def _pil_image(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        if im.mode in SIXTEEN_BIT_MODES:
            wide = np.asarray(im, dtype=np.float64)
            return Image.fromarray(_to_u8(wide * (255.0 / 65535.0)))
        if im.mode in GREY_MODES:
            return im.convert("L")
        return im.convert("RGB")


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _dicom_image(path: Path) -> Image.Image:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if int(ds.SamplesPerPixel) == 3:
        bits = int(ds.get("BitsStored", 8))
        scaled = pixels.astype(np.float64) * (255.0 / (2**bits - 1))
        return Image.fromarray(_to_u8(scaled))
    x = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        y = window(x, center, width, str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR"))
    else:
        lo, hi = float(x.min()), float(x.max())
        y = (x - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(x)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        y = 255.0 - y
    return Image.fromarray(_to_u8(y))


def _first(value: object) -> float:
    """The first of a multi-valued DICOM attribute (several windows: the first is used)."""
    from pydicom.multival import MultiValue

    if isinstance(value, (list, tuple, MultiValue)):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]


def window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """A DICOM VOI window onto 0..255 (PS3.3 C.11.2.1.2 linear / linear exact, C.11.2.1.3
    sigmoid), as float."""
    function = function.upper()
    if function == "LINEAR":
        if width < 1:
            raise ImageError(f"WindowWidth {width} < 1 (LINEAR requires >= 1)")
        lo, hi = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
        inside = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0 if width > 1 else x * 0
        return np.where(x <= lo, 0.0, np.where(x > hi, 255.0, inside))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ImageError(f"WindowWidth {width} <= 0 (LINEAR_EXACT requires > 0)")
        return np.clip((x - center) / width + 0.5, 0.0, 1.0) * 255.0
    if function == "SIGMOID":
        if width <= 0:
            raise ImageError(f"WindowWidth {width} <= 0 (SIGMOID requires > 0)")
        return 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    raise ImageError(f"unknown VOILUTFunction {function!r}; valid: {list(VOI_FUNCTIONS)}")
