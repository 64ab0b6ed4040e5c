"""Uploads never outlive the case's need.

Gradio writes each uploaded file to its upload cache (``GRADIO_TEMP_DIR``) and serves it from there
to anyone who has its URL. A DICOM file carries the patient's name, ID and birth date in its
header, so the chat takes each upload into memory and deletes its file (and its folder) at once,
refused files included; from then on the file route has nothing to serve. What is kept is only
what the case needs: the rendered pixels (a PNG without metadata), in memory and in the store.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gradio.utils import get_upload_folder

from data.images import SUPPORTED_FORMATS, ImageError
from ui.served import served_root

log = logging.getLogger(__name__)

# (offset, signature, format): what the first bytes of each accepted format look like.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"BM", "BMP"),
    (128, b"DICM", "DICOM"),  # after the 128-byte preamble, whatever the file is called
)
# A DICOM dataset written without the preamble can only be told by its name.
_BARE_DICOM_SUFFIXES = (".dcm", ".dicom")


@dataclass(frozen=True)
class Upload:
    """An uploaded file, held in memory only: its bytes and the name the user gave it."""

    name: str
    data: bytes


def sniff(data: bytes) -> str | None:
    """The format the content says (PNG, JPEG, TIFF, BMP, WEBP, DICOM), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for offset, signature, fmt in _MAGIC:
        if data[offset : offset + len(signature)] == signature:
            return fmt
    return None


def check_content(upload: Upload) -> None:
    """Refuse an upload whose bytes are none of the accepted image formats (its name does not count)."""
    if sniff(upload.data) is None and not upload.name.lower().endswith(_BARE_DICOM_SUFFIXES):
        raise ImageError(
            f"image {upload.name!r} is not a recognised image "
            f"(supported formats: {', '.join(SUPPORTED_FORMATS)})"
        )


def take_uploads(paths: list[str], cache_dir: str | Path | None = None) -> tuple[list[Upload], list[str]]:
    """Read each uploaded file into memory and delete it from the upload cache, whatever it holds.

    Returns the uploads read and, for files that could not be read, one message each. Every file
    under ``cache_dir`` (default: the served-files root, which holds every app's upload folder,
    ui/served.py) is deleted, read or not.
    """
    root = Path(cache_dir or served_root()).resolve()
    uploads, problems = [], []
    for raw in paths:
        path = Path(raw)
        try:
            uploads.append(Upload(path.name, path.read_bytes()))
        except OSError as exc:
            problems.append(
                f"image {path.name!r} could not be read ({exc.strerror or 'gone'}); attach it again"
            )
        finally:
            discard(path, root)
    return uploads, problems


def discard(path: Path, root: Path) -> None:
    """Delete an uploaded file and its now empty folder, if (and only if) they lie under ``root``."""
    try:
        resolved = path.resolve()
    except OSError:
        return
    if root not in resolved.parents:
        log.warning("not deleting an upload outside the upload cache")
        return
    resolved.unlink(missing_ok=True)
    folder = resolved.parent
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()  # only when empty: another upload of the same bytes may share it
        except OSError:
            break
        folder = folder.parent


def stage_upload(name: str, data: bytes, cache_dir: str | Path | None = None) -> Path:
    """Put ``data`` in the upload cache as if the user had uploaded it as ``name``; its own folder,
    so :func:`take_uploads` deletes it (and the folder) once the chat has read it."""
    root = Path(cache_dir or get_upload_folder())
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="staged-", dir=root))
    path = folder / Path(name).name
    path.write_bytes(data)
    return path
