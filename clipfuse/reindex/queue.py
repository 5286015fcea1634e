"""``clipfuse reindex --queue``: the re-index runs in the queue workers, one step per message.

Why in the workers and not in the command: the workers hold the engine (an embedded store,
Qdrant Edge or qdrant-client's local mode, is open in one process only, so a command
cannot read the store a worker holds) and the GPU, and they apply the producer's updates
and deletes. A step message goes through the same queue and the same task as the updates
(``clipfuse.ingest``, ``{"op": "reindex", ...}``), so the steps interleave with the
updates in the order they were sent, and each step is the in-process :class:`Reindexer`'s
own code:

1. ``prepare`` (``seq`` 0): plan (``--dry-run`` stops here), create the new index, record it
   as ``building``; the worker's writer re-reads the alias, so the updates that follow reach
   both indexes.
2. ``copy`` (``seq`` 1, 2, ...): one page of the old index (``page_size`` documents from
   ``offset``), re-embedded into the new one with the new model
   (:meth:`Reindexer.copy_page`); then the next page's message is sent, behind whatever the
   producer sent meanwhile.
3. ``finish``: verify (repairing what an update made stale), the gate when asked, the swap.

The command only sends the first message and waits on the job's status, a Redis hash
``clipfuse:<index>:reindex`` in the workers' state store (the dead letters' Redis), which
the steps update: progress, per-stage seconds, rejections, the verification, the gate's
table, the outcome. Every step is safe to repeat: a worker killed during one gets the
message again (late acknowledgement) and a step already done (its ``seq`` recorded) or of
another job (a newer ``clipfuse reindex --queue`` took over) is dropped. Rerunning the
command after anything resumes the same building index without re-embedding what is done.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipfuse.errors import BackendUnavailable, ClipfuseError
from clipfuse.schemas import IngestReport, Rejection

if TYPE_CHECKING:
    import redis

    from clipfuse.embedding import Embedder
    from clipfuse.reindex.job import Reindexer
    from clipfuse.reindex.writer import AliasWriter
    from clipfuse.settings import Settings

__all__ = ["REINDEX_OP", "QueueReindexer", "ReindexSpec", "ReindexStatus", "run_queued"]

log = logging.getLogger(__name__)

REINDEX_OP = "reindex"
#: rejections kept in the status (the count is always exact)
MAX_REJECTIONS_KEPT = 1000


@dataclass(frozen=True)
class ReindexSpec:
    """What every step message of one queued re-index carries."""

    job: str
    model: str
    pretrained: str | None = None
    images_root: str | None = None
    gate: tuple[str, str] | None = None
    metric: str = "ndcg@10"
    gate_config: str = "RRF k=60"
    tolerance: float = 0.01
    page_size: int = 256
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReindexSpec:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if fields.get("gate") is not None:
            fields["gate"] = tuple(fields["gate"])
        return cls(**fields)


def step_message(spec: ReindexSpec, step: str, seq: int, offset: Any = None) -> dict[str, Any]:
    if offset is not None and not isinstance(offset, (str, int)):
        offset = str(offset)  # a point id (uuid): sent as text, read back by the engine as text
    return {"op": REINDEX_OP, "job": spec.to_json(), "step": step, "seq": seq, "offset": offset, "attempt": 0}


class ReindexStatus:
    """The status of the queued re-index of one alias: a Redis hash the steps update and the command reads."""

    def __init__(self, client: redis.Redis, index: str, *, prefix: str = "clipfuse") -> None:
        self.client = client
        self.key = f"{prefix}:{index}:reindex"

    @classmethod
    def from_settings(cls, settings: Settings) -> ReindexStatus:
        import redis

        from clipfuse.workers.deadletters import state_url

        client = redis.Redis.from_url(state_url(settings), socket_connect_timeout=5, socket_timeout=30)
        return cls(client, settings.index)

    def read(self) -> dict[str, Any]:
        raw = self.client.hgetall(self.key)
        return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}

    def update(self, **fields: Any) -> None:
        fields["updated"] = time.time()
        self.client.hset(self.key, mapping={k: json.dumps(v, default=str) for k, v in fields.items()})

    def start(self, spec: ReindexSpec) -> None:
        """A new job: the fields of any earlier one are dropped (its remaining messages will be ignored)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.key)
        pipe.hset(
            self.key,
            mapping={
                k: json.dumps(v)
                for k, v in {
                    "job": spec.job,
                    "spec": spec.to_json(),
                    "state": "queued",
                    "seq": -1,
                    "done": 0,
                    "copied": 0,
                    "skipped": 0,
                    "rejected": [],
                    "rejected_count": 0,
                    "timings": {},
                    "updated": time.time(),
                }.items()
            },
        )
        pipe.execute()

    def close(self) -> None:
        self.client.close()


class QueueReindexer:
    """Runs the step messages of queued re-indexes in one worker process.

    ``writer``: the worker's :class:`AliasWriter` (its engine client and its model cache
    are shared, so a store is open once and each model loads once per process);
    ``publish(message)`` sends a message to the workers' queue.
    """

    def __init__(
        self,
        settings: Settings,
        writer: AliasWriter,
        *,
        embedders: dict[str, Embedder],
        publish: Callable[[dict[str, Any]], None],
        status: ReindexStatus | None = None,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.embedders = embedders
        self.publish = publish
        self.status = status or ReindexStatus.from_settings(settings)
        self._jobs: dict[str, Reindexer] = {}

    def _job(self, spec: ReindexSpec) -> Reindexer:
        job = self._jobs.get(spec.job)
        if job is None:
            from clipfuse.factory import build_embedder, build_indexer, embedder_for_model
            from clipfuse.reindex.job import Reindexer

            for old in self._jobs.values():
                old.close()
            self._jobs.clear()
            new = build_embedder(
                self.settings.model.model_copy(update={"name": spec.model, "pretrained": spec.pretrained})
            )
            new = self.embedders.setdefault(new.model_id, new)
            base_dir = Path(spec.images_root) if spec.images_root else None

            def indexer_for(backend: Any, model_id: str | None) -> Any:
                embedder = embedder_for_model(self.settings, model_id, self.embedders)
                return build_indexer(self.settings, backend=backend, embedder=embedder, base_dir=base_dir)

            job = self._jobs[spec.job] = Reindexer(
                self.writer.root,
                self.settings.index,
                model_id=new.model_id,
                indexer_for=indexer_for,
                page_size=spec.page_size,
            )
        return job

    def step(self, message: Mapping[str, Any]) -> None:
        """Run one step. Raises only what the batch loop retries (the engine unreachable); any other
        error ends the job with state ``failed`` and its reason in the status."""
        spec = ReindexSpec.from_json(message.get("job") or {})
        seq, step = int(message.get("seq", 0)), str(message.get("step"))
        status = self.status.read()
        if status.get("job") != spec.job:
            log.warning(
                "re-index step %s of job %s dropped: job %s is the current one", step, spec.job, status.get("job")
            )
            return
        if int(status.get("seq", -1)) >= seq or status.get("state") in ("swapped", "refused", "failed", "dry-run"):
            log.info("re-index step %d (%s) of job %s already done: dropped", seq, step, spec.job)
            return
        started = time.perf_counter()
        try:
            follow = self._run(spec, step, seq, message.get("offset"), status)
        except BackendUnavailable:
            raise
        except Exception as e:
            from clipfuse.reindex.job import SwapRefused

            state = "refused" if isinstance(e, SwapRefused) else "failed"
            log.log(
                logging.WARNING if state == "refused" else logging.ERROR,
                "re-index %s: %s",
                state,
                e,
                exc_info=state == "failed",
            )
            self.status.update(
                state=state, error=f"{e}" if isinstance(e, ClipfuseError) else f"{type(e).__name__}: {e}", seq=seq
            )
            self._drop(spec)
            return
        finally:
            self.writer.live(refresh=True)  # the writer sees a prepare or a swap at once
        timings = dict(status.get("timings") or {})
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - started
        if follow is not None:  # sent before this step is recorded as done: a kill in between repeats the step
            self.publish(follow)  # (harmless) rather than ending the chain
        self.status.update(seq=seq, timings=timings)

    def _run(
        self, spec: ReindexSpec, step: str, seq: int, offset: Any, status: dict[str, Any]
    ) -> dict[str, Any] | None:
        job = self._job(spec)
        if step == "prepare":
            plan = job.plan()
            self.status.update(
                state="running", step=step, plan=plan.lines(), total=plan.source_documents, target=plan.target
            )
            if spec.dry_run:
                self.status.update(state="dry-run")
                self._drop(spec)
                return None
            job.prepare()
            log.info("re-index %s: building %s with %s", spec.job, plan.target, spec.model)
            return step_message(spec, "copy", seq + 1, None)
        if step == "copy":
            report, read, skipped, next_offset = job.copy_page(offset)
            kept = list(status.get("rejected") or [])
            room = MAX_REJECTIONS_KEPT - len(kept)
            kept.extend(json.loads(r.model_dump_json()) for r in report.rejected[: max(0, room)])
            done = int(status.get("done", 0)) + read
            self.status.update(
                step=step,
                done=done,
                copied=int(status.get("copied", 0)) + report.indexed,
                skipped=int(status.get("skipped", 0)) + skipped,
                rejected=kept,
                rejected_count=int(status.get("rejected_count", 0)) + len(report.rejected),
            )
            log.info("re-index: %d of %d documents done", done, status.get("total", 0))
            if next_offset is not None and read:
                return step_message(spec, "copy", seq + 1, next_offset)
            return step_message(spec, "finish", seq + 1)
        if step == "finish":
            self._finish(spec, job)
            return None
        raise ClipfuseError(f"unknown re-index step {step!r}")

    def _finish(self, spec: ReindexSpec, job: Reindexer) -> None:
        from clipfuse.reindex.job import SwapRefused

        self.status.update(step="verify")
        verified = job.verify()
        self.status.update(verify=verified.summary())
        if spec.gate is not None:
            self.status.update(step="gate")
            result = self._gate(spec, job)
            self.status.update(gate=result.to_json())
            if not result.passed:
                raise SwapRefused(
                    result.verdict() + "; the new index is kept (still written to): rerun with another --tolerance "
                    "to swap, or `clipfuse alias abort` to drop it"
                )
        moved = job.swap(verified)
        self.status.update(state="swapped", step="swap", record=moved.to_json())
        log.info("re-index %s: swapped %s -> %s", spec.job, moved.alias, moved.target)
        self._drop(spec)

    def _gate(self, spec: ReindexSpec, job: Reindexer) -> Any:
        from clipfuse.eval.loaders import load_qrels, load_queries
        from clipfuse.factory import build_image_loader, embedder_for_model
        from clipfuse.reindex.gate import run_gate

        assert spec.gate is not None
        record = job.record()
        assert record is not None and record.building is not None
        old_backend = job.backend(record.target)
        old_info = old_backend.index_info()
        queries = Path(spec.gate[0])
        return run_gate(
            (old_backend, embedder_for_model(self.settings, old_info.model if old_info else None, self.embedders)),
            (job.backend(record.building), self.embedders[job.model_id]),
            load_queries(queries),
            load_qrels(Path(spec.gate[1])),
            metric=spec.metric,
            config=spec.gate_config,
            tolerance=spec.tolerance,
            image_loader=build_image_loader(self.settings.images, base_dir=queries.parent),
        )

    def _drop(self, spec: ReindexSpec) -> None:
        job = self._jobs.pop(spec.job, None)
        if job is not None:
            job.close()

    def close(self) -> None:
        for job in self._jobs.values():
            job.close()
        self._jobs.clear()
        self.status.close()


# -- the command's side --------------------------------------------------------------------------
def run_queued(
    settings: Settings,
    spec_fields: Mapping[str, Any],
    *,
    timeout_s: float = 24 * 3600,
    poll_s: float = 0.5,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    app: Any = None,
) -> dict[str, Any]:
    """Send the first step of a re-index to the workers' queue and wait for its outcome.

    Returns the summary ``run_reindex`` returns (plan, copied, skipped, verify, gate, record,
    timings, outcome); raises :class:`SwapRefused` when the workers refused the swap and
    :class:`ClipfuseError` when the job failed or did not end within ``timeout_s`` (it goes
    on in the workers: run the command again to wait for it, or `clipfuse alias abort`).
    """
    from clipfuse.reindex.job import SwapRefused
    from clipfuse.workers.app import INGEST_TASK, create_app

    spec = ReindexSpec(job=uuid.uuid4().hex, **spec_fields)
    status = ReindexStatus.from_settings(settings)
    own_app = app is None
    app = app or create_app(settings)
    try:
        status.start(spec)
        app.send_task(INGEST_TASK, kwargs=step_message(spec, "prepare", 0), queue=settings.broker.queue)
        started = time.monotonic()
        shown_plan = False
        last_done = -1
        while True:
            current = status.read()
            if current.get("job") != spec.job:
                raise ClipfuseError(f"another re-index of {settings.index!r} took over (job {current.get('job')})")
            if current.get("plan") and not shown_plan:
                from clipfuse.console import err

                shown_plan = True
                for line in current["plan"]:
                    err.print(f"[dim]plan:[/] {line}")
            if current.get("done", 0) != last_done:
                last_done = current.get("done", 0)
                log.info("re-index (queue): %d of %s documents done", last_done, current.get("total", "?"))
            if on_progress is not None:
                on_progress(current)
            state = current.get("state")
            if state in ("swapped", "refused", "failed", "dry-run"):
                break
            if time.monotonic() - started > timeout_s:
                raise ClipfuseError(
                    f"the re-index did not end within {timeout_s:.0f}s (state {state}, {current.get('done', 0)} of "
                    f"{current.get('total', '?')} documents): it goes on in the workers; run the command again to "
                    "resume and wait, or `clipfuse alias abort`"
                )
            time.sleep(poll_s)
    finally:
        status.close()
        if own_app:
            app.close()
    summary: dict[str, Any] = {
        "alias": settings.index,
        "model": spec.model,
        "job": spec.job,
        "plan": current.get("plan", []),
        "outcome": {"swapped": "swapped", "dry-run": "dry-run"}.get(state, state),
        "copied": current.get("copied", 0),
        "skipped": current.get("skipped", 0),
        "rejected": current.get("rejected_count", 0),
        "report": IngestReport(
            indexed=int(current.get("copied", 0)),
            seconds=float((current.get("timings") or {}).get("copy", 0.0)),
            rejected=[Rejection.model_validate(r) for r in current.get("rejected") or []],
        ),
        "timings": current.get("timings", {}),
        "verify": current.get("verify"),
        "gate": current.get("gate"),
        "record": current.get("record"),
    }
    copy_s = summary["timings"].get("copy")
    summary["docs_per_s"] = summary["copied"] / copy_s if copy_s and summary["copied"] else None
    if summary["gate"]:
        from clipfuse.console import console
        from clipfuse.reindex.cli import gate_table

        gate = summary["gate"]
        console.print(gate_table(gate))
        if gate["passed"]:
            console.print(
                f"gate passed: {gate['metric']} of {gate['config']} {gate['new']:.4f} (new) vs {gate['old']:.4f} "
                f"(old), {gate['new'] - gate['old']:+.4f}, tolerance {gate['tolerance']:g}"
            )
    if state == "refused":
        raise SwapRefused(str(current.get("error")))
    if state == "failed":
        raise ClipfuseError(f"the re-index failed in the worker: {current.get('error')}")
    return summary
