"""The seven specialties a case can be routed to, and the modality -> specialty label map.

This is the one vocabulary shared by the graph (triage), the datasets (gold specialty labels)
and rl/ (triage reward).
"""

from __future__ import annotations

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
    "ct": "Radiologist",
    "mri": "Radiologist",
    "x-ray": "Radiologist",
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
    "dermoscopy": "Dermatologist",
    "dermatology": "Dermatologist",
    "skin": "Dermatologist",
}


def specialty_for_modality(modality: str) -> str | None:
    """The specialty that reads ``modality`` (case-insensitive), or None when unknown."""
    return MODALITY_SPECIALTY.get(modality.strip().lower())
