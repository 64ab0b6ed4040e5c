"""The chat's image viewer: zoom (wheel, buttons), pan (drag), and window/level presets for DICOM.

Window/level presets re-render the DICOM's own values (modality units: HU for CT) for the view
only; the models keep seeing the image they were given. The values live in the session's memory
while the upload is part of the case (never on disk, never in the store); a reopened case shows
the stored images, without presets.
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass

import gradio as gr
import numpy as np
from PIL import Image

from data.images import LoadedImage, encode_png
from ui.uploads import Upload

log = logging.getLogger(__name__)

AS_SEEN = "as the model saw it"
# name -> (level, width) in modality units (Hounsfield units for CT).
PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "soft tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

# Zoom with the wheel or the +/- buttons, pan by dragging, double-click to fit again. The label
# shows the real zoom: screen pixels per image pixel (a 64-pixel image fitted to the stage: 656%).
VIEWER_JS = """
const state = { zoom: 1, x: 0, y: 0, drag: null };
const apply = () => {
  const img = element.querySelector("img.viewer-image");
  if (img) img.style.transform = `translate(${state.x}px, ${state.y}px) scale(${state.zoom})`;
  const label = element.querySelector(".viewer-zoom");
  if (!img || !label || !img.naturalWidth) return;  // measured again once the picture has loaded
  const fitted = Math.min(img.clientWidth / img.naturalWidth, img.clientHeight / img.naturalHeight);
  const text = `${Math.round(fitted * state.zoom * 100)}%`;
  if (label.textContent !== text) label.textContent = text;
};
const zoomBy = (f) => { state.zoom = Math.min(16, Math.max(0.25, state.zoom * f)); apply(); };
const reset = () => { state.zoom = 1; state.x = 0; state.y = 0; apply(); };
element.addEventListener("wheel", (e) => {
  if (!e.target.closest(".viewer-stage")) return;
  e.preventDefault();
  zoomBy(e.deltaY < 0 ? 1.25 : 0.8);
}, { passive: false });
element.addEventListener("pointerdown", (e) => {
  if (!e.target.closest(".viewer-stage")) return;
  state.drag = { x: e.clientX - state.x, y: e.clientY - state.y };
  e.target.setPointerCapture?.(e.pointerId);
});
element.addEventListener("pointermove", (e) => {
  if (!state.drag) return;
  state.x = e.clientX - state.drag.x; state.y = e.clientY - state.drag.y; apply();
});
element.addEventListener("pointerup", () => { state.drag = null; });
element.addEventListener("dblclick", reset);
element.addEventListener("click", (e) => {
  const button = e.target.closest("button[data-zoom]");
  if (!button) return;
  const how = button.dataset.zoom;
  if (how === "in") zoomBy(1.25); else if (how === "out") zoomBy(0.8); else reset();
});
// A new picture (another image or preset) re-renders the template, which drops the transform and
// the label: they are put back, so the zoom and pan the user chose stay.
watch("value", apply);
element.addEventListener("load", apply, true);  // a picture's size is known once it has loaded
window.addEventListener("resize", apply);
apply();
"""

VIEWER_CSS = """
.viewer-stage { height: 420px; overflow: hidden; background: #111; border-radius: 6px; cursor: grab;
  display: flex; align-items: center; justify-content: center; touch-action: none; }
.viewer-stage:active { cursor: grabbing; }
.viewer-image { width: 100%; height: 100%; object-fit: contain; transform-origin: center;
  user-select: none; -webkit-user-drag: none; }
.viewer-tools { display: flex; gap: 6px; align-items: center; margin-top: 6px; }
.viewer-tools button { padding: 2px 10px; border: 1px solid #888; border-radius: 4px; }
.viewer-empty { height: 120px; display: flex; align-items: center; justify-content: center; color: #888; }
"""


def window_views(upload: Upload, image: LoadedImage) -> dict[str, Image.Image]:
    """The presets rendered from a monochrome DICOM's values, at the size the model saw; else {}."""
    if image.source_format != "DICOM":
        return {}
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut

        ds = pydicom.dcmread(io.BytesIO(upload.data), force=True)
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            return {}  # colour DICOM: no windowing applies
        pixels = ds.pixel_array
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            pixels = pixels[len(pixels) // 2]  # the frame the model saw
        values = apply_modality_lut(pixels, ds).astype(np.float32)
        inverted = str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    except Exception:  # the model's rendering already succeeded; presets are a convenience
        log.debug("no window presets for an upload", exc_info=True)
        return {}
    views = {}
    for name, (level, width) in PRESETS.items():
        scaled = np.clip((values - (level - width / 2)) / width, 0.0, 1.0) * 255.0
        gray = np.rint(255.0 - scaled if inverted else scaled).astype(np.uint8)
        views[name] = Image.fromarray(gray, mode="L").resize(image.image.size, Image.Resampling.LANCZOS)
    return views


def _data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


def viewer_html(image: Image.Image | None, caption: str = "") -> str:
    if image is None:
        return "<div class='viewer-empty'>The case's images appear here: wheel to zoom, drag to pan.</div>"
    return (
        f"<div class='viewer-stage'><img class='viewer-image' alt='case image' draggable='false' "
        f"src='{_data_url(image)}'></div>"
        "<div class='viewer-tools'><button data-zoom='out' title='zoom out'>−</button>"
        "<span class='viewer-zoom'>fit</span><button data-zoom='in' title='zoom in'>+</button>"
        f"<button data-zoom='fit' title='fit (or double-click)'>fit</button><span>{caption}</span></div>"
    )


@dataclass
class ViewerParts:
    html: gr.HTML
    image: gr.Radio
    preset: gr.Radio

    @property
    def outputs(self) -> list[gr.components.Component]:
        return [self.html, self.image, self.preset]


def build_viewer() -> ViewerParts:
    """The viewer's components, inside the current layout block."""
    with gr.Group(elem_id="image-viewer"):
        html = gr.HTML(viewer_html(None), js_on_load=VIEWER_JS, css_template=VIEWER_CSS, elem_id="viewer")
        image = gr.Radio([], label="Image", visible=False, elem_id="viewer-image-choice")
        preset = gr.Radio(
            [AS_SEEN],
            value=AS_SEEN,
            label="Window / level (view only)",
            visible=False,
            elem_id="viewer-preset",
        )
    return ViewerParts(html, image, preset)


def show(
    images: list[LoadedImage],
    windows: dict[str, dict[str, Image.Image]],
    index: int = 0,
    preset: str = AS_SEEN,
) -> tuple[object, object, object]:
    """Viewer updates for the case's images: the html, the image picker and the preset picker."""
    if not images:
        return viewer_html(None), gr.Radio(choices=[], visible=False), gr.Radio(visible=False)
    index = min(max(index, 0), len(images) - 1)
    image = images[index]
    views = windows.get(image.sha256, {})
    preset = preset if preset in views else AS_SEEN
    picture = views.get(preset, image.image)
    caption = f"{image.source_format} · {image.width}×{image.height}" + (
        f" · {preset} (L {PRESETS[preset][0]:g}, W {PRESETS[preset][1]:g})" if preset in PRESETS else ""
    )
    labels = [f"image {i + 1}" for i in range(len(images))]
    return (
        viewer_html(picture, caption),
        gr.Radio(choices=labels, value=labels[index], visible=len(images) > 1),
        gr.Radio(choices=[AS_SEEN, *views], value=preset, visible=bool(views)),
    )
