"""The agents: triage, one specialist, attending. Each is one model call plus a tolerant parse."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.config import get_stream_writer
from langgraph.runtime import Runtime
from langgraph.types import Send

from data.answers import answer_key, match_option
from graph import parse, prompts
from graph.context import GraphContext
from graph.protocol import ChatRequest, Completion
from graph.state import CaseState, SpecialistTask, StepRecord

log = logging.getLogger(__name__)


def _call(
    ctx: GraphContext,
    *,
    node: str,
    role: str,
    messages: list[dict[str, Any]],
    image_hashes: Sequence[str],
    specialty: str | None = None,
) -> tuple[Completion, StepRecord]:
    """One model call for ``role``, announced on the custom stream, returned with its step record."""
    writer = get_stream_writer()
    writer({"event": "step_started", "node": node, "role": role, "specialty": specialty})
    started = time.time()
    images = [ctx.resolve_image(h) for h in image_hashes]
    request = ChatRequest(messages=messages, images=images, sampling=ctx.sampling_for(role))
    (completion,) = ctx.backends[role].generate([request])
    # What the call spent outside the model (image loading, queueing, batching, pre/post-processing).
    wait = max(0.0, time.time() - started - completion.latency_s)
    record: StepRecord = {
        "node": node,
        "role": role,
        "specialty": specialty,
        "messages": messages,
        "image_refs": list(image_hashes),
        "completion": completion.text,
        "token_ids": completion.token_ids,
        "logprobs": completion.logprobs,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "latency_s": completion.latency_s,
        "wait_s": wait,
        "batch_id": completion.batch_id,
        "batch_size": completion.batch_size,
        "model_id": completion.model_id,
        "started_at": started,
    }
    return completion, record


def _finish(record: StepRecord, parsed: dict[str, Any], status: str) -> None:
    record["parsed"] = parsed
    record["parse_status"] = status
    # The trajectory travels on the custom stream, not in the checkpointed state: the caller
    # persists what finished even when a sibling node fails later.
    get_stream_writer()({"event": "step_finished", "record": record})


def triage(state: CaseState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """Choose the specialists to consult (triage's picks first, a fixed fallback order after)."""
    ctx = runtime.context
    question, options = state["question"], state.get("options", [])
    hashes = state.get("image_hashes", [])
    history = state.get("history", [])
    messages = prompts.triage_messages(question, options, len(hashes), history)
    completion, record = _call(ctx, node="triage", role="triage", messages=messages, image_hashes=hashes)
    parsed = parse.parse_triage(completion.text)
    chosen = parse.choose_specialists(parsed.specialties, ctx.n_specialists)
    if parsed.status == "failed":
        log.info("triage output unusable (%s); consulting fallback %s", parsed.error, chosen)
    _finish(record, {**asdict(parsed), "consulted": chosen}, parsed.status)
    return {
        "specialties": chosen,
        "triage_status": parsed.status,
        "opinions": None,
        "messages": [
            HumanMessage(content=prompts.format_question(question, options), name="case"),
            AIMessage(content=completion.text, name="triage"),
        ],
    }


def route_to_specialists(state: CaseState) -> list[Send]:
    """Fan out: one ``Send`` per chosen specialty, run in parallel."""
    return [
        Send(
            "specialist",
            SpecialistTask(
                specialty=s,
                question=state["question"],
                options=state.get("options", []),
                image_hashes=state.get("image_hashes", []),
                history=state.get("history", []),
            ),
        )
        for s in state["specialties"]
    ]


def specialist(task: SpecialistTask, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """One specialist's opinion from its specialty."""
    ctx, specialty = runtime.context, task["specialty"]
    messages = prompts.specialist_messages(
        specialty, task["question"], task["options"], len(task["image_hashes"]), task["history"]
    )
    completion, record = _call(
        ctx,
        node="specialist",
        role="specialist",
        messages=messages,
        image_hashes=task["image_hashes"],
        specialty=specialty,
    )
    parsed = parse.parse_think_answer(completion.text)
    _finish(record, asdict(parsed), parsed.status)
    opinion = {"specialty": specialty, "text": completion.text, "answer": parsed.answer}
    return {
        "opinions": [opinion],
        "messages": [AIMessage(content=completion.text, name=f"specialist-{specialty}")],
    }


def attending(state: CaseState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """Integrate the opinions and the image into the final answer."""
    ctx = runtime.context
    question, options = state["question"], state.get("options", [])
    hashes = state.get("image_hashes", [])
    order = {s: i for i, s in enumerate(state.get("specialties", []))}
    opinions = sorted(state.get("opinions", []), key=lambda o: order.get(o["specialty"], len(order)))
    messages = prompts.attending_messages(
        question,
        options,
        len(hashes),
        [(o["specialty"], o["text"]) for o in opinions],
        state.get("history", []),
    )
    completion, record = _call(
        ctx, node="attending", role="attending", messages=messages, image_hashes=hashes
    )
    parsed = parse.parse_think_answer(completion.text)
    letter = match_option(parsed.answer, options) if options else None
    _finish(record, {**asdict(parsed), "option": letter}, parsed.status)
    return {
        "answer": parsed.answer,
        "think": parsed.think,
        "answer_status": parsed.status,
        "history": [(question, parsed.answer)],
        "messages": [AIMessage(content=completion.text, name="attending")],
    }


# --- baselines (graph/build.py modes) -----------------------------------------------------------


def fixed_panel(state: CaseState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """The ``static`` baseline's stand-in for triage: the same specialists for every case."""
    ctx = runtime.context
    return {
        "specialties": parse.choose_specialists(ctx.mode.specialists, ctx.n_specialists),
        "triage_status": None,
        "opinions": None,
    }


def vote(state: CaseState, runtime: Runtime[GraphContext]) -> dict[str, Any]:
    """The ``vote`` baseline: the attending prompt (no opinions) sampled N times, majority answer.

    Every sample is a stored attending step. Samples vote with what they answer
    (:func:`data.answers.answer_key`: the option they name, or without options their normalised
    answer); ties go to the answer voted first. With no usable vote the first sample's answer stands.
    """
    ctx = runtime.context
    question, options = state["question"], state.get("options", [])
    hashes = state.get("image_hashes", [])
    messages = prompts.attending_messages(question, options, len(hashes), [], state.get("history", []))
    samples: list[tuple[parse.ParsedAnswer, str | None]] = []
    for _ in range(ctx.mode.votes):
        completion, record = _call(ctx, node="vote", role="attending", messages=messages, image_hashes=hashes)
        parsed = parse.parse_think_answer(completion.text)
        key = answer_key(parsed.answer, options)
        _finish(record, {**asdict(parsed), "option": key if options else None}, parsed.status)
        samples.append((parsed, key))
    keys = [k for _, k in samples if k is not None]
    winner = max(keys, key=lambda k: (keys.count(k), -keys.index(k))) if keys else None
    chosen = next((p for p, k in samples if k == winner), samples[0][0])
    return {
        "specialties": [],
        "answer": chosen.answer,
        "think": chosen.think,
        "answer_status": chosen.status,
        "history": [(question, chosen.answer)],
        "messages": [AIMessage(content=chosen.answer, name="attending")],
    }
