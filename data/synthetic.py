"""The synthetic clinic: seeded, deterministic multiple-choice cases with known answers.

Real benchmarks cannot be downloaded here, so end-to-end runs, demos and learning tests use
generated cases (docs/synthetic-clinic.md). Each image's *style* encodes its modality, and so the
gold specialty: one strong background colour per modality (seven clearly different colours, which
even a tiny VLM learns within a few hundred GRPO steps, docs/learning.md) plus a texture typical of
the modality. Marks drawn on top encode the *finding*: no mark is the normal finding, and each
other finding of a modality has its own mark shape (small disc, large disc, ring, line or a
cluster of dots) and its own colour (``MARK_COLOURS``, by the finding's place among the modality's
abnormal findings). The colour is what a tiny VLM reads: with shape alone (one colour per
modality) the tiny model's format warm-up named the finding of 14 of 49 clear held-out images
after 200 steps, no better than chance.

Image clarity is a property of a case: a ``clear`` image shows its mark; an ``unclear`` one has an
opaque artefact over the whole region where marks are drawn, so it shows the modality (the border)
but nothing of the finding. On unclear images only other evidence (the specialists' opinions) can
tell the answer; the attending's curriculum clinic (rl/simulated.py) uses them only where that
evidence is right.

A case depends only on ``(seed, index, size, image_count, clarity)``: ``generate_cases(10)`` is a prefix of
``generate_cases(100)``, and a case can be rebuilt from its id.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count

import numpy as np
from PIL import Image, ImageDraw

from data.images import encode_png
from data.specialties import SPECIALTIES, specialty_for_modality

RGB = tuple[int, int, int]
LETTERS = "ABCD"
PATCH = 28  # Qwen2.5-VL's merged patch side: sizes that are multiples of it tile exactly
CLARITIES = ("clear", "unclear")
# The artefact over an unclear image: a flat grey square over every pixel a mark can touch
# (centres 0.48-0.52 of the side, reach up to 0.37 of it), leaving a border that shows the modality.
OCCLUDER = (0.1, 0.9)
OCCLUDER_COLOUR: RGB = (128, 128, 128)


@dataclass(frozen=True)
class SyntheticCase:
    """One multiple-choice case and its gold answer."""

    case_id: str
    images: tuple[bytes, ...]  # PNG bytes
    question: str
    options: tuple[str, ...]  # "A) Pulmonary nodule", ...
    answer: str  # gold letter
    answer_text: str  # gold option text, without the letter
    specialty: str  # gold triage label, one of SPECIALTIES
    modality: str
    finding: str  # gold finding key, e.g. "nodule"
    clarity: str = "clear"  # "clear": the mark shows the finding; "unclear": the finding is hidden

    @property
    def seen(self) -> str:
        """What the image visibly shows: ``"<modality>: <finding text>"``, or ``"<modality>: unclear"``."""
        return f"{self.modality}: {self.answer_text if self.clarity == 'clear' else 'unclear'}"


@dataclass(frozen=True)
class Finding:
    """A finding a modality can show, and the mark that draws it (``"none"`` for normal)."""

    key: str
    text: str
    mark: str


@dataclass(frozen=True)
class ModalityStyle:
    """How images of one modality look: background, texture and its findings."""

    modality: str
    background: RGB
    texture: str
    findings: tuple[Finding, ...]  # exactly four, the first one normal: the four options


# The colours of a modality's first, second and third abnormal finding. They sit far from anything
# any background or texture produces, so a mark is unambiguous even at 56×56.
MARK_COLOURS: tuple[RGB, RGB, RGB] = ((255, 255, 255), (255, 0, 255), (0, 220, 255))


# One modality per specialty, in SPECIALTIES order.
MODALITY_STYLES: dict[str, ModalityStyle] = {
    style.modality: style
    for style in (
        ModalityStyle(
            "histology", (230, 150, 200), "nuclei",
            (Finding("normal", "Normal tissue", "none"),
             Finding("carcinoma", "Invasive carcinoma", "large_disc"),
             Finding("granuloma", "Granuloma", "ring"),
             Finding("inflammation", "Acute inflammation", "dots")),
        ),
        ModalityStyle(
            "ct", (70, 70, 70), "body_outline",
            (Finding("normal", "No abnormality", "none"),
             Finding("nodule", "Pulmonary nodule", "small_disc"),
             Finding("mass", "Mass", "large_disc"),
             Finding("fracture", "Fracture", "line")),
        ),
        ModalityStyle(
            "endoscopy", (190, 50, 45), "vignette",
            (Finding("normal", "Normal mucosa", "none"),
             Finding("polyp", "Polyp", "small_disc"),
             Finding("ulcer", "Ulcer", "ring"),
             Finding("tumour", "Exophytic tumour", "large_disc")),
        ),
        ModalityStyle(
            "pet", (35, 45, 160), "blotches",
            (Finding("normal", "No abnormal uptake", "none"),
             Finding("solitary_lesion", "Solitary hypermetabolic lesion", "small_disc"),
             Finding("metastases", "Multiple metastases", "dots"),
             Finding("bulky_mass", "Bulky hypermetabolic mass", "large_disc")),
        ),
        ModalityStyle(
            "thyroid", (40, 150, 70), "speckle",
            (Finding("normal", "Normal thyroid", "none"),
             Finding("nodule", "Thyroid nodule", "small_disc"),
             Finding("cyst", "Thyroid cyst", "ring"),
             Finding("goitre", "Diffuse goitre", "large_disc")),
        ),
        ModalityStyle(
            "fundus", (225, 120, 30), "circular_field",
            (Finding("normal", "Normal fundus", "none"),
             Finding("haemorrhages", "Retinal haemorrhages", "dots"),
             Finding("detachment", "Retinal detachment", "line"),
             Finding("macular_hole", "Macular hole", "ring")),
        ),
        ModalityStyle(
            "dermoscopy", (225, 195, 120), "grid",
            (Finding("normal", "Normal skin", "none"),
             Finding("naevus", "Benign naevus", "small_disc"),
             Finding("melanoma", "Melanoma", "large_disc"),
             Finding("scar", "Scar", "line")),
        ),
    )
}  # fmt: skip

# Through the shared label map, so a synthetic case's gold specialty is what a real case of the
# same modality would be labelled.
SPECIALTY_OF_MODALITY: dict[str, str | None] = {m: specialty_for_modality(m) for m in MODALITY_STYLES}
_MODALITY_OF_SPECIALTY: dict[str | None, str] = {s: m for m, s in SPECIALTY_OF_MODALITY.items()}

# Worded like a clinical MCQ stem; none names a modality or specialty: the image must carry those.
QUESTIONS: tuple[str, ...] = (
    "What is the most likely finding in {this}?",
    "Which of the following best describes {this}?",
    "Based on {this}, which diagnosis is most likely?",
    "What does {this} most likely show?",
)


def mark_colour(style: ModalityStyle, finding: Finding) -> RGB:
    """The colour ``finding``'s mark is drawn in on images of ``style`` (by its place among the findings)."""
    return MARK_COLOURS[(style.findings.index(finding) - 1) % len(MARK_COLOURS)]


def generate_cases(n: int, *, seed: int = 0, size: int = 56, image_count: int = 1) -> list[SyntheticCase]:
    """The first ``n`` cases of the clinic for ``seed``."""
    return list(iter_cases(n, seed=seed, size=size, image_count=image_count))


def iter_cases(
    n: int | None = None, *, seed: int = 0, size: int = 56, image_count: int = 1
) -> Iterator[SyntheticCase]:
    """Yield cases 0, 1, ... (``n`` of them, or without end when ``n`` is None)."""
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    indices = count() if n is None else range(n)
    yield from (make_case(i, seed=seed, size=size, image_count=image_count) for i in indices)


def make_case(
    index: int, *, seed: int = 0, size: int = 56, image_count: int = 1, clarity: str = "clear"
) -> SyntheticCase:
    """Case number ``index`` of the clinic for ``seed``; ``clarity="unclear"`` hides its finding.

    The clear and the unclear version of a case share everything but the pixels over the finding
    (and the case id).
    """
    _check_args(index, seed, size, image_count)
    if clarity not in CLARITIES:
        raise ValueError(f"clarity must be one of {CLARITIES}, got {clarity!r}")
    # Specialties are dealt in shuffled blocks of seven: balanced over any prefix (counts differ
    # by at most one) without a fixed period a model could learn from the case order.
    block, slot = divmod(index, len(SPECIALTIES))
    order = np.random.default_rng([seed, 1, block]).permutation(len(SPECIALTIES))
    specialty = SPECIALTIES[int(order[slot])]
    style = MODALITY_STYLES[_MODALITY_OF_SPECIALTY[specialty]]

    rng = np.random.default_rng([seed, 0, index])
    finding = style.findings[int(rng.integers(len(style.findings)))]
    shuffled = [style.findings[int(i)] for i in rng.permutation(len(style.findings))]
    letter = LETTERS[shuffled.index(finding)]
    this = "this image" if image_count == 1 else "these images"
    question = QUESTIONS[int(rng.integers(len(QUESTIONS)))].format(this=this)
    images = tuple(encode_png(_draw(style, finding, size, rng, clarity)) for _ in range(image_count))
    return SyntheticCase(
        case_id=f"syn-{seed}-{index:05d}" + ("" if clarity == "clear" else "-unclear"),
        images=images,
        question=question,
        options=tuple(f"{LETTERS[i]}) {f.text}" for i, f in enumerate(shuffled)),
        answer=letter,
        answer_text=finding.text,
        specialty=specialty,
        modality=style.modality,
        finding=finding.key,
        clarity=clarity,
    )


def _check_args(index: int, seed: int, size: int, image_count: int) -> None:
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    if size < PATCH or size % PATCH:
        raise ValueError(f"size must be a positive multiple of {PATCH}, got {size}")
    if image_count < 1:
        raise ValueError(f"image_count must be >= 1, got {image_count}")


# --- drawing ------------------------------------------------------------------------------------


def _draw(
    style: ModalityStyle, finding: Finding, size: int, rng: np.random.Generator, clarity: str = "clear"
) -> Image.Image:
    """One image: jittered background, the modality's texture, the finding's mark, and over it the
    artefact of an unclear image."""
    jitter = rng.integers(-8, 9, size=3)
    pixels = np.empty((size, size, 3), dtype=np.float32)
    pixels[:] = np.asarray(style.background, dtype=np.float32) + jitter
    _TEXTURES[style.texture](pixels, rng)
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    _draw_mark(draw, finding.mark, mark_colour(style, finding), size, rng)
    if clarity == "unclear":
        lo, hi = (round(f * size) for f in OCCLUDER)
        draw.rectangle((lo, lo, hi, hi), fill=OCCLUDER_COLOUR)
    return image


def _nuclei(pixels: np.ndarray, rng: np.random.Generator) -> None:
    """Scattered dark-purple specks, like haematoxylin-stained nuclei."""
    size = pixels.shape[0]
    ys, xs = rng.integers(0, size, size=(2, size * size // 25))
    pixels[ys, xs] *= np.float32(0.6)


def _body_outline(pixels: np.ndarray, rng: np.random.Generator) -> None:
    """A brighter elliptical body contour with faint noise, like an axial CT slice."""
    size = pixels.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    r = np.hypot((xx - c) / (0.46 * size), (yy - c) / (0.40 * size))
    pixels[np.abs(r - 1.0) < 2.5 / size] += 60
    pixels += rng.normal(0, 4, size=(size, size, 1)).astype(np.float32)


def _vignette(pixels: np.ndarray, rng: np.random.Generator) -> None:
    """Darkening towards the corners, like the light fall-off of an endoscope."""
    size = pixels.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    r = np.hypot(xx - c, yy - c) / (c * math.sqrt(2))
    pixels *= (1.0 - 0.5 * r**2)[..., None]
    pixels += rng.normal(0, 3, size=(size, size, 1)).astype(np.float32)


def _blotches(pixels: np.ndarray, rng: np.random.Generator) -> None:
    """Low-frequency intensity variation, like background tracer uptake."""
    size = pixels.shape[0]
    coarse = rng.normal(0, 12, size=(size // 8 + 2, size // 8 + 2)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR))
    pixels += smooth[..., None]


def _speckle(pixels: np.ndarray, rng: np.random.Generator) -> None:
    """Grainy per-pixel noise, like ultrasound speckle."""
    size = pixels.shape[0]
    pixels += rng.normal(0, 12, size=(size, size, 1)).astype(np.float32)


def _circular_field(pixels: np.ndarray, rng: np.random.Generator) -> None:
    """A round bright field on black with a paler optic disc, like a fundus photograph."""
    size = pixels.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    disc_x = c + (0.30 if rng.integers(2) else -0.30) * size  # left or right eye
    pixels[np.hypot(xx - disc_x, yy - c) < 0.07 * size] += 25
    pixels[np.hypot(xx - c, yy - c) > 0.48 * size] = 0


def _grid(pixels: np.ndarray, rng: np.random.Generator) -> None:
    """Faint regular lines, like the skin-surface pattern under a dermatoscope."""
    offset = int(rng.integers(7))
    pixels[offset::7, :] *= np.float32(0.85)
    pixels[:, offset::7] *= np.float32(0.85)


_TEXTURES = {
    "nuclei": _nuclei,
    "body_outline": _body_outline,
    "vignette": _vignette,
    "blotches": _blotches,
    "speckle": _speckle,
    "circular_field": _circular_field,
    "grid": _grid,
}


def _draw_mark(
    draw: ImageDraw.ImageDraw, mark: str, colour: RGB, size: int, rng: np.random.Generator
) -> None:
    """Draw ``mark`` at a random spot that stays inside every texture's field of view."""
    if mark == "none":
        return
    # Marks are large, each covering much of the centre: a 2-layer vision tower of width 32 names
    # a finding drawn at a quarter of this size no better than chance after a 200-step warm-up.
    # They stay inside OCCLUDER's square, whatever their centre and angle.
    width = max(2, round(size / 6))
    cx, cy = rng.uniform(0.48, 0.52, size=2) * size

    def disc(x: float, y: float, r: float) -> None:
        draw.ellipse((round(x - r), round(y - r), round(x + r), round(y + r)), fill=colour)

    if mark == "small_disc":
        disc(cx, cy, 0.28 * size)
    elif mark == "large_disc":
        disc(cx, cy, 0.37 * size)
    elif mark == "ring":
        r = 0.36 * size
        draw.ellipse(
            (round(cx - r), round(cy - r), round(cx + r), round(cy + r)), outline=colour, width=width
        )
    elif mark == "line":
        angle = rng.uniform(0, math.pi)
        dx, dy = 0.25 * size * math.cos(angle), 0.25 * size * math.sin(angle)
        draw.line((round(cx - dx), round(cy - dy), round(cx + dx), round(cy + dy)), fill=colour, width=width)
    elif mark == "dots":
        for x, y in rng.uniform(0.25, 0.75, size=(int(rng.integers(7, 10)), 2)) * size:
            disc(x, y, 0.12 * size)
    else:
        raise ValueError(f"unknown mark {mark!r}")
