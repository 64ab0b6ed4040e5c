"""Benchmark folders with numeric answers, and a real OpenAI-compatible server that answers them.

``write_slake`` and ``write_vqa_rad`` write small copies in the published layouts (SLAKE with English
and Chinese questions; VQA-RAD's JSON release) whose answers are full of numbers, sizes, levels and
sequences. :class:`GoldServer` serves ``/v1/chat/completions`` over HTTP on loopback: it finds the
case's question in the request and answers, in the ``<think>/<answer>`` format, either the gold
answer written the way a model might (a letter, the text, ``4cm`` for ``4 cm``, ``Two`` for ``2``)
or a near miss (``T2`` for ``T1``, ``12`` for ``2``, ``No`` for ``Yes``).

Run as a script it writes the folders and serves until interrupted (used for scoring notes):
``python -m tests.gold_server --write DIR [--near-miss]``.
"""

from __future__ import annotations

import argparse
import io
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from tests.loopback import LoopbackServer, QuietHandler


@dataclass(frozen=True)
class GoldCase:
    """One question of a fixture folder: its gold answer, a right way to say it, and a near miss."""

    qid: int
    question: str
    gold: str | int
    answer_type: str  # CLOSED | OPEN, as the dataset labels it
    said: str  # the gold answer as the server writes it
    near_miss: str
    lang: str = "en"


SLAKE = (
    GoldCase(1, "Is there a lesion in the liver?", "Yes", "CLOSED", "Yes, there is.", "No"),
    GoldCase(2, "Does the image show a rib fracture?", "No", "CLOSED", "no evidence of a fracture", "Yes"),
    GoldCase(3, "How many kidneys are seen in the image?", "2", "OPEN", "Two", "12"),
    GoldCase(4, "How large is the liver mass?", "4 cm", "OPEN", "4cm", "14 mm"),
    GoldCase(5, "Is this a T1 or a T2 weighted image?", "T1", "CLOSED", "T1.", "T2"),
    GoldCase(6, "At which level is the disc herniation?", "C5-C6", "OPEN", "C5–C6", "C6-C7"),
    GoldCase(7, "Which stage is the tumour?", "stage II", "OPEN", "Stage 2", "stage III"),
    GoldCase(8, "肝脏有病变吗？", "是", "CLOSED", "是的", "否", "zh"),
    GoldCase(9, "病变在哪里？", "左肺", "OPEN", "在左肺", "右肾", "zh"),
    GoldCase(10, "图中有几个肾脏？", "2", "OPEN", "2个", "3个", "zh"),
    GoldCase(11, "病变的直径是多少？", "3.5 cm", "OPEN", "3.50cm", "5.3 mm", "zh"),
)
VQA_RAD = (
    GoldCase(21, "Is there a pneumothorax?", "Yes", "CLOSED", "A", "B"),
    GoldCase(22, "Is the heart enlarged?", "no", "CLOSED", "**B**", "Yes, it is"),
    GoldCase(23, "How many lesions are seen?", 2, "OPEN", "2 lesions", "12"),
    GoldCase(24, "What is the diameter of the cyst?", "4 cm", "OPEN", "4.0 cm", "6 cm"),
    GoldCase(25, "Is this image T1 or T2 weighted?", "T1", "CLOSED", "t1", "T2"),
    GoldCase(26, "Is the mass on the left or right?", "right", "CLOSED", "Right.", "left"),
    GoldCase(27, "How many ribs are fractured?", "3", "OPEN", "three", "13"),
    GoldCase(28, "Which vertebral level shows the fracture?", "C6", "OPEN", "C6", "C5"),
)
CASES = {c.question: c for c in (*SLAKE, *VQA_RAD)}


def _jpeg(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40), (shade, 255 - shade, 120)).save(buf, format="JPEG")
    return buf.getvalue()


def write_slake(root: Path) -> Path:
    """A SLAKE 1.0 copy (``test.json`` + ``imgs/``) of :data:`SLAKE`; load it with ``language="all"``."""
    (root / "imgs" / "xmlab1").mkdir(parents=True, exist_ok=True)
    (root / "imgs" / "xmlab1" / "source.jpg").write_bytes(_jpeg(80))
    rows = [
        {
            "img_id": 1,
            "img_name": "xmlab1/source.jpg",
            "question": c.question,
            "answer": c.gold,
            "q_lang": c.lang,
            "location": "Abdomen",
            "modality": "CT",
            "answer_type": c.answer_type,
            "base_type": "vqa",
            "content_type": "Size",
            "qid": c.qid,
        }
        for c in SLAKE
    ]
    (root / "test.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return root


def write_vqa_rad(root: Path) -> Path:
    """A VQA-RAD OSF copy (the JSON file + ``VQA_RAD Image Folder/``) of :data:`VQA_RAD`."""
    folder = root / "VQA_RAD Image Folder"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "synpic1.jpg").write_bytes(_jpeg(160))
    rows = [
        {
            "qid": c.qid,
            "image_name": "synpic1.jpg",
            "image_organ": "CHEST",
            "answer": c.gold,
            "answer_type": c.answer_type,
            "question_type": "SIZE",
            "question": c.question,
            "phrase_type": "test_freeform",
        }
        for c in VQA_RAD
    ]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(rows), encoding="utf-8")
    return root


def _request_text(body: dict[str, Any]) -> str:
    parts = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
    return "\n".join(parts)


class GoldServer(LoopbackServer):
    """``/v1/chat/completions`` on 127.0.0.1: the gold answer of the case asked (or a near miss)."""

    def __init__(self, *, near_miss: bool = False, port: int = 0) -> None:
        self.near_miss = near_miss
        self.requests = 0
        server = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self.send_error(404)
                    return
                body = self.read_json()
                text = server.reply(_request_text(body))
                self.send_completion(body.get("model"), text, len(text.split()))

        super().__init__(Handler, port)

    def reply(self, prompt: str) -> str:
        self.requests += 1
        case = next((c for q, c in CASES.items() if q in prompt), None)
        if case is None:
            return "<think>not a fixture case</think><answer>?</answer>"
        said = case.near_miss if self.near_miss else case.said
        return f"<think>read the image</think><answer>{said}</answer>"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, required=True, help="folder for slake/ and vqa-rad/")
    parser.add_argument("--near-miss", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    write_slake(args.write / "slake")
    write_vqa_rad(args.write / "vqa-rad")
    with GoldServer(near_miss=args.near_miss, port=args.port) as server:
        print(server.base_url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
