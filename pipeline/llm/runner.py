"""Generate descriptions for every class x sample: cache first, then concurrent requests.

Each (class, sample) is one chat completion. Cached answers are re-validated and reused;
the rest run concurrently on one asyncio loop (no Ray needed: the work is waiting on HTTP),
at most ``concurrency`` in flight. A failed request is retried with backoff when the failure
is transient (429, 5xx, timeout, connection) and re-asked with another seed when the answer
is invalid, both bounded; each validated answer is cached the moment it arrives.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.config import DescribeConfig
from pipeline.errors import UserError
from pipeline.llm.cache import AnswerCache, cache_key
from pipeline.llm.client import (
    check_transport,
    describe_error,
    endpoint_host,
    is_retryable,
    make_client,
    resolve_api_key,
    retry_delay,
)
from pipeline.llm.prompts import PromptTemplate, render_messages
from pipeline.llm.sets import DescriptionSet
from pipeline.llm.validation import InvalidAnswer, excerpt, parse_answer

__all__ = ["DescribeResult", "generate_descriptions", "request_params", "llm_description_set"]

logger = logging.getLogger(__name__)

Log = Callable[[int, str], None]  # (level, message)


def _log_to(log: Callable[[str], None] | None) -> Log:
    if log is None:
        return logger.log
    return lambda _level, message: log(message)


# Re-asking after an invalid answer with the same seed would, on a deterministic server,
# return the same invalid answer; each re-ask shifts the seed by this much.
_RESEED = 7919


@dataclass
class _Job:
    class_name: str
    sample: int
    messages: list[dict[str, str]]
    key: str


@dataclass
class DescribeResult:
    classes: dict[str, list[str]]  # merged, de-duplicated, in class order
    cached: int = 0  # answers taken from the cache
    new: int = 0  # answers obtained from the endpoint in this run
    requests: int = 0  # HTTP requests made, retries included
    seconds: float = 0.0
    answers: dict[tuple[str, int], list[str]] = field(default_factory=dict)


class _Failure(Exception):
    def __init__(self, job: _Job, reason: str, fatal: bool = False):
        super().__init__(reason)
        self.job, self.reason, self.fatal = job, reason, fatal


def request_params(cfg: DescribeConfig) -> dict[str, Any]:
    """The sampling parameters that shape an answer (part of every cache key)."""
    return {
        "temperature": cfg.temperature,
        "seed": cfg.seed,
        "max_tokens": cfg.max_tokens,
        "n": cfg.descriptions_per_answer,
        "response_format": cfg.response_format,
    }


def _response_format(kind: str, n: int) -> dict | None:
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {
            "type": "object",
            "additionalProperties": False,
            "required": ["descriptions"],
            "properties": {
                "descriptions": {"type": "array", "items": {"type": "string"}, "minItems": n, "maxItems": n}
            },
        }
        return {"type": "json_schema", "json_schema": {"name": "descriptions", "strict": True, "schema": schema}}
    return None


def _redact(text: str, secret: str) -> str:
    if secret:
        text = text.replace(secret, "***")
    return re.sub(r"sk-[A-Za-z0-9_*\-]{6,}", "sk-***", text)


class _Run:
    def __init__(self, cfg: DescribeConfig, cache: AnswerCache, log: Log):
        self.cfg, self.cache, self.log = cfg, cache, log
        self.params = request_params(cfg)
        self.requests = 0
        self.api_key = ""
        self.abort = asyncio.Event()

    def _validate(self, content: str | None, finish_reason: str | None = None) -> list[str]:
        c = self.cfg
        return parse_answer(
            content,
            c.descriptions_per_answer,
            min_words=c.min_words,
            max_words=c.max_words,
            finish_reason=finish_reason,
        )

    def cached(self, job: _Job) -> list[str] | None:
        record = self.cache.get(job.key)
        if record is None:
            return None
        try:  # bounds may have changed since it was cached; an answer that fails them is redone
            return self._validate(record.get("content"))
        except InvalidAnswer:
            return None

    async def ask(self, client, job: _Job, sem: asyncio.Semaphore) -> list[str]:
        c = self.cfg
        failures = invalid = 0
        response_format = _response_format(c.response_format, c.descriptions_per_answer)
        while True:
            seed = None if c.seed is None else c.seed + job.sample + _RESEED * invalid
            kwargs: dict[str, Any] = {
                "model": c.model,
                "messages": job.messages,
                "temperature": c.temperature,
                "max_tokens": c.max_tokens,
            }
            if seed is not None:
                kwargs["seed"] = seed
            if response_format is not None:
                kwargs["response_format"] = response_format
            try:
                async with sem:
                    if self.abort.is_set():  # checked after the wait: others may have queued behind a fatal one
                        raise _Failure(job, "cancelled after another request failed")
                    self.requests += 1
                    response = await client.chat.completions.create(**kwargs)
            except _Failure:
                raise
            except Exception as exc:  # noqa: BLE001 - classified right below
                import openai

                if not isinstance(exc, openai.OpenAIError):
                    raise
                reason = _redact(describe_error(exc), self.api_key)
                if not is_retryable(exc):
                    self.abort.set()  # 4xx (bad key, unknown model): every other request would fail too
                    raise _Failure(job, reason, fatal=True) from None
                failures += 1
                if failures >= c.max_attempts:
                    raise _Failure(job, f"{reason} (gave up after {failures} attempts)") from None
                delay = retry_delay(exc, failures, c.backoff_s, c.max_backoff_s)
                self.log(
                    logging.WARNING,
                    f"[describe] {job.class_name} #{job.sample}: {reason}; retry {failures} in {delay:.2f}s",
                )
                await asyncio.sleep(delay)
                continue
            choice = response.choices[0] if response.choices else None
            content = choice.message.content if choice is not None else None
            try:
                descriptions = self._validate(content, choice.finish_reason if choice is not None else None)
            except InvalidAnswer as exc:
                invalid += 1
                if invalid >= c.max_invalid_answers:
                    shown = _redact(excerpt(content), self.api_key)
                    raise _Failure(job, f"{invalid} invalid answers; last: {exc}; answer: {shown}") from None
                self.log(
                    logging.WARNING, f"[describe] {job.class_name} #{job.sample}: invalid answer ({exc}); asking again"
                )
                continue
            # fsync takes milliseconds; in a thread it does not stall the other requests' I/O.
            await asyncio.to_thread(
                self.cache.put,
                job.key,
                {
                    "class_name": job.class_name,
                    "sample": job.sample,
                    "model": c.model,
                    "params": self.params,
                    "request_seed": seed,
                    "messages": job.messages,
                    "content": content,
                    "descriptions": descriptions,
                    "finish_reason": choice.finish_reason,
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                },
            )
            return descriptions


def _plan(cfg: DescribeConfig, class_names: list[str], template: PromptTemplate) -> list[_Job]:
    params = request_params(cfg)
    jobs = []
    for name in class_names:
        messages = render_messages(template, name, cfg.descriptions_per_answer)
        for sample in range(cfg.samples):
            jobs.append(_Job(name, sample, messages, cache_key(cfg.model, messages, params, sample)))
    return jobs


async def _generate(
    cfg: DescribeConfig, jobs: list[_Job], cache: AnswerCache, refresh: bool, log: Log, result: DescribeResult
) -> None:
    run = _Run(cfg, cache, log)
    todo = []
    for job in jobs:
        hit = None if refresh else run.cached(job)
        if hit is None:
            todo.append(job)
        else:
            result.answers[(job.class_name, job.sample)] = hit
    result.cached = len(jobs) - len(todo)
    host = endpoint_host(cfg.base_url)
    log(
        logging.INFO,
        f"[describe] {len(jobs)} answers: {result.cached} cached, {len(todo)} to request from {host} "
        f"(model {cfg.model}, concurrency {cfg.concurrency}){' [refresh]' if refresh else ''}",
    )
    if not todo:
        return
    check_transport(cfg.base_url, cfg.allow_insecure_http)  # before the key is looked up or sent
    run.api_key = resolve_api_key(cfg.base_url, cfg.api_key_env)
    remaining: dict[str, int] = {}
    for job in todo:
        remaining[job.class_name] = remaining.get(job.class_name, 0) + 1
    done_classes = 0
    sem = asyncio.Semaphore(cfg.concurrency)

    async def one(job: _Job) -> None:
        nonlocal done_classes
        result.answers[(job.class_name, job.sample)] = await run.ask(client, job, sem)
        result.new += 1
        remaining[job.class_name] -= 1
        if remaining[job.class_name] == 0:
            done_classes += 1
            log(
                logging.INFO,
                f"[describe] {job.class_name}: done ({done_classes}/{len(remaining)} classes, "
                f"{result.new}/{len(todo)} new answers)",
            )

    client = make_client(cfg.base_url, run.api_key, cfg.timeout_s, allow_insecure_http=cfg.allow_insecure_http)
    try:
        outcomes = await asyncio.gather(*(one(j) for j in todo), return_exceptions=True)
    finally:
        result.requests = run.requests
        await client.close()
    failures = [o for o in outcomes if isinstance(o, _Failure)]
    others = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, _Failure)]
    if others:
        raise others[0]
    if failures:
        # A fatal failure explains the cancelled ones; show it first and leave those out.
        shown = [f for f in failures if f.fatal] or failures
        lines = [f"class {f.job.class_name!r} (sample {f.job.sample}): {f.reason}" for f in shown[:5]]
        more = f"\n  ... and {len(shown) - 5} more" if len(shown) > 5 else ""
        raise UserError(
            f"describe: {len(failures)} of {len(todo)} requests failed against {host}; "
            f"the {result.new} answers that succeeded are cached and a re-run resumes from them:\n  "
            + "\n  ".join(lines)
            + more
        )


def generate_descriptions(
    cfg: DescribeConfig,
    class_names: list[str],
    template: PromptTemplate,
    cache: AnswerCache,
    *,
    refresh: bool = False,
    log: Callable[[str], None] | None = None,
) -> DescribeResult:
    """Descriptions for each class from ``cfg.samples`` answers; raises UserError on failures.

    Progress goes to the ``pipeline.llm.runner`` logger (retries and re-asks as warnings), or
    to ``log`` when given (every line, as a string).
    """
    if not class_names:
        raise UserError("describe: the class list is empty")
    jobs = _plan(cfg, list(class_names), template)
    result = DescribeResult(classes={})
    start = time.perf_counter()
    try:
        asyncio.run(_generate(cfg, jobs, cache, refresh, _log_to(log), result))
    finally:
        result.seconds = time.perf_counter() - start
    for name in class_names:
        merged: list[str] = []
        for sample in range(cfg.samples):
            for text in result.answers[(name, sample)]:
                if text.lower() not in (m.lower() for m in merged):
                    merged.append(text)
        result.classes[name] = merged
    return result


def llm_description_set(
    name: str, cfg: DescribeConfig, template: PromptTemplate, class_source: str, result: DescribeResult
) -> DescriptionSet:
    """The set with its provenance: what asked, with which prompt and parameters, when."""
    provenance = {
        "source": "llm",
        "model": cfg.model,
        "base_url_host": endpoint_host(cfg.base_url),
        "template": {"name": template.name, "sha256": template.sha256, "file": template.source},
        "classes_from": class_source,
        "params": {
            **request_params(cfg),
            "samples": cfg.samples,
            "min_words": cfg.min_words,
            "max_words": cfg.max_words,
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "answers": {"cached": result.cached, "new": result.new},
        "requests": result.requests,
    }
    return DescriptionSet(name, dict(result.classes), provenance)
