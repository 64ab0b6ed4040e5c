"""Uploads: recognised by content whatever their name, deleted from the upload cache once read;
the case queue lets ``slots`` cases run and tells the others their place."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from data.images import ImageError
from tests.test_images import dicom_bytes
from ui.case_queue import CaseQueue
from ui.uploads import Upload, check_content, discard, sniff, take_uploads


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP", "WEBP"])
def test_sniff_tells_each_accepted_format_by_its_bytes(fmt):
    assert sniff(_encoded(fmt)) == fmt


def test_a_dicom_is_recognised_without_its_extension_and_a_renamed_text_file_is_not():
    scan = dicom_bytes(np.zeros((8, 8)))
    assert sniff(scan) == "DICOM"
    check_content(Upload("IM0001", scan))
    check_content(Upload("1.2.840.113619.2.55", scan))
    with pytest.raises(ImageError, match=r"'scan\.png' is not a recognised image"):
        check_content(Upload("scan.png", b"patient notes, not an image"))
    # A DICOM written without its preamble can only be told by its name.
    bare = dicom_bytes(np.zeros((8, 8)), preamble=False)
    assert sniff(bare) is None
    check_content(Upload("bare.dcm", bare))


def test_take_uploads_reads_then_deletes_every_file_under_the_cache_only(tmp_path):
    cache = tmp_path / "gradio"
    good = cache / "abc123" / "IM0001"
    bad = cache / "def456" / "notes.png"
    outside = tmp_path / "elsewhere.png"
    for path, data in ((good, dicom_bytes(np.zeros((8, 8)))), (bad, b"text"), (outside, b"x")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    uploads, problems = take_uploads(
        [str(good), str(bad), str(outside), str(cache / "gone" / "x.png")], cache
    )
    assert [u.name for u in uploads] == ["IM0001", "notes.png", "elsewhere.png"] and uploads[
        1
    ].data == b"text"
    assert len(problems) == 1 and "'x.png' could not be read" in problems[0]
    assert not good.exists() and not bad.exists()
    assert not good.parent.exists() and not bad.parent.exists()  # their emptied folders too
    assert outside.exists() and cache.exists()  # nothing outside the cache, nor the cache itself
    shared = cache / "same-bytes"
    shared.mkdir()
    (shared / "a.png").write_bytes(b"1")
    (shared / "b.png").write_bytes(b"1")
    discard(shared / "a.png", cache.resolve())
    assert shared.exists() and (shared / "b.png").exists()  # a folder still in use is kept


def test_case_queue_runs_slots_cases_and_tells_the_others_their_place():
    gate = CaseQueue(slots=1)
    first, second, third = gate.enter(), gate.enter(), gate.enter()
    assert gate.place(second) == 2 and gate.place(third) == 3  # the first has not started yet
    assert gate.place(first) == 0
    assert gate.place(first) == 0  # asking again keeps the slot
    assert (gate.place(second), gate.place(third)) == (1, 2)
    gate.leave(third)  # went away while waiting
    gate.leave(first)
    assert gate.place(second) == 0
    started = threading.Event()

    def later() -> None:
        ticket = gate.enter()
        while gate.place(ticket):
            gate.wait(timeout=5)
        started.set()
        gate.leave(ticket)

    worker = threading.Thread(target=later)
    worker.start()
    assert not started.wait(0.3)  # waits while the slot is held
    gate.leave(second)
    assert started.wait(5)  # and starts as soon as it is given back
    worker.join()
