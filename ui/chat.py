"""The clinicians' tab: a multimodal chat whose agent steps stream in as collapsible messages.

One browser session is one :class:`ChatSession` (a ``gr.State``, so concurrent users never share
a case). A case is a LangGraph thread: follow-up questions reuse it, and the images, until
"New case". The graph runs in a worker thread; its custom stream events are turned into chat
messages as they arrive (:class:`Transcript`).
"""

from __future__ import annotations

import logging
import queue
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from app.runtime import CaseRequest, CaseResult, InputError
from data.images import ImageError, LoadedImage, encode_png, load_image
from ui.safety import redact_paths

if TYPE_CHECKING:
    from app.config import UISettings
    from app.runtime import Runtime

log = logging.getLogger(__name__)

FILE_TYPES = ["image", ".dcm", ".dicom"]
RAW_EXCERPT_CHARS = 600  # of a completion shown when nothing could be parsed from it
Message = dict[str, Any]


@dataclass
class ChatSession:
    """One user's case: its LangGraph thread, images, transcript and newest run."""

    thread_id: str | None = None
    images: list[LoadedImage] = field(default_factory=list)
    history: list[Message] = field(default_factory=list)
    last_run_id: str | None = None
    questions: int = 0


def _thought(title: str, content: str, *, status: str, duration: float | None = None) -> Message:
    """A collapsible agent step (open with a spinner while pending, closed when done)."""
    metadata: dict[str, Any] = {"title": title, "status": status}
    if duration is not None:
        metadata["duration"] = round(duration, 2)
    return {"role": "assistant", "content": content, "metadata": metadata}


def _parse_note(record: dict[str, Any], *, raw: bool = True) -> str:
    """Say when a model's output was not in the expected format; show it when nothing was read."""
    status, error = record.get("parse_status"), (record.get("parsed") or {}).get("error")
    if status == "ok":
        return ""
    note = f"\n\n_Output format {status}{': ' + error if error else ''}._"
    if raw and status == "failed":
        text = (record.get("completion") or "").replace("```", "ʼʼʼ")[:RAW_EXCERPT_CHARS]
        note += f"\n\nRaw output:\n```text\n{text}\n```"
    return note


class Transcript:
    """The assistant messages of one question, rebuilt from the graph's stream events."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._open: dict[tuple[str, str | None], int] = {}  # (node, specialty) -> pending message

    def _start(self, key: tuple[str, str | None], message: Message) -> None:
        self._open[key] = len(self.messages)
        self.messages.append(message)

    def _finish(self, key: tuple[str, str | None], message: Message) -> None:
        index = self._open.pop(key, None)
        if index is None:
            self.messages.append(message)
        else:
            self.messages[index] = message

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "step_started":
            self._started(event["node"], event.get("specialty"))
        elif kind == "step_finished":
            self._finished(event["record"])
        elif kind == "run_finished":
            self._run_finished(event)

    def _started(self, node: str, specialty: str | None) -> None:
        if node == "triage":
            self._start(
                (node, None), _thought("Triage", "Choosing the specialists to consult…", status="pending")
            )
        elif node == "specialist":
            title = f"Specialist · {specialty}"
            self._start((node, specialty), _thought(title, "Examining the case…", status="pending"))
        else:
            self._start(
                (node, None), _thought("Attending physician", "Weighing the opinions…", status="pending")
            )

    def _finished(self, record: dict[str, Any]) -> None:
        node, specialty = record["node"], record.get("specialty")
        parsed = record.get("parsed") or {}
        latency = float(record.get("latency_s") or 0.0)
        note = _parse_note(record)
        if node == "triage":
            consulted = parsed.get("consulted") or []
            why = (parsed.get("rationale") or "").strip() or "_(no reasoning given)_"
            body = f"Consulting: {', '.join(f'**{s}**' for s in consulted)}\n\n**Why:** {why}{note}"
            self._finish(
                (node, None),
                _thought(f"Triage → {', '.join(consulted)}", body, status="done", duration=latency),
            )
        elif node == "specialist":
            answer = (parsed.get("answer") or "").strip() or "_(no answer given)_"
            think = (parsed.get("think") or "").strip()
            body = f"**Opinion:** {answer}" + (f"\n\n{think}" if think else "") + note
            self._finish(
                (node, specialty),
                _thought(f"Specialist · {specialty}", body, status="done", duration=latency),
            )
        else:
            think = (parsed.get("think") or "").strip() or "_(no reasoning given)_"
            self._finish(
                (node, None),
                _thought("Attending physician · reasoning", think + note, status="done", duration=latency),
            )
            answer = (parsed.get("answer") or "").strip() or "_(no answer given)_"
            option = f" (option {parsed['option']})" if parsed.get("option") else ""
            short = _parse_note(record, raw=False)
            self.messages.append({"role": "assistant", "content": f"**Answer:** {answer}{option}{short}"})

    def _run_finished(self, event: dict[str, Any]) -> None:
        for key, index in list(self._open.items()):  # steps a failure cut short
            title = self.messages[index]["metadata"]["title"]
            self.messages[index] = _thought(title, "_(did not finish)_", status="done")
            self._open.pop(key)
        run = f"run `{event['run_id']}`"
        if event.get("status") == "error":
            self.messages.append(
                {
                    "role": "assistant",
                    "content": f"⚠️ **The run failed:** {redact_paths(event.get('error'))}\n\n"
                    f"The steps that finished are stored as {run}.",
                }
            )
        else:
            self.messages.append({"role": "assistant", "content": f"<sub>{run}</sub>"})


def parse_options(text: str | None) -> list[str]:
    """Options typed one per line (blank lines ignored)."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


class ChatController:
    """The chat tab's event handlers, bound to one runtime."""

    def __init__(self, runtime: Runtime, ui: UISettings):
        self.runtime = runtime
        self.ui = ui
        # Previews of uploads as normalised PNGs (DICOM has no browser preview); paths never shown.
        self._previews = Path(tempfile.mkdtemp(prefix="mmedagent-ui-"))

    def _preview(self, image: LoadedImage) -> Message:
        path = self._previews / f"{image.sha256}.png"
        if not path.exists():
            path.write_bytes(encode_png(image.image))
        return {"role": "user", "content": {"path": str(path), "alt_text": "uploaded image"}}

    def _load(self, files: list[str]) -> list[LoadedImage]:
        if len(files) > self.ui.max_images:
            raise ImageError(f"{len(files)} images attached; the limit is {self.ui.max_images} per message")
        limits = self.runtime.settings.image_limits()
        # Gradio keeps each upload under its original file name; only that name reaches messages.
        return [load_image(Path(f).read_bytes(), name=Path(f).name, limits=limits) for f in files]

    def _events(self, req: CaseRequest) -> Iterator[dict[str, Any] | CaseResult]:
        """Run the case in a worker thread and yield its stream events, then its result."""
        events: queue.Queue[Any] = queue.Queue()
        done = object()

        def work() -> None:
            try:
                events.put(self.runtime.ask(req, on_event=events.put))
            except InputError as exc:
                events.put(exc)
            except Exception as exc:  # a bug, not the user's input: logged with its traceback
                log.exception("case failed before it could be stored")
                events.put(exc)
            finally:
                events.put(done)

        # The worker finishes (and stores the run) even when the browser goes away mid-case.
        threading.Thread(target=work, name="mmedagent-case", daemon=True).start()
        while (item := events.get()) is not done:
            yield item

    def respond(
        self, message: dict[str, Any] | None, options_text: str | None, session: ChatSession
    ) -> Iterator[tuple[Any, ...]]:
        """Handle one question: stream the agents' steps into the chat as they happen."""
        text = ((message or {}).get("text") or "").strip()
        files = list((message or {}).get("files") or [])
        history = session.history
        try:
            images = self._load(files)
        except (ImageError, OSError) as exc:
            history.append({"role": "user", "content": text or "(no question)"})
            history += [{"role": "user", "content": f"attached file: {Path(f).name}"} for f in files]
            history.append(_error(f"Could not read an image: {redact_paths(str(exc))}"))
            yield self._outputs(session, idle=True)
            return
        history.append({"role": "user", "content": text or "(no question)"})
        history += [self._preview(img) for img in images]
        if images:  # new images replace the case's; a follow-up without any reuses them
            session.images = images
        req = CaseRequest(
            question=text,
            images=session.images,
            options=parse_options(options_text),
            source="ui",
            thread_id=session.thread_id,
        )
        try:
            self.runtime.validate(req)
        except InputError as exc:
            hint = " Attach an image (PNG, JPEG or DICOM)." if not session.images else ""
            history.append(_error(f"{str(exc).capitalize()}.{hint}"))
            yield self._outputs(session, idle=True)
            return
        # The options belonged to this question; a follow-up brings its own (or none).
        yield self._outputs(session, idle=False, clear_options=True)

        transcript = Transcript()
        start = len(history)
        for item in self._events(req):
            if isinstance(item, CaseResult):
                session.thread_id, session.last_run_id = item.thread_id, item.run_id
                session.questions += 1
            elif isinstance(item, Exception):
                problem = (
                    str(item) if isinstance(item, InputError) else "an internal error (see the server log)"
                )
                transcript.messages.append(
                    _error(f"The case could not be run: {problem}. Nothing was stored.")
                )
            else:
                transcript.on_event(item)
            history[start:] = transcript.messages
            yield self._outputs(session, idle=False)
        yield self._outputs(session, idle=True)

    def _outputs(self, session: ChatSession, *, idle: bool, clear_options: bool = False) -> tuple[Any, ...]:
        box = gr.MultimodalTextbox(value=None, interactive=idle)
        options = "" if clear_options else gr.skip()
        return list(session.history), box, session, case_status(session), options

    def feedback(self, correct: bool, right_answer: str | None, session: ChatSession) -> tuple[str, str]:
        """Store a clinician's verdict on the newest run's answer as a reward row."""
        if session.last_run_id is None:
            return "Ask a question first: feedback applies to the newest answer.", right_answer or ""
        answer = (right_answer or "").strip() or None
        self.runtime.store.add_feedback(session.last_run_id, correct=correct, answer=answer)
        verdict = "correct" if correct else "wrong"
        extra = f" (right answer: {answer})" if answer else ""
        return f"Recorded **{verdict}**{extra} for run `{session.last_run_id}`. Thank you.", ""

    @staticmethod
    def new_case() -> tuple[Any, ...]:
        session = ChatSession()
        return [], gr.MultimodalTextbox(value=None, interactive=True), session, case_status(session), ""


def _error(text: str) -> Message:
    return {"role": "assistant", "content": f"⚠️ {text}"}


def case_status(session: ChatSession) -> str:
    if session.last_run_id is None:
        return "New case: attach image(s), type a question, press Enter."
    return (
        f"Case `{session.thread_id}` · {session.questions} question(s) · last run `{session.last_run_id}` "
        "· follow-up questions continue this case"
    )


@dataclass
class ChatTab:
    """The components other tabs wire to."""

    session: gr.State
    open_trace: gr.Button


def build_chat_tab(runtime: Runtime, ui: UISettings) -> ChatTab:
    """Render the chat tab's components inside the current ``gr.Tab``."""
    controller = ChatController(runtime, ui)
    session = gr.State(ChatSession())
    chatbot = gr.Chatbot(
        label="Case",
        height=520,
        elem_id="case-chat",
        feedback_options=None,
        buttons=["copy"],
        placeholder="Attach one or more images (PNG, JPEG or DICOM), type a question, press Enter.",
    )
    box = gr.MultimodalTextbox(
        elem_id="case-input",
        file_types=FILE_TYPES,
        file_count="multiple",
        placeholder="Question about the image(s)… (follow-up questions continue the case)",
        show_label=False,
        autofocus=True,
    )
    options = gr.Textbox(
        label="Options (optional, one per line)",
        placeholder="A) Normal\nB) Pulmonary nodule\nC) Fracture",
        lines=3,
        elem_id="case-options",
    )
    status = gr.Markdown(case_status(ChatSession()), elem_id="case-status")
    with gr.Row(equal_height=True):
        correct = gr.Button("✓ Correct", elem_id="fb-correct", size="md", scale=0, min_width=110)
        wrong = gr.Button("✗ Wrong", elem_id="fb-wrong", variant="stop", size="md", scale=0, min_width=110)
        right = gr.Textbox(
            show_label=False,
            container=False,
            placeholder="the right answer (optional, sent with ✗ Wrong)",
            elem_id="fb-answer",
            scale=3,
        )
        open_trace = gr.Button("Open in Traces", elem_id="open-trace", size="md", scale=0, min_width=140)
        new = gr.Button("New case", elem_id="new-case", size="md", scale=0, min_width=110)
    feedback_note = gr.Markdown(elem_id="fb-status")

    box.submit(
        controller.respond,
        [box, options, session],
        [chatbot, box, session, status, options],
        api_name="ask",
        concurrency_limit=ui.concurrency,
        concurrency_id="cases",
    )
    correct.click(
        lambda answer, s: controller.feedback(True, answer, s),
        [right, session],
        [feedback_note, right],
        api_name="feedback_correct",
    )
    wrong.click(
        lambda answer, s: controller.feedback(False, answer, s),
        [right, session],
        [feedback_note, right],
        api_name="feedback_wrong",
    )
    new.click(controller.new_case, None, [chatbot, box, session, status, feedback_note], api_name="new_case")
    return ChatTab(session=session, open_trace=open_trace)
