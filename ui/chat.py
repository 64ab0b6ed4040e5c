"""The clinicians' tab: a multimodal chat whose agent steps stream in as collapsible messages.

One browser session is one :class:`ChatSession` (a ``gr.State``, so concurrent users never share
a case). A case is a LangGraph thread: follow-up questions reuse it, and the images, until
"New case". The graph runs in a worker thread; its custom stream events are turned into chat
messages as they arrive (:class:`Transcript`). A case has a URL (``?case=<id>``) that reopens it,
turns, images and verdicts, from the store; each answer gets its own verdict row. "Try a sample
case" fills the input with a synthetic-clinic case (image, question, options), to send as it is.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from app.feedback import FeedbackError, record_verdict
from app.policies import policy_name
from app.runtime import CaseRequest, CaseResult, InputError, RunNotFinished
from data.answers import is_correct, match_option, option_letters
from data.images import ImageError, LoadedImage, encode_png, load_image
from data.store import run_to_dict
from data.synthetic import SyntheticCase, make_case
from ui.case_queue import CaseQueue
from ui.queries import case_runs
from ui.safety import redact_paths
from ui.text import as_text
from ui.uploads import Upload, check_content, stage_upload, take_uploads
from ui.viewer import build_viewer, show, window_views

if TYPE_CHECKING:
    from app.config import UISettings
    from app.runtime import Runtime

log = logging.getLogger(__name__)

RAW_EXCERPT_CHARS = 600  # of a completion shown when nothing could be parsed from it
Message = dict[str, Any]
CASE_OUTPUTS = 11  # what a handler that (re)opens a case returns: see ChatController._outputs
# "Try a sample case": the Nth click of a browser tab loads case N of the synthetic clinic for this
# seed (a seed of its own, so the samples are not the cases a demo trains or evaluates on).
SAMPLE_SEED = 31

# Keeps the page's address on the open case (a reload reopens it) and remembers recent cases.
CASE_URL_JS = """
(caseId) => {
  const url = new URL(window.location.href);
  if (caseId) { url.searchParams.set("case", caseId); } else { url.searchParams.delete("case"); }
  window.history.replaceState(null, "", url);
  if (caseId) {
    const key = "mmedagent-recent-cases";
    const recent = JSON.parse(window.localStorage.getItem(key) || "[]").filter((c) => c !== caseId);
    window.localStorage.setItem(key, JSON.stringify([caseId, ...recent].slice(0, 10)));
  }
  return [];
}
"""
RECENT_CASES_JS = "() => window.localStorage.getItem('mmedagent-recent-cases') || '[]'"


@dataclass
class ChatSession:
    """One user's case: its LangGraph thread, images, transcript and runs."""

    thread_id: str | None = None
    images: list[LoadedImage] = field(default_factory=list)
    history: list[Message] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    running: bool = False
    place: int = 0  # its place in line while its question waits for a case slot (0: not waiting)
    # Window/level renderings of DICOM uploads for the viewer (memory only), by image sha.
    windows: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The sample case in the input, until it is sent: sent unchanged, it is asked with its gold answer.
    sample: SyntheticCase | None = None

    @property
    def last_run_id(self) -> str | None:
        return self.run_ids[-1] if self.run_ids else None


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
    note = f"\n\n_Output format {status}{': ' + as_text(error) if error else ''}._"
    if raw and status == "failed":
        text = (record.get("completion") or "").replace("```", "ʼʼʼ")[:RAW_EXCERPT_CHARS]
        note += f"\n\nRaw output:\n```text\n{text}\n```"
    return note


def model_label(model_id: str | None) -> str:
    """A model as the page names it (Markdown): a hub id as is, a local folder by its name only."""
    text = redact_paths(model_id or "") or "unknown model"
    return as_text(text.removeprefix("…/"))


def answer_credit(model_id: str | None, policies: dict[str, str]) -> str:
    """Who gave an answer: the attending's model and policy (by :func:`policy_name`), and the
    triage's policy when it is a trained one."""

    def policy(name: str) -> str:
        return "policy base (untrained)" if name == "base" else f"policy {name}"

    credit = f"attending: {model_label(model_id)} · {policy(policies.get('attending', 'unknown'))}"
    if policies.get("triage", "base") not in ("base", "unknown"):
        credit += f" · triage: {policy(policies['triage'])}"
    return credit


def right_answer(answer: str | None, gold: str, options: list[str]) -> Message:
    """After an answer to a case whose answer is known (a sample case): the right one, and whether
    the answer named it."""
    letter = match_option(gold, options)
    shown = options[option_letters(options).index(letter)] if letter else gold
    verdict = "✔ the answer is right" if is_correct(answer, gold, options) else "✘ the answer is wrong"
    return {"role": "assistant", "content": f"**Right answer:** {as_text(shown)} ({verdict})"}


class Transcript:
    """The assistant messages of one question, rebuilt from the graph's stream events.

    ``policy_ids`` names the policy version each role serves (live runs); stored steps carry theirs.
    ``name_policy`` says how the answer line names a version id (:func:`policy_name`).
    """

    def __init__(
        self, name_policy: Callable[[int | None], str], policy_ids: dict[str, int] | None = None
    ) -> None:
        self.messages: list[Message] = []
        self.policy_ids = policy_ids or {}
        self.name_policy = name_policy
        self._served: dict[str, int | None] = {}  # role -> the policy version its steps ran on
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
        role = record.get("role", node)
        self._served[role] = record.get("policy_version_id", self.policy_ids.get(role))
        parsed = record.get("parsed") or {}
        latency = float(record.get("latency_s") or 0.0)
        note = _parse_note(record)
        if node == "triage":
            consulted = parsed.get("consulted") or []
            why = as_text((parsed.get("rationale") or "").strip()) or "_(no reasoning given)_"
            body = f"Consulting: {', '.join(f'**{s}**' for s in consulted)}\n\n**Why:** {why}{note}"
            self._finish(
                (node, None),
                _thought(f"Triage → {', '.join(consulted)}", body, status="done", duration=latency),
            )
        elif node == "specialist":
            answer = as_text((parsed.get("answer") or "").strip()) or "_(no answer given)_"
            think = as_text((parsed.get("think") or "").strip())
            body = f"**Opinion:** {answer}" + (f"\n\n{think}" if think else "") + note
            self._finish(
                (node, specialty),
                _thought(f"Specialist · {specialty}", body, status="done", duration=latency),
            )
        else:
            think = as_text((parsed.get("think") or "").strip()) or "_(no reasoning given)_"
            self._finish(
                (node, None),
                _thought("Attending physician · reasoning", think + note, status="done", duration=latency),
            )
            answer = as_text((parsed.get("answer") or "").strip()) or "_(no answer given)_"
            option = f" (option {as_text(parsed['option'])})" if parsed.get("option") else ""
            short = _parse_note(record, raw=False)
            names = {r: self.name_policy(p) for r, p in self._served.items()}
            credit = answer_credit(record.get("model_id"), names)
            self.messages.append(
                {
                    "role": "assistant",
                    "content": f"**Answer:** {answer}{option}{short}\n\n<sub>{credit}</sub>",
                }
            )

    def _run_finished(self, event: dict[str, Any]) -> None:
        for key, index in list(self._open.items()):  # steps a failure cut short
            title = self.messages[index]["metadata"]["title"]
            self.messages[index] = _thought(title, "_(did not finish)_", status="done")
            self._open.pop(key)
        run = f"run `{event['run_id']}`"
        what = {"error": "The run failed", "interrupted": "The run was interrupted"}.get(event.get("status"))
        if event.get("status") == "running":  # a reopened run that another process is answering
            self.messages.append(
                {
                    "role": "assistant",
                    "content": "⏳ **This question is still being answered by another process.** "
                    f"The steps that finished so far are stored as {run}; reopen the case later "
                    "for its answer.",
                }
            )
        elif what:
            self.messages.append(
                {
                    "role": "assistant",
                    "content": f"⚠️ **{what}:** {as_text(redact_paths(event.get('error')))}\n\n"
                    f"The steps that finished are stored as {run}.",
                }
            )
        else:
            self.messages.append({"role": "assistant", "content": f"<sub>{run}</sub>"})


def parse_options(text: str | None) -> list[str]:
    """Options typed one per line (blank lines ignored)."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def question_bubble(question: str, options: list[str]) -> Message:
    """The user's message: the question, and the options it was asked with."""
    body = as_text(question) if question else "(no question)"
    if options:
        body += "\n\n**Options:**\n" + "\n".join(f"- {as_text(o)}" for o in options)
    return {"role": "user", "content": body}


def _sent_as_is(sample: SyntheticCase, text: str, options: list[str], uploads: list[Upload]) -> bool:
    """Whether a question is the sample case as it was loaded: its question, options and image."""
    return (
        text == sample.question
        and options == list(sample.options)
        and [u.data for u in uploads] == list(sample.images)
    )


def _waiting(place: int) -> Message:
    ahead = "next in line" if place == 1 else f"number {place} in line"
    return {
        "role": "assistant",
        "content": f"⏳ All case slots are busy: your question is **{ahead}** and starts by itself.",
    }


def _error(text: str) -> Message:
    return {"role": "assistant", "content": f"⚠️ {text}"}


def _progress(session: ChatSession) -> str:
    """What the case's question is doing now: waiting for a slot, being answered, or nothing."""
    if session.place:
        return f"queued: all case slots are busy, your question is number {session.place} in line"
    return "running: your question is being answered…" if session.running else ""


def case_status(session: ChatSession) -> str:
    """The line under the chat: which case is open and what it is doing."""
    progress = _progress(session)
    if session.last_run_id is None and progress:
        return f"Case {progress}."
    if session.sample is not None and session.last_run_id is None:
        case = session.sample
        return (
            f"**Sample case** `{case.case_id}`: a synthetic {case.modality} from the built-in clinic, "
            "not a patient. Press Enter to ask it (or edit it first); its right answer is shown after "
            "the answer."
        )
    if session.last_run_id is None:
        return "New case: attach image(s), type a question, press Enter."
    now = f" · {progress}" if progress else " · follow-up questions continue this case"
    return (
        f"Case `{session.thread_id}` · {len(session.run_ids)} question(s) · last run "
        f"`{session.last_run_id}`{now}"
    )


def verdict_rows(answers: list[dict[str, Any]], *, busy: bool) -> dict[str, Any]:
    """What the verdict rows show: the case's answers, and whether their buttons are locked.

    One state, not two: a handler that changed both would render the rows twice, and each render
    replaces the last one's buttons while a click on them may be on its way.
    """
    return {"answers": answers, "busy": busy}


class ChatController:
    """The chat tab's event handlers, bound to one runtime."""

    def __init__(self, runtime: Runtime, ui: UISettings, previews: Path):
        self.runtime = runtime
        self.ui = ui
        self.queue = CaseQueue(ui.concurrency)
        # Previews of uploads as normalised PNGs (DICOM has no browser preview); paths never shown.
        self._previews = previews
        previews.mkdir(parents=True, exist_ok=True)
        self._policy_names: dict[int, str] = {}  # version rows never change: named once

    def name_policy(self, policy_id: int | None) -> str:
        """The name of a stored policy version id (:func:`policy_name`)."""
        if policy_id is None:
            return "unknown"
        if policy_id not in self._policy_names:
            self._policy_names[policy_id] = policy_name(self.runtime.store.get_policy(policy_id))
        return self._policy_names[policy_id]

    # --- images -------------------------------------------------------------------------------

    def _preview(self, image: LoadedImage) -> Message:
        path = self._previews / f"{image.sha256}.png"
        if not path.exists():
            path.write_bytes(encode_png(image.image))
        return {"role": "user", "content": {"path": str(path), "alt_text": "uploaded image"}}

    def _load(self, uploads: list[Upload]) -> list[LoadedImage]:
        if len(uploads) > self.ui.max_images:
            raise ImageError(f"{len(uploads)} images attached; the limit is {self.ui.max_images} per message")
        limits = self.runtime.settings.image_limits()
        for upload in uploads:
            check_content(upload)
        return [load_image(u.data, name=u.name, limits=limits) for u in uploads]

    # --- asking -------------------------------------------------------------------------------

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
                log.exception("case failed (nothing stored, or its end not stored)")
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
        """Handle one question: show it at once, wait for a free slot, stream the agents' steps."""
        text = ((message or {}).get("text") or "").strip()
        # Read into memory and deleted from the upload cache before anything else, refused or not.
        uploads, unreadable = take_uploads(list((message or {}).get("files") or []))
        options = parse_options(options_text)
        history = session.history
        if session.running:  # a second submit from the same tab while its case runs
            history.append(_error("Wait for the current answer before asking the next question."))
            yield self._outputs(session, busy=True)  # the running case still owns the controls
            return
        limit = self.runtime.settings.max_question_chars
        if len(text) > limit:  # refused before it is shown: the chat never holds a huge question
            history.append(
                _error(
                    f"The question is {len(text):,} characters long; the limit is {limit:,}. "
                    "It was not sent: shorten it (it is back in the box) and press Enter."
                )
            )
            files = [str(stage_upload(u.name, u.data)) for u in uploads]
            yield self._outputs(session, draft=({"text": text, "files": files}, options_text or ""))
            return
        sample, session.sample = session.sample, None
        if sample is not None and not _sent_as_is(sample, text, options, uploads):
            sample = None  # edited: an ordinary question, whose answer is not known
        try:
            if unreadable:
                raise ImageError(unreadable[0])
            images = self._load(uploads)
        except ImageError as exc:
            history.append(question_bubble(text, options))
            history += [{"role": "user", "content": f"attached file: {as_text(u.name)}"} for u in uploads]
            history.append(_error(f"Could not read an image: {as_text(redact_paths(str(exc)))}"))
            yield self._outputs(session)
            return
        history.append(question_bubble(text, options))
        history += [self._preview(img) for img in images]
        if images:  # new images replace the case's; a follow-up without any reuses them
            session.images = images
            views = {img.sha256: window_views(u, img) for u, img in zip(uploads, images, strict=True)}
            session.windows = {sha: v for sha, v in views.items() if v}
        req = CaseRequest(
            question=text,
            images=session.images,
            options=options,
            source="ui",
            thread_id=session.thread_id,
            case_id=sample.case_id if sample else None,
            gold_answer=sample.answer if sample else None,
            gold_specialty=sample.specialty if sample else None,
        )
        try:
            self.runtime.validate(req)
        except InputError as exc:
            hint = " Attach an image (PNG, JPEG or DICOM)." if not session.images else ""
            history.append(_error(f"{as_text(str(exc).capitalize())}.{hint}"))
            yield self._outputs(session)
            return
        session.running = True
        # The options belonged to this question; a follow-up brings its own (or none).
        yield self._outputs(session, clear_options=True, busy=True)
        ticket = self.queue.enter()
        try:
            start = len(history)
            while place := self.queue.place(ticket):
                session.place = place
                history[start:] = [_waiting(place)]
                yield self._outputs(session, busy=True)
                self.queue.wait()
            session.place = 0
            del history[start:]
            transcript = Transcript(self.name_policy, self.runtime.policy_ids)
            for item in self._events(req):
                if isinstance(item, CaseResult):
                    session.thread_id = item.thread_id
                    session.run_ids.append(item.run_id)
                    if req.gold_answer and item.status == "ok":
                        transcript.messages.append(right_answer(item.answer, req.gold_answer, options))
                elif isinstance(item, RunNotFinished):  # recorded when it started: not "nothing"
                    transcript.messages.append(
                        _error(
                            "The case could not be finished: an internal error (see the server log). "
                            f"Its steps so far are kept as run `{item.run_id}`."
                        )
                    )
                elif isinstance(item, Exception):
                    problem = (
                        str(item)
                        if isinstance(item, InputError)
                        else "an internal error (see the server log)"
                    )
                    transcript.messages.append(
                        _error(f"The case could not be run: {as_text(problem)}. Nothing was stored.")
                    )
                else:
                    transcript.on_event(item)
                history[start:] = transcript.messages
                yield self._outputs(session, busy=True)
        finally:
            self.queue.leave(ticket)
            session.running, session.place = False, 0
        yield self._outputs(session, busy=False)

    def _outputs(
        self,
        session: ChatSession,
        *,
        clear_options: bool = False,
        busy: bool = False,
        draft: tuple[dict[str, Any], str] | None = None,
    ) -> tuple[Any, ...]:
        """chatbot, input box, session, status line, options, verdict rows, case id, viewer (3).

        ``draft``: what the input box and the options box are filled with, else they are emptied.
        """
        box = gr.MultimodalTextbox(value=draft[0] if draft else None, interactive=not busy)
        options = draft[1] if draft else "" if clear_options else gr.skip()
        # Rows and viewer change when a question starts (rows locked) or ends, not on each step.
        changed = not busy or clear_options
        return (
            list(session.history),
            box,
            session,
            case_status(session),
            options,
            verdict_rows(self.answers(session), busy=busy) if changed else gr.skip(),
            session.thread_id or "",
            *(show(session.images, session.windows) if changed else (gr.skip(),) * 3),
        )

    # --- verdicts -----------------------------------------------------------------------------

    def answers(self, session: ChatSession) -> list[dict[str, Any]]:
        """One entry per answered question of the case, with the verdict that counts now."""
        store = self.runtime.store
        verdicts = store.latest_verdicts(session.run_ids)
        out = []
        for n, run_id in enumerate(session.run_ids, start=1):
            run = store.get_run(run_id)
            if run is None:
                continue
            attending = next((st for st in run.steps if st.role == "attending"), None)
            names = {st.role: self.name_policy(st.policy_version_id) for st in run.steps}
            verdict = verdicts.get(run_id)
            out.append(
                {
                    "n": n,
                    "run_id": run_id,
                    "question": run.question,
                    "answer": run.answer or "",
                    "status": run.status,
                    "credit": answer_credit(attending.model_id, names) if attending else "",
                    "verdict": None if verdict is None else verdict.value >= 1.0,
                    "right_answer": verdict.answer if verdict else None,
                }
            )
        return out

    def verdict(
        self, run_id: str, correct: bool, right_answer: str | None, session: ChatSession
    ) -> tuple[Any, ...]:
        """Record a clinician's verdict on one answer of the case (the latest one counts)."""
        if session.running:
            return gr.skip(), "⏳ A question is being answered: give verdicts once it has finished."
        if run_id not in session.run_ids:
            return gr.skip(), "⚠️ That answer is not part of the case on screen."
        run = self.runtime.store.get_run(run_id)
        if run is not None and run.status != "ok":
            return gr.skip(), f"⚠️ Run `{run_id}` {_UNANSWERED[run.status]}: it has no answer to judge."
        try:
            record_verdict(
                self.runtime.store, run_id, correct=correct, answer=None if correct else right_answer
            )
        except FeedbackError as exc:
            return gr.skip(), f"⚠️ {as_text(str(exc))}"
        n = session.run_ids.index(run_id) + 1
        given = "" if correct else (right_answer or "").strip()
        extra = f" (right answer: {as_text(given)})" if given else ""
        verdict = "correct" if correct else "wrong"
        note = f"Recorded **{verdict}**{extra} for answer {n} (run `{run_id}`). Thank you."
        return verdict_rows(self.answers(session), busy=False), note

    # --- cases --------------------------------------------------------------------------------

    def new_case(self, message: dict[str, Any] | None = None) -> tuple[Any, ...]:
        """A fresh case; files attached but never sent leave the upload cache now."""
        take_uploads(list((message or {}).get("files") or []))
        session = ChatSession()
        return (*self._outputs(session, clear_options=True), "")

    def sample_case(self, message: dict[str, Any] | None, shown: int) -> tuple[Any, ...]:
        """A fresh case whose input holds sample case number ``shown``, not sent: its image attached
        (staged in the upload cache as an upload is, and deleted the same way), question, options."""
        take_uploads(list((message or {}).get("files") or []))
        case = make_case(shown, seed=SAMPLE_SEED)
        image = stage_upload(f"{case.case_id}.png", case.images[0])
        draft = ({"text": case.question, "files": [str(image)]}, "\n".join(case.options))
        return (*self._outputs(ChatSession(sample=case), draft=draft), "", shown + 1)

    def open_case(self, thread_id: str | None) -> tuple[Any, ...]:
        """Reopen a stored case: its turns, images and verdicts; follow-ups continue it."""
        thread_id = (thread_id or "").strip()
        runs = case_runs(self.runtime.store, thread_id) if thread_id else []
        session = ChatSession()
        if not runs:
            note = f"⚠️ No stored case “{as_text(thread_id)}”; starting a new one." if thread_id else ""
            return (*self._outputs(session, clear_options=True), note)
        session.thread_id = thread_id
        shown: list[str] = []
        missing = False
        for run in runs:
            data = run_to_dict(run)
            session.history.append(question_bubble(data["question"], list(data["options"] or [])))
            if data["images"] != shown:
                shown = data["images"]
                loaded = self.runtime.stored_images(shown)
                missing = missing or len(loaded) < len(shown)
                session.history += [self._preview(img) for img in loaded]
                session.images = loaded
            transcript = Transcript(self.name_policy)
            for st in data["steps"]:
                transcript.on_event({"event": "step_finished", "record": st})
            transcript.on_event({"event": "run_finished", **data})
            session.history += transcript.messages
            if data["gold_answer"] and data["status"] == "ok":
                session.history.append(
                    right_answer(data["answer"], data["gold_answer"], data["options"] or [])
                )
            session.run_ids.append(run.id)
        note = "Case reopened."
        if missing:
            session.images = []
            note += " Its images are stored as hashes only: attach them again to ask a follow-up."
        return (*self._outputs(session, clear_options=True), note)

    def open_from_url(self, request: gr.Request) -> tuple[Any, ...]:
        """On page load: reopen the case the address names (``?case=``), if any."""
        case = (request.query_params.get("case") if request else None) or ""
        if not case:
            return tuple(gr.skip() for _ in range(CASE_OUTPUTS))
        return self.open_case(case)

    def recent_choices(self, recent_json: str | None) -> Any:
        """The recent cases this browser remembers, named by their first question (known ones only)."""
        try:
            recent = [c for c in json.loads(recent_json or "[]") if isinstance(c, str)]
        except ValueError:
            recent = []
        choices = []
        for case in recent[:10]:
            first = self.runtime.store.get_run(case)  # a case's id is its first run's id
            if first is not None:
                choices.append((f"{first.question[:60]} · {case[:8]}", case))
        return gr.Dropdown(choices=choices, value=None, visible=bool(choices))


@dataclass
class ChatTab:
    """The components and handlers other tabs and the page wire to."""

    session: gr.State
    open_trace: gr.Button
    case_outputs: list[Any]
    open_case: Any
    open_from_url: Any
    recent: gr.Dropdown
    recent_json: gr.Textbox
    recent_choices: Any


# Why a run has no answer to give a verdict on, by its status (every status but ok).
_UNANSWERED = {"error": "failed", "interrupted": "was interrupted", "running": "is still running"}


def _verdict_button(label: str, kind: str, run_id: str, busy: bool, **style: Any) -> gr.Button:
    """✓ Correct or ✗ Wrong for one run; its key names its listener too (see :func:`_verdict_row`)."""
    return gr.Button(
        label,
        size="sm",
        scale=0,
        min_width=100,
        interactive=not busy,
        elem_classes=[f"verdict-{kind}"],
        key=f"{kind}-{run_id}",
        **style,
    )


def _verdict_row(
    controller: ChatController, item: dict[str, Any], busy: bool, session: gr.State, outputs
) -> None:
    """One answer's verdict controls: ✓ Correct, ✗ Wrong with an optional right answer, copy.

    Keyed by the run, so a re-render keeps the row's handlers: a click sent just before the rows
    re-render still reaches its handler instead of one the render has removed.
    """
    n, run_id = item["n"], item["run_id"]
    if item["status"] != "ok":  # no answer to judge: no verdict controls
        with gr.Row(elem_id=f"verdict-{n}", elem_classes=["verdict-row"]):
            gr.Markdown(
                f"**Answer {n}:** —  \n<sub>no verdict: the run {_UNANSWERED[item['status']]}</sub>",
                elem_classes=["verdict-text"],
            )
        return
    if item["verdict"] is None:
        current = "no verdict yet"
    else:
        current = "marked **correct**" if item["verdict"] else "marked **wrong**"
        if item["right_answer"]:
            current += f" (right answer: {as_text(item['right_answer'])})"
    with gr.Row(equal_height=True, elem_id=f"verdict-{n}", elem_classes=["verdict-row"]):
        gr.Markdown(
            f"**Answer {n}:** {as_text(item['answer']) or '—'}  \n<sub>{item['credit']} · {current}</sub>",
            elem_classes=["verdict-text"],
        )
        ok = _verdict_button("✓ Correct", "correct", run_id, busy)
        bad = _verdict_button("✗ Wrong", "wrong", run_id, busy, variant="stop")
        right = gr.Textbox(
            show_label=False,
            container=False,
            placeholder="right answer (optional, with ✗ Wrong)",
            interactive=not busy,
            elem_classes=["verdict-answer"],
            scale=2,
            key=f"right-{run_id}",
        )
        copy = gr.Button(
            "Copy answer",
            size="sm",
            scale=0,
            min_width=110,
            elem_classes=["copy-answer"],
            key=f"copy-{run_id}",
        )
    private = {"api_visibility": "private"}
    ok.click(partial(controller.verdict, run_id, True, None), session, outputs, key=ok.key, **private)
    bad.click(partial(controller.verdict, run_id, False), [right, session], outputs, key=bad.key, **private)
    answer = json.dumps(item["answer"])
    copy.click(None, None, None, js=f"() => navigator.clipboard.writeText({answer})", key=f"copy-{run_id}")


def build_chat_tab(runtime: Runtime, ui: UISettings, previews: Path) -> ChatTab:
    """Render the chat tab's components inside the current ``gr.Tab``; image previews go to ``previews``."""
    controller = ChatController(runtime, ui, previews)
    session = gr.State(ChatSession())
    verdicts = gr.State(verdict_rows([], busy=False))
    with gr.Row(elem_id="chat-layout"):
        with gr.Column(scale=3, min_width=300):
            chatbot = gr.Chatbot(
                label="Case",
                height=520,
                elem_id="case-chat",
                feedback_options=None,
                buttons=[],
                placeholder="Attach one or more images (PNG, JPEG, TIFF, BMP, WebP or DICOM), "
                "type a question, press Enter. No image at hand? *Try a sample case* below.",
            )
            box = gr.MultimodalTextbox(
                elem_id="case-input",
                file_types=None,  # any name: uploads are checked by their content
                file_count="multiple",
                placeholder="Question about the image(s)… (follow-up questions continue the case)",
                show_label=False,
                autofocus=True,
            )
            options = gr.Textbox(
                label="Options (optional, one per line)",
                placeholder="leave empty for an open question; e.g. A) Normal",
                lines=3,
                elem_id="case-options",
            )
            status = gr.Markdown(case_status(ChatSession()), elem_id="case-status")
        with gr.Column(scale=2, min_width=280):
            viewer = build_viewer()
    gr.Markdown("#### Verdicts on the answers (the latest verdict on an answer counts)")
    note = gr.Markdown(elem_id="fb-status")
    verdict_outputs = [verdicts, note]

    @gr.render(inputs=verdicts)
    def _verdicts(rows: dict[str, Any]) -> None:
        if not rows["answers"]:
            gr.Markdown("_No answers yet._", elem_id="verdicts-empty")
        for item in rows["answers"]:
            _verdict_row(controller, item, rows["busy"], session, verdict_outputs)

    with gr.Row():
        open_trace = gr.Button("Open in Traces", elem_id="open-trace", size="md", scale=0, min_width=140)
        new = gr.Button("New case", elem_id="new-case", size="md", scale=0, min_width=110)
        sample = gr.Button("Try a sample case", elem_id="sample-case", size="md", scale=0, min_width=170)
    samples_shown = gr.State(0)  # this tab's clicks on "Try a sample case": the next one's number
    recent = gr.Dropdown([], label="Recent cases (this browser)", elem_id="recent-cases", visible=False)
    case_id = gr.Textbox(visible="hidden", elem_id="case-id")
    recent_json = gr.Textbox(visible="hidden", elem_id="recent-json")

    outputs = [chatbot, box, session, status, options, verdicts, case_id, *viewer.outputs]
    box.submit(
        controller.respond,
        [box, options, session],
        outputs,
        api_name="ask",
        concurrency_limit=None,  # every asker sees their question at once; CaseQueue limits the runs
    )
    # A new question clears the verdict note (a refused right answer's warning among them).
    box.submit(None, None, note, js="() => ''")
    case_outputs = [*outputs, note]
    assert len(case_outputs) == CASE_OUTPUTS
    pick = [viewer.image, viewer.preset]
    for control in pick:
        control.input(
            lambda label, preset, s: show(
                s.images, s.windows, int(label.split()[-1]) - 1 if label else 0, preset
            ),
            [*pick, session],
            viewer.outputs,
            api_visibility="private",
        )
    new.click(controller.new_case, box, case_outputs, api_name="new_case")
    sample.click(
        controller.sample_case, [box, samples_shown], [*case_outputs, samples_shown], api_name="sample_case"
    )
    recent.input(controller.open_case, recent, case_outputs, api_visibility="private")
    case_id.change(None, case_id, None, js=CASE_URL_JS)
    case_id.change(
        controller.recent_choices, recent_json, recent, js=RECENT_CASES_JS, api_visibility="private"
    )
    return ChatTab(
        session=session,
        open_trace=open_trace,
        case_outputs=case_outputs,
        open_case=controller.open_case,
        open_from_url=controller.open_from_url,
        recent=recent,
        recent_json=recent_json,
        recent_choices=controller.recent_choices,
    )
