"""data.images: loading, validation, normalisation, hashing and DICOM rendering."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from data.images import ImageError, ImageLimits, LoadedImage, image_from_bytes, load_image, sha256_bytes


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_with_header(width: int, height: int) -> bytes:
    """A well-formed PNG whose IHDR claims ``width``×``height`` but whose IDAT is a few bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def dicom_bytes(
    pixels: np.ndarray,
    *,
    window: tuple[float, float] | None = None,
    intercept: float = 0.0,
    slope: float = 1.0,
    photometric: str = "MONOCHROME2",
    preamble: bool = True,
) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("scan.dcm", {}, file_meta=meta, preamble=b"\0" * 128 if preamble else None)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN-4815162342"
    ds.PatientBirthDate = "19700101"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=preamble)
    return buffer.getvalue()


def pixels(loaded: LoadedImage) -> np.ndarray:
    return np.asarray(loaded.image)


# --- valid images -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
def test_round_trip_keeps_original_bytes_and_hashes_them(fmt: str, mime: str) -> None:
    data = encode(noise_image(64, 40), fmt)
    loaded = load_image(data, name=f"x.{fmt.lower()}")
    assert loaded.data == data
    assert loaded.sha256 == hashlib.sha256(data).hexdigest() == sha256_bytes(data)
    assert loaded.mime == mime
    assert (loaded.width, loaded.height) == (64, 40)
    assert loaded.image.mode == "RGB" and loaded.image.size == (64, 40)
    # The graph re-derives pixels from stored bytes: they must match what load_image gave.
    assert np.array_equal(np.asarray(image_from_bytes(data)), pixels(loaded))


def test_png_pixels_survive_unchanged() -> None:
    image = noise_image(30, 20)
    assert np.array_equal(pixels(load_image(encode(image, "PNG"))), np.asarray(image))


def test_path_and_str_sources(tmp_path) -> None:
    data = encode(noise_image(10, 10), "PNG")
    path = tmp_path / "scan.png"
    path.write_bytes(data)
    assert load_image(path).sha256 == load_image(str(path)).sha256 == sha256_bytes(data)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, 10, 20))  # blue strip on the left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    loaded = load_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert loaded.image.size == (20, 40)
    assert (loaded.width, loaded.height) == (20, 40)
    # Rotated clockwise, the left strip ends up along the top.
    top, bottom = pixels(loaded)[2, 10], pixels(loaded)[37, 10]
    assert top[2] > 150 > top[0] and bottom[0] > 150 > bottom[2]


def test_16_bit_grayscale_is_stretched_not_clipped() -> None:
    # 12-bit data in a 16-bit container, as CT exports often are.
    values = np.linspace(0, 4000, 64 * 32, dtype=np.float64).reshape(32, 64).astype(np.uint16)
    source = Image.fromarray(values)
    assert source.mode == "I;16"
    loaded = load_image(encode(source, "PNG"))
    out = pixels(loaded)
    assert loaded.image.mode == "RGB"
    assert out.max() >= 250 and out.min() <= 5
    assert np.all(out[..., 0] == out[..., 1])
    # Monotone: contrast order is kept across the row-major ramp.
    flat = out[..., 0].ravel().astype(int)
    assert np.all(np.diff(flat) >= 0)


def test_rgba_is_composited_on_white() -> None:
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, 0, 5, 10))
    out = pixels(load_image(encode(image, "PNG")))
    assert tuple(out[5, 2]) == (255, 0, 0)
    assert tuple(out[5, 8]) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["LA", "P", "L", "1"])
def test_other_modes_become_rgb(mode: str) -> None:
    loaded = load_image(encode(noise_image(12, 8).convert(mode), "PNG"))
    assert loaded.image.mode == "RGB" and loaded.image.size == (12, 8)


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    out = pixels(load_image(data))
    red, green, blue = (int(v) for v in out[8, 8])
    assert red > 200 and green < 60 and blue < 60


def test_downscale_keeps_aspect_and_reports_source_size() -> None:
    limits = ImageLimits(max_pixels=10_000)
    loaded = load_image(encode(noise_image(400, 100), "PNG"), limits=limits)
    width, height = loaded.image.size
    assert width * height <= 10_000
    assert width / height == pytest.approx(4.0, rel=0.03)
    assert (loaded.width, loaded.height) == (400, 100)


def test_default_max_pixels_is_the_processor_budget() -> None:
    loaded = load_image(encode(noise_image(2000, 1000), "JPEG"))
    width, height = loaded.image.size
    assert width * height <= 1280 * 28 * 28
    assert width * height > 0.95 * 1280 * 28 * 28
    assert width / height == pytest.approx(2.0, rel=0.01)
    assert (loaded.width, loaded.height) == (2000, 1000)


# --- DICOM --------------------------------------------------------------------------------------


def test_dicom_is_windowed_and_stripped_of_phi() -> None:
    raw = np.zeros((32, 48), dtype=np.uint16)
    raw[:, 16:32] = 1064  # 40 HU: the window centre
    raw[:, 32:] = 2000  # 976 HU: above the window
    data = dicom_bytes(raw, window=(40, 400), intercept=-1024)
    assert b"Doe^Jane" in data  # the fixture really carries PHI

    loaded = load_image(data, name="scan.dcm")
    assert loaded.source_format == "DICOM"
    assert loaded.mime == "image/png"
    assert loaded.data.startswith(b"\x89PNG")
    assert loaded.sha256 == sha256_bytes(loaded.data)
    for phi in (b"Doe", b"Jane", b"MRN-4815162342", b"19700101"):
        assert phi not in loaded.data
    assert (loaded.width, loaded.height) == (48, 32)
    out = pixels(loaded)
    assert tuple(out[0, 0]) == (0, 0, 0)  # -1024 HU, below the window
    assert abs(int(out[0, 20, 0]) - 128) <= 1
    assert tuple(out[0, 40]) == (255, 255, 255)
    assert np.array_equal(np.asarray(image_from_bytes(loaded.data)), out)


def test_dicom_rescale_slope_and_intercept_come_before_the_window() -> None:
    raw = np.zeros((4, 40), dtype=np.uint16)  # 0 -> -1000 HU, below the window
    raw[:, 10:20] = 470  # 2 * 470 - 1000 = -60 HU: a quarter up the window
    raw[:, 20:30] = 520  # 40 HU: the window centre (raw 520 alone would be far above it)
    raw[:, 30:] = 1000  # 1000 HU: above the window
    out = pixels(load_image(dicom_bytes(raw, window=(40, 400), slope=2, intercept=-1000), name="ct.dcm"))
    assert out[0, 0, 0] == 0
    assert abs(int(out[0, 15, 0]) - 64) <= 1
    assert abs(int(out[0, 25, 0]) - 128) <= 1
    assert out[0, 35, 0] == 255


def test_dicom_voi_lut_sequence_is_applied_in_preference_to_the_window() -> None:
    raw = np.zeros((4, 30), dtype=np.uint16)
    raw[:, 10:20] = 1500
    raw[:, 20:] = 3500
    # A window that would put all three columns at black or white...
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(raw, window=(1500, 2))))
    # ...and a VOI LUT (4096 entries from 0, 12 bits) that steps 0 -> 40% -> 80% at 1000 and 3000.
    lut = np.zeros(4096, dtype=np.uint16)
    lut[1000:], lut[3000:] = 1638, 3276
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 12])  # LUT Descriptor
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    ds.VOILUTSequence = [item]
    buffer = io.BytesIO()
    ds.save_as(buffer)
    out = pixels(load_image(buffer.getvalue(), name="lut.dcm"))
    assert [int(out[0, c, 0]) for c in (5, 15, 25)] == [0, 102, 204]


def test_dicom_without_window_is_stretched_and_monochrome1_inverted() -> None:
    raw = np.tile(np.arange(0, 4000, 125, dtype=np.uint16), (8, 1))
    out = pixels(load_image(dicom_bytes(raw, photometric="MONOCHROME1"), name="a.dcm"))
    assert out[0, 0, 0] == 255 and out[0, -1, 0] == 0


def test_multi_frame_dicom_shows_its_middle_frame() -> None:
    frames = np.zeros((3, 4, 8), dtype=np.uint16)
    frames[1, :, 4:] = 1000  # only the middle frame has structure
    data = dicom_bytes(frames.reshape(12, 8))
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.Rows, ds.NumberOfFrames = 4, 3
    buffer = io.BytesIO()
    ds.save_as(buffer)
    out = pixels(load_image(buffer.getvalue()))
    assert out.shape == (4, 8, 3)
    assert out[0, 0, 0] == 0 and out[0, 7, 0] == 255


def test_dicom_without_preamble_is_detected_by_extension(tmp_path) -> None:
    data = dicom_bytes(np.full((4, 4), 100, dtype=np.uint16), preamble=False)
    assert data[128:132] != b"DICM"
    path = tmp_path / "scan.dcm"
    path.write_bytes(data)
    assert load_image(path).source_format == "DICOM"


def test_dicom_with_zero_rows_is_rejected() -> None:
    data = dicom_bytes(np.zeros((0, 4), dtype=np.uint16))
    with pytest.raises(ImageError, match="zero size"):
        load_image(data)


def test_garbage_named_dcm_is_a_clear_error() -> None:
    with pytest.raises(ImageError, match=r"image 'x\.dcm' is not a readable DICOM file"):
        load_image(b"\0" * 300, name="x.dcm")


# --- errors -------------------------------------------------------------------------------------


def test_empty_bytes() -> None:
    with pytest.raises(ImageError, match=r"^image 'x\.png' is empty \(0 bytes\)$"):
        load_image(b"", name="x.png")


def test_empty_file(tmp_path) -> None:
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "x.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(fmt: str) -> None:
    data = encode(noise_image(120, 80), fmt)
    with pytest.raises(ImageError, match=f"corrupt or truncated {fmt}"):
        load_image(data[: len(data) // 2], name="cut")


def test_png_with_unreadable_header() -> None:
    with pytest.raises(ImageError, match="corrupt PNG"):
        load_image(png_with_header(0, 0), name="zero.png")


def test_text_file_named_png(tmp_path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("patient doing well, see you next week\n")
    with pytest.raises(ImageError, match=r"image 'notes\.png' is not a recognised image") as info:
        load_image(path)
    assert "PNG, JPEG" in str(info.value)


def test_unsupported_format_lists_supported_ones() -> None:
    with pytest.raises(
        ImageError, match=r"GIF image, which is not supported.*PNG, JPEG, WEBP, BMP, TIFF, DICOM"
    ):
        load_image(encode(Image.new("RGB", (4, 4)), "GIF"), name="a.gif")


def test_decompression_bomb_header_is_rejected_before_decoding() -> None:
    data = png_with_header(20_000, 20_000)
    assert len(data) < 200
    with pytest.raises(ImageError, match="pixel cap"):
        load_image(data, name="bomb.png")


def test_header_over_our_own_cap_names_the_dimensions() -> None:
    # 64 Mpx: under Pillow's own bomb threshold, so only our cap stands in the way.
    with pytest.raises(ImageError, match=r"8000×8000 = 64,000,000 pixels, over the 50,000,000-pixel cap"):
        load_image(png_with_header(8000, 8000))


def test_custom_source_pixel_cap() -> None:
    with pytest.raises(ImageError, match="pixel cap"):
        load_image(encode(noise_image(20, 20), "PNG"), limits=ImageLimits(max_source_pixels=399))


def test_over_max_bytes(tmp_path) -> None:
    data = encode(noise_image(64, 64), "PNG")
    limits = ImageLimits(max_bytes=len(data) - 1)
    with pytest.raises(ImageError, match="too large"):
        load_image(data, limits=limits)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=r"image 'big\.png' is too large"):
        load_image(path, limits=limits)


def test_missing_path(tmp_path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")


def test_directory_is_not_a_file(tmp_path) -> None:
    with pytest.raises(ImageError, match="is not a file"):
        load_image(tmp_path)


def test_error_messages_are_one_line() -> None:
    for bad in (b"", b"hello", png_with_header(20_000, 20_000), png_with_header(0, 0)):
        with pytest.raises(ImageError) as info:
            load_image(bad)
        assert "\n" not in str(info.value)
