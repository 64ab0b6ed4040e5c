"""Run cases: ``ask`` (one case) and the ``tiny-model`` it defaults to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.commands.common import console, fail, load_settings, open_runtime
from app.runtime import CaseRequest, InputError, Runtime
from app.tiny_model import build_tiny_model
from data.images import ImageError, LoadedImage, load_image


def tiny_model(
    out_dir: Path,
    size: Annotated[str, typer.Option(help="tiny (~1 MB) or small (~14M params)")] = "tiny",
    seed: int = 0,
) -> None:
    """Build a tiny Qwen2.5-VL checkpoint offline (real architecture, processor and template)."""
    if size not in ("tiny", "small"):
        fail(f"--size must be tiny or small, not {size!r}")
    path = build_tiny_model(out_dir, size=size, seed=seed)  # type: ignore[arg-type]
    console.print(f"tiny Qwen2.5-VL ({size}) saved to {path}")


def ask(
    question: Annotated[str, typer.Option("--question", "-q")],
    image: Annotated[
        list[Path] | None,
        typer.Option("--image", "-i", help="image file (PNG/JPEG/DICOM); repeatable"),
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help='e.g. "A) Nodule"; repeatable')
    ] = None,
    case: Annotated[
        str | None,
        typer.Option(
            "--case",
            help="a stored case's id (a run's thread id): ask a follow-up that sees its earlier turns; "
            "without --image, its stored images",
        ),
    ] = None,
    gold: Annotated[str | None, typer.Option(help="the right answer, when known")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Run one case through triage -> specialists -> attending and print the answer."""
    settings = load_settings()
    if not image and not case:
        fail("give the case's image(s) with --image (or --case to continue a stored case)")
    try:
        images = [load_image(p, limits=settings.image_limits()) for p in image or []]
    except ImageError as exc:
        fail(str(exc))
    runtime = open_runtime(settings)
    try:
        if case and not images:
            images = _case_images(runtime, case)
        req = CaseRequest(
            question=question, images=images, options=option or [], gold_answer=gold, thread_id=case
        )
        runtime.validate(req)
        result = runtime.ask(req)
    except InputError as exc:
        fail(str(exc))
    finally:
        runtime.close()
    if as_json:
        print(json.dumps(result.summary(), indent=2))
    else:
        console.print(f"run {result.run_id}  specialists: {', '.join(result.specialties)}")
        for op in result.opinions:
            console.print(f"[bold]{op['specialty']}[/bold]: {op['answer'] or '(no answer)'}", highlight=False)
        console.print(
            f"[bold green]answer:[/bold green] {result.answer} ({result.answer_status})", highlight=False
        )
    if result.status == "error":
        fail(f"run {result.run_id} failed: {result.error}", code=1)


def _case_images(runtime: Runtime, case: str) -> list[LoadedImage]:
    """The images of the stored case ``case``'s latest question."""
    last = runtime.store.list_runs(thread_id=case, limit=1)
    if not last:
        raise InputError(f"no stored case {case!r}")
    shas = [ref.sha256 for ref in runtime.store.get_run(last[0].id).images]
    images = runtime.stored_images(shas)
    if len(images) < len(shas):
        raise InputError(f"case {case!r}'s images are stored as hashes only: attach them with --image")
    return images
