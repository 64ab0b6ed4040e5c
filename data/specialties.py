"""The seven specialties a case can be routed to, and the modality -> specialty label map.

This is the one vocabulary shared by the graph (triage), the datasets (gold specialty labels)
and rl/ (triage reward).
"""

from __future__ import annotations

import re

SPECIALTIES: tuple[str, ...] = (
    "Pathologist",
    "Radiologist",
    "Surgeon",
    "Oncologist",
    "Endocrinologist",
    "Ophthalmologist",
    "Dermatologist",
)

# Image modality (as benchmark metadata names it, lower-cased) -> the specialty that reads it.
MODALITY_SPECIALTY: dict[str, str] = {
    "histology": "Pathologist",
    "histopathology": "Pathologist",
    "pathology": "Pathologist",
    "microscopy": "Pathologist",
    "microscopy images": "Pathologist",  # OmniMedVQA
    "microscopic images": "Pathologist",  # MMMU img_type
    "pathological images": "Pathologist",  # MMMU img_type
    "ct": "Radiologist",
    "mri": "Radiologist",
    "x-ray": "Radiologist",
    "mr": "Radiologist",
    "computed tomography": "Radiologist",
    "magnetic resonance imaging": "Radiologist",
    "body scans: mri, ct scans, and pet scans": "Radiologist",  # MMMU img_type
    "xray": "Radiologist",
    "ultrasound": "Radiologist",
    "radiology": "Radiologist",
    "endoscopy": "Surgeon",
    "surgical": "Surgeon",
    "intraoperative": "Surgeon",
    "pet": "Oncologist",
    "oncology": "Oncologist",
    "thyroid": "Endocrinologist",
    "endocrine": "Endocrinologist",
    "fundus": "Ophthalmologist",
    "oct": "Ophthalmologist",
    "fundus photography": "Ophthalmologist",
    "optical coherence tomography": "Ophthalmologist",
    "infrared reflectance imaging": "Ophthalmologist",  # OmniMedVQA: retinal IR images
    "dermoscopy": "Dermatologist",
    "dermatology": "Dermatologist",
    "skin": "Dermatologist",
}


def specialty_for_modality(modality: str) -> str | None:
    """The specialty that reads ``modality`` (case-insensitive), or None when unknown."""
    return MODALITY_SPECIALTY.get(modality.strip().lower())


# Clinical subject or body system (MMMU subfield, MedXpertQA body_system) -> specialty, matched on
# word beginnings ("Dermatology", "dermatological"). Subjects no one specialty owns (cardiology,
# pharmacy, public health...) map to nothing: such cases are left out of triage accuracy.
SUBJECT_SPECIALTY: dict[str, str] = {
    "patholog": "Pathologist",
    "neuropatholog": "Pathologist",
    "histolog": "Pathologist",
    "cytolog": "Pathologist",
    "radiolog": "Radiologist",
    "ultrasound": "Radiologist",
    "surg": "Surgeon",
    "orthop": "Surgeon",
    "oncolog": "Oncologist",
    "endocrin": "Endocrinologist",
    "ophthalm": "Ophthalmologist",
    "dermat": "Dermatologist",
    "integument": "Dermatologist",
}
_SUBJECT_STEM = re.compile(r"\b(" + "|".join(sorted(SUBJECT_SPECIALTY, key=len, reverse=True)) + ")")


def specialty_for_subject(subject: str) -> str | None:
    """The specialty a clinical subject or body system belongs to (first one named), or None."""
    m = _SUBJECT_STEM.search(subject.lower())
    return SUBJECT_SPECIALTY[m.group(1)] if m else None
