"""Load, validate, normalise and content-address the images a case is asked about.

Every image that enters the system (UI upload, CLI path, benchmark file, synthetic case) goes
through :func:`load_image`, which turns untrusted bytes into a :class:`LoadedImage`:

- the bytes that are stored (once, under their sha256) and
- a normalised PIL image (RGB, 8 bit, EXIF orientation applied, at most ``max_pixels``) that the
  models see. :func:`image_from_bytes` repeats that normalisation when the graph later resolves a
  stored hash back to pixels, so the model sees the same pixels on both paths.

Every failure is an :class:`ImageError` whose message is one line a user can act on.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from pydicom import Dataset

log = logging.getLogger(__name__)

MiB = 1024 * 1024

# Pillow format name -> MIME type of the formats we accept. MPO is how Pillow names the JPEGs many
# phones write (a JPEG with extra frames), so it is a JPEG to the user.
_PIL_MIME: dict[str, str] = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
_PIL_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")  # MPO files are opened by the JPEG plugin
SUPPORTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "DICOM")
_SUPPORTED_TEXT = ", ".join(SUPPORTED_FORMATS)
_DICOM_SUFFIXES = (".dcm", ".dicom")
# Magic numbers, only to tell "corrupt PNG" from "not an image" in error messages.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
)


class ImageError(ValueError):
    """An image that cannot be used; the message is one line meant for the user."""


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on what :func:`load_image` accepts and produces.

    ``max_source_pixels`` is checked from the file header before any pixel is decoded, so a
    small file that claims huge dimensions (a decompression bomb) costs nothing.
    ``max_pixels`` is the Qwen2.5-VL processor's default pixel budget (1280 patches of 28×28):
    larger images would only be shrunk again by the processor.
    """

    max_bytes: int = 32 * MiB
    max_source_pixels: int = 50_000_000
    max_pixels: int = 1280 * 28 * 28


@dataclass(frozen=True)
class LoadedImage:
    """A validated image: the bytes to store and the normalised pixels the models see.

    ``width``/``height`` are the source's dimensions after EXIF orientation, before downscaling.
    ``mime`` describes ``data``. For DICOM, ``data`` is a PNG of the rendered pixels (so ``mime``
    is ``image/png``) and ``source_format`` is ``"DICOM"``: see :func:`load_image` for why.
    """

    sha256: str
    data: bytes
    mime: str
    width: int
    height: int
    image: Image.Image
    source_format: str = "PNG"


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``: the content address images are stored under."""
    return hashlib.sha256(data).hexdigest()


def load_image(
    source: bytes | str | os.PathLike[str],
    *,
    name: str | None = None,
    limits: ImageLimits = ImageLimits(),  # frozen, so one shared default is safe
) -> LoadedImage:
    """Validate and normalise an image given as bytes or a file path.

    ``name`` labels the image in error messages (default: the file name); a name ending in
    ``.dcm``/``.dicom`` also marks DICOM data that lacks the standard preamble.

    DICOM files are rendered to 8-bit pixels and re-encoded as PNG, and that PNG (not the DICOM
    file) becomes ``data`` and the content address. A DICOM file carries patient identity
    (name, ID, birth date, ...) in its header; storing the original bytes would copy that PHI into
    the trajectory store and every export built from it. The rendered pixels are all the models
    use, and hashing the PNG keeps identical pixels deduplicated whoever the patient record says.
    """
    data, filename = _read_source(source, name, limits)
    label = f"image {filename!r}" if filename else "image data"
    if data[128:132] == b"DICM" or (filename or "").lower().endswith(_DICOM_SUFFIXES):
        rendered, width, height = _render_dicom(data, label, limits)
        png = encode_png(rendered)
        return LoadedImage(
            sha256=sha256_bytes(png),
            data=png,
            mime="image/png",
            width=width,
            height=height,
            image=_normalise(rendered, limits),
            source_format="DICOM",
        )
    image, fmt, (width, height) = _decode(data, label, limits)
    return LoadedImage(
        sha256=sha256_bytes(data),
        data=data,
        mime=_PIL_MIME[fmt],
        width=width,
        height=height,
        image=_normalise(image, limits),
        source_format="JPEG" if fmt == "MPO" else fmt,
    )


def image_from_bytes(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Decode stored image bytes to the same normalised image :func:`load_image` produced
    (given the same ``limits``)."""
    return load_image(data, limits=limits).image


# --- reading ------------------------------------------------------------------------------------


def _read_source(
    source: bytes | str | os.PathLike[str], name: str | None, limits: ImageLimits
) -> tuple[bytes, str | None]:
    """The bytes and the name to report them under (``name``, else the file name)."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        _check_byte_size(len(data), f"image {name!r}" if name else "image data", limits)
        return data, name
    path = Path(source)
    name = name or path.name
    label = f"image {name!r}"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file: {str(path)!r}") from None
    except OSError as exc:
        raise ImageError(f"{label}: cannot read {str(path)!r} ({exc.strerror})") from None
    if not path.is_file():
        raise ImageError(f"{label}: {str(path)!r} is not a file")
    # Checked before reading so an oversized file is never loaded into memory.
    _check_byte_size(size, label, limits)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{label}: cannot read {str(path)!r} ({exc.strerror})") from None
    # Again on what was read: the file may have changed since stat().
    _check_byte_size(len(data), label, limits)
    return data, name


def _check_byte_size(size: int, label: str, limits: ImageLimits) -> None:
    if size == 0:
        raise ImageError(f"{label} is empty (0 bytes)")
    if size > limits.max_bytes:
        raise ImageError(
            f"{label} is too large ({size / MiB:.1f} MiB; the limit is {limits.max_bytes / MiB:.0f} MiB)"
        )


# --- raster formats -----------------------------------------------------------------------------


def _decode(data: bytes, label: str, limits: ImageLimits) -> tuple[Image.Image, str, tuple[int, int]]:
    """Open, bound-check and fully decode a raster image.

    Returns the EXIF-oriented image, its Pillow format and its full-size oriented dimensions
    (the image itself may already be smaller: see ``draft`` below).
    """
    image = _open_header(data, label, limits)
    fmt = image.format or ""
    _check_dimensions(image.size, label, limits)
    width, height = image.size
    if fmt in ("JPEG", "MPO"):
        # Let libjpeg decode at 1/2..1/8 scale when the result is shrunk anyway: much faster for
        # large photos, and the size it picks is never below the target.
        image.draft(image.mode, _target_size(image.size, limits.max_pixels))
    try:
        # Pillow opens lazily; a truncated or corrupt body only fails when the pixels are read.
        image.load()
    except Exception as exc:  # any decoder failure on untrusted bytes is the file's fault
        log.debug("decoding %s failed", label, exc_info=True)
        raise ImageError(f"{label} is a corrupt or truncated {fmt} file ({exc})") from None
    try:
        oriented = ImageOps.exif_transpose(image)
    except Exception as exc:  # Pillow's EXIF parser raises assorted errors on malformed blocks
        raise ImageError(f"{label} has unreadable EXIF orientation data ({exc})") from None
    if image.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8):
        width, height = height, width  # these orientations turn the picture by 90° or 270°
    return oriented, fmt, (width, height)


def _open_header(data: bytes, label: str, limits: ImageLimits) -> Image.Image:
    """Parse only the header, restricted to the supported formats."""
    try:
        with warnings.catch_warnings():
            # We enforce our own, lower pixel cap right after; Pillow's warning would be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
    except Image.DecompressionBombError:
        # Pillow refuses outright above twice its own limit, which is above ours.
        raise ImageError(
            f"{label} has more pixels than the {limits.max_source_pixels:,}-pixel cap; refusing to decode it"
        ) from None
    except UnidentifiedImageError:
        pass
    except Exception as exc:  # header parsers raise assorted errors on garbage
        log.debug("opening %s failed", label, exc_info=True)
        raise ImageError(f"{label} is a corrupt image file ({exc})") from None
    raise ImageError(_unidentified_message(data, label))


def _unidentified_message(data: bytes, label: str) -> str:
    for signature, fmt in _SIGNATURES:
        if data.startswith(signature):
            return f"{label} is a corrupt {fmt} file (its header cannot be read)"
    try:
        # Only to name the format in the message: the header is parsed, no pixels decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            other = Image.open(io.BytesIO(data)).format
    except Exception:
        other = None
    if other:
        return f"{label} is a {other} image, which is not supported (supported formats: {_SUPPORTED_TEXT})"
    return f"{label} is not a recognised image (supported formats: {_SUPPORTED_TEXT})"


def _check_dimensions(size: tuple[int, int], label: str, limits: ImageLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"{label} has zero size ({width}×{height} pixels)")
    if width * height > limits.max_source_pixels:
        raise ImageError(
            f"{label} is {width}×{height} = {width * height:,} pixels, over the "
            f"{limits.max_source_pixels:,}-pixel cap; refusing to decode it"
        )


# --- DICOM --------------------------------------------------------------------------------------


def _render_dicom(data: bytes, label: str, limits: ImageLimits) -> tuple[Image.Image, int, int]:
    """Render a DICOM image to 8 bits; returns it with its dimensions.

    Burned-in annotations (text drawn into the pixels) are not detected and stay in the image.
    """
    import pydicom  # deferred: only DICOM uploads pay for importing it
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        rows, columns = int(ds.Rows), int(ds.Columns)
    except Exception as exc:
        log.debug("reading DICOM %s failed", label, exc_info=True)
        raise ImageError(f"{label} is not a readable DICOM file ({exc})") from None
    _check_dimensions((columns, rows), label, limits)
    if "PixelData" not in ds:
        raise ImageError(f"{label} is a DICOM file without pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # e.g. a compressed transfer syntax without its decoder installed
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or "unknown transfer syntax"
        raise ImageError(f"{label}: cannot decode DICOM pixel data ({name}: {exc})") from None

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        # A multi-frame series becomes one picture: its middle frame is the most representative.
        pixels = pixels[frames // 2]
    if samples > 1:
        # Colour DICOM (endoscopy, dermoscopy, photos): pydicom has already converted YCbCr to RGB
        # and no windowing applies; only a deeper-than-8-bit encoding needs scaling.
        rgb = np.ascontiguousarray(pixels[..., :3])
        return Image.fromarray(rgb if rgb.dtype == np.uint8 else _stretch(rgb)), columns, rows

    gray = _apply_voi(apply_modality_lut(pixels, ds), ds, label)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        gray = 255 - gray  # MONOCHROME1 means low values display white
    return Image.fromarray(gray).convert("RGB"), columns, rows


def _apply_voi(values: np.ndarray, ds: Dataset, label: str) -> np.ndarray:
    """The VOI transform (PS3.3 C.11.2) to 0..255: pydicom's ``apply_voi_lut`` applies the dataset's
    VOI LUT Sequence (preferred) or its window (with its VOI LUT Function), each scaled from its own
    output range; an image with neither, or an unusable one, is stretched over its own range."""
    from pydicom.pixels import apply_voi_lut

    lut = ds.get("VOILUTSequence")
    try:
        if lut:
            # A VOI LUT is indexed by integer input values; its entries have ``LUTDescriptor[2]`` bits.
            out = apply_voi_lut(np.rint(values).astype(np.int64), ds)
            return _scale(out, 0.0, 2.0 ** int(lut[0].LUTDescriptor[2]) - 1)
        if "WindowCenter" in ds and "WindowWidth" in ds:
            out = apply_voi_lut(values.astype(np.float64), ds)
            # The window's output range: the same transform sends -inf and +inf to its two ends.
            low, high = apply_voi_lut(np.array([-np.inf, np.inf]), ds)
            return _scale(out, float(min(low, high)), float(max(low, high)))
    except (ValueError, TypeError, AttributeError, IndexError, NotImplementedError) as exc:
        log.warning("%s: unusable VOI LUT or window (%s); stretching the image's own range", label, exc)
    return _stretch(values)


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low..high`` onto 0..255 (clipped)."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - low) / (high - low)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


# --- normalisation ------------------------------------------------------------------------------


def _stretch(values: np.ndarray) -> np.ndarray:
    """Map an array's own min..max onto 0..255.

    High-bit-depth medical images rarely use their container's full range (12-bit CT in a 16-bit
    PNG), so dividing by 257 would leave them nearly black; stretching keeps their contrast.
    """
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float32) - lo) * np.float32(255.0 / (hi - lo))
    return np.rint(scaled).astype(np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith(("I", "F")):  # I;16*, I (32-bit), F: high bit depth grayscale
        return Image.fromarray(_stretch(np.asarray(image))).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        # Transparent regions carry no clinical content; white matches how viewers show them.
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    # L, 1, CMYK (Pillow undoes Adobe's inverted CMYK when decoding), YCbCr, LAB, HSV.
    return image.convert("RGB")


def _target_size(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    width, height = size
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def _normalise(image: Image.Image, limits: ImageLimits) -> Image.Image:
    rgb = _to_rgb(image)
    target = _target_size(rgb.size, limits.max_pixels)
    if target != rgb.size:
        log.debug("downscaling %s to %s", rgb.size, target)
        rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return rgb


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes that depend only on the pixels (fixed settings, no metadata or timestamps).

    Byte-identical for identical pixels under one Pillow/zlib build; another zlib may compress
    differently, so compare pixels, not bytes, across machines.
    """
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()
