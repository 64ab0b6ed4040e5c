"""Runs exported as OpenTelemetry traces (``[tracing] otlp_endpoint``; off by default).

One trace per run, its trace id the run id: a root span for the run, a span per graph node that
ran under it, and under each node the model call (GenAI and OpenInference semantic conventions:
model, tokens in/out, sampling, and, unless privacy is on, the prompt and the completion).

Spans are built from the run's step records once the run is stored and handed to a background
exporter: a run never waits for the receiver and never fails because of it. While the receiver
is unreachable batches are dropped, and one warning says so.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

from data.schema import ROLES

if TYPE_CHECKING:
    from app.config import Settings
    from data.store import RunIn
    from graph.protocol import Sampling

log = logging.getLogger(__name__)

# The OTLP exporter logs every failed attempt; ours says it once (see _WarnOnce).
_EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
RETRY_AFTER_S = 30.0  # after a failed export, batches are dropped for this long before trying again


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a receiver given by its base URL (or already by that URL)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


class _OwnExportsQuiet(logging.Filter):
    """Drops the OTLP exporter's own records while a ``_WarnOnce`` export runs on this thread (it
    warns once itself); the exporter's records from anyone else in the process pass."""

    def __init__(self) -> None:
        super().__init__()
        self.exporting = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.exporting, "on", False)


_QUIET = _OwnExportsQuiet()


class _WarnOnce(SpanExporter):
    """Wraps the OTLP exporter: a failure drops the batch, warns once per process, and pauses
    exporting for ``RETRY_AFTER_S`` (no time spent on a receiver known to be down)."""

    def __init__(self, inner: SpanExporter, url: str) -> None:
        self._inner, self._url = inner, url
        self._down_until = 0.0
        self._warned = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        now = time.monotonic()
        if now < self._down_until:
            return SpanExportResult.FAILURE
        _QUIET.exporting.on = True
        try:
            result = self._inner.export(spans)
        except Exception:  # never let an exporter bug reach the run
            result = SpanExportResult.FAILURE
        finally:
            _QUIET.exporting.on = False
        if result is SpanExportResult.FAILURE:
            self._down_until = time.monotonic() + RETRY_AFTER_S
            if not self._warned:
                self._warned = True
                log.warning(
                    "OpenTelemetry export to %s failed; spans are dropped while it is unreachable "
                    "(runs are unaffected; this is logged once)",
                    self._url,
                )
        elif self._down_until:
            self._down_until = 0.0
            log.info("OpenTelemetry export to %s works again", self._url)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class _RunTraceIds(RandomIdGenerator):
    """Trace ids from run ids (both 128 bits): the trace of run X has id X."""

    def __init__(self) -> None:
        self._next = threading.local()

    def use(self, run_id: str) -> None:
        self._next.value = int(run_id, 16)

    def generate_trace_id(self) -> int:
        value = getattr(self._next, "value", None)
        self._next.value = None
        return value if value is not None else super().generate_trace_id()


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(
        b.get("text", "") if b.get("type") == "text" else f"<{b.get('type')}>"
        for b in content or []
        if isinstance(b, dict)
    )


class RunTracer:
    """Exports stored runs as traces to an OTLP/HTTP receiver, in the background."""

    def __init__(
        self,
        endpoint: str,
        *,
        content: bool,
        service_name: str = "mmedagent",
        timeout_s: float = 5.0,
        max_queue: int = 4096,
        providers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = traces_url(endpoint)
        self.content = content
        self._providers = dict(providers or {})
        self._ids = _RunTraceIds()
        resource = Resource.create({"service.name": service_name, "openinference.project.name": service_name})
        self._provider = TracerProvider(resource=resource, id_generator=self._ids)
        exporter = _WarnOnce(OTLPSpanExporter(endpoint=self.url, timeout=timeout_s), self.url)
        self._provider.add_span_processor(
            BatchSpanProcessor(exporter, max_queue_size=max_queue, schedule_delay_millis=500)
        )
        logging.getLogger(_EXPORTER_LOGGER).addFilter(_QUIET)  # a no-op once added
        self._tracer = self._provider.get_tracer("mmedagent")

    def flush(self, timeout_s: float = 10.0) -> bool:
        return self._provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        self._provider.shutdown()

    def export_run(
        self, run: RunIn, steps: Sequence[Mapping[str, Any]], sampling: Mapping[str, Sampling]
    ) -> None:
        """Queue the spans of one stored run (never raises: a tracing bug must not fail a run)."""
        try:
            self._export(run, steps, sampling)
        except Exception:
            log.warning("could not export run %s as a trace", run.id, exc_info=True)

    def _export(
        self, run: RunIn, steps: Sequence[Mapping[str, Any]], sampling: Mapping[str, Sampling]
    ) -> None:
        assert run.created_at is not None
        start = run.created_at.timestamp()
        end = start + (run.wall_s or 0.0)
        common = {"mmedagent.run_id": run.id, "session.id": run.thread_id}
        root_attrs: dict[str, Any] = {
            **common,
            "openinference.span.kind": "CHAIN",
            "mmedagent.mode": run.mode or "multi",
            "mmedagent.status": run.status,
            "mmedagent.specialties": list(run.specialties),
        }
        if run.case_id:
            root_attrs["mmedagent.case_id"] = run.case_id
        if self.content:
            root_attrs |= {"input.value": run.question, "output.value": run.answer or ""}
        self._ids.use(run.id)
        root = self._tracer.start_span(
            f"mmedagent.{run.mode or 'multi'}", start_time=_ns(start), attributes=root_attrs
        )
        if run.status == "error":
            root.set_status(Status(StatusCode.ERROR, run.error or "the run failed"))
        parent = set_span_in_context(root)
        # One span per node execution: a specialist per specialty; the vote node's samples together.
        executions: dict[tuple[str, str | None], list[Mapping[str, Any]]] = {}
        for st in steps:
            executions.setdefault((st["node"], st.get("specialty")), []).append(st)
        for (name, specialty), calls in executions.items():
            first = calls[0]
            node_attrs = {
                **common,
                "openinference.span.kind": "AGENT",
                "graph.node.id": name,
                "mmedagent.role": first["role"],
                "mmedagent.parse_status": ",".join(c.get("parse_status") or "" for c in calls),
            }
            if specialty:
                node_attrs["mmedagent.specialty"] = specialty
            if first.get("policy_version_id") is not None:
                node_attrs["mmedagent.policy_version_id"] = first["policy_version_id"]
            node_start = float(first.get("started_at") or start)
            node = self._tracer.start_span(
                name, context=parent, start_time=_ns(node_start), attributes=node_attrs
            )
            node_end = node_start
            for st in calls:
                call_start = float(st.get("started_at") or start) + float(st.get("wait_s") or 0.0)
                call_end = call_start + float(st.get("latency_s") or 0.0)
                call = self._tracer.start_span(
                    f"chat {st['model_id']}",
                    context=set_span_in_context(node),
                    kind=SpanKind.CLIENT,
                    start_time=_ns(call_start),
                    attributes=self._call_attributes(st, sampling.get(st["role"]), common),
                )
                call.end(end_time=_ns(call_end))
                node_end = max(node_end, call_end, float(st.get("finished_at") or 0.0))
            node.end(end_time=_ns(node_end))
        root.end(end_time=_ns(end))

    def _call_attributes(
        self, st: Mapping[str, Any], sampling: Sampling | None, common: Mapping[str, Any]
    ) -> dict[str, Any]:
        tokens_in, tokens_out = int(st.get("prompt_tokens") or 0), int(st.get("completion_tokens") or 0)
        attrs: dict[str, Any] = {
            **common,
            # OpenTelemetry GenAI semantic conventions
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": self._providers.get(st["role"], "transformers"),
            "gen_ai.request.model": st["model_id"],
            "gen_ai.response.model": st["model_id"],
            "gen_ai.usage.input_tokens": tokens_in,
            "gen_ai.usage.output_tokens": tokens_out,
            # OpenInference semantic conventions
            "openinference.span.kind": "LLM",
            "llm.model_name": st["model_id"],
            "llm.token_count.prompt": tokens_in,
            "llm.token_count.completion": tokens_out,
            "llm.token_count.total": tokens_in + tokens_out,
            "mmedagent.wait_s": float(st.get("wait_s") or 0.0),
        }
        if sampling is not None:
            params = {"max_new_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                      "top_p": sampling.top_p}  # fmt: skip
            attrs |= {
                "gen_ai.request.max_tokens": sampling.max_new_tokens,
                "gen_ai.request.temperature": sampling.temperature,
                "gen_ai.request.top_p": sampling.top_p,
                "llm.invocation_parameters": json.dumps(params),
            }
        if st.get("batch_id"):
            attrs |= {"mmedagent.batch_id": st["batch_id"], "mmedagent.batch_size": st.get("batch_size") or 1}
        if self.content:
            messages = st.get("messages") or []
            attrs |= {
                "gen_ai.input.messages": json.dumps(messages),
                "gen_ai.output.messages": json.dumps([{"role": "assistant", "content": st["completion"]}]),
                "input.value": json.dumps(messages),
                "input.mime_type": "application/json",
                "output.value": st["completion"],
                "output.mime_type": "text/plain",
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.content": st["completion"],
            }
            for i, m in enumerate(messages):
                attrs[f"llm.input_messages.{i}.message.role"] = m.get("role", "")
                attrs[f"llm.input_messages.{i}.message.content"] = _text_of(m.get("content"))
        return attrs


def make_tracer(settings: Settings) -> RunTracer | None:
    """The tracer the settings ask for; None when ``[tracing] otlp_endpoint`` is not set."""
    cfg = settings.tracing
    if not cfg.otlp_endpoint:
        return None
    content = settings.store_pixels if cfg.content is None else cfg.content
    return RunTracer(
        cfg.otlp_endpoint,
        content=content,
        service_name=cfg.service_name,
        timeout_s=cfg.timeout_s,
        max_queue=cfg.max_queue,
        providers={r: settings.role(r).backend for r in ROLES},
    )
