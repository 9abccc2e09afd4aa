"""``fspo serve``: an HTTP API that personalizes one model to many users.

Auth model (see docs/serving.md): admin keys (``--api-key`` / ``FSPO_API_KEY``) may act for any
user and issue per-user keys; a per-user key may act only for its own user. Every user-scoped
route takes the user id from the path (or, for chat completions, the ``user`` field) and checks it
against the key, and every storage call is filtered by that id, so one user's requests can
neither read nor change another user's preferences, nor have them enter their prompt.

OpenAI compatibility (docs/serving.md): ``/v1/chat/completions`` and ``/v1/completions`` answer
with OpenAI's objects (completions without a user: the raw prompt continued, as vLLM does), stream
as server-sent events (``stream=true``), report the prompt tokens served from the user's prefix
cache as ``usage.prompt_tokens_details.cached_tokens``, and return ``n`` (1-8) choices, each
sampled with seed ``seed + i`` (decoded together, in one batch).

Limits (docs/serving.md): the credential is checked before a byte of the body is read, and the body
is counted on the stream (1 MB), so an unauthenticated or chunked upload cannot grow the process.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import StreamingResponse

from fspo.errors import FspoError
from fspo.llm.base import GenerationParams
from fspo.serve.live import BodyGuard, ErrorJSONResponse, bearer_token
from fspo.serve.personalize import Engine, Personalized
from fspo.serve.users import TooManyPreferences, UserStore

MAX_BODY_BYTES = 1_000_000
MAX_PREFS_PER_USER = 1000
# Below this a temperature is treated as 0 (greedy decoding, the limit it approaches); dividing the
# logits by e.g. 1e-300 overflows to inf and sampling from NaN probabilities fails.
MIN_TEMPERATURE = 1e-5
MAX_ROW_ID = 2**63 - 1  # SQLite's largest integer
# 1-64 of these characters, not all dots ("." and ".." would be path segments).
USER_ID_PATTERN = r"^[A-Za-z0-9_.@:-]*[A-Za-z0-9_@:-][A-Za-z0-9_.@:-]*$"
PUBLIC_PATHS = frozenset({"/v1/health"})

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=8000)]
Question = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)]
UserId = Annotated[
    str,
    Path(
        pattern=USER_ID_PATTERN,
        min_length=1,
        max_length=64,
        description="user id: 1-64 of A-Z a-z 0-9 _ . @ : - (not only dots)",
    ),
]
TEMPERATURE_DOC = f"0 to 2; 0 (or below {MIN_TEMPERATURE}) is greedy; default 0 (OpenAI's is 1)"
MAX_CHOICES = 8  # ``n``: choices per OpenAI request, generated one after another
DEFAULT_MAX_TOKENS = 128
MAX_RAW_PROMPTS = 64  # prompts in one raw completions request


class Pair(BaseModel):
    """One labeled preference: for ``prompt`` the user prefers ``chosen`` over ``rejected``."""

    model_config = ConfigDict(extra="forbid")
    prompt: Text
    chosen: Text
    rejected: Text

    @model_validator(mode="after")
    def _differs(self) -> Pair:
        if self.chosen == self.rejected:
            raise ValueError("chosen and rejected are identical; the pair carries no preference")
        return self


class AddPreferences(BaseModel):
    model_config = ConfigDict(extra="forbid")
    preferences: list[Pair] = Field(min_length=1, max_length=100)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: Question
    max_new_tokens: int = Field(128, ge=1, le=1024)
    temperature: float = Field(0.0, ge=0.0, le=2.0, allow_inf_nan=False, description=TEMPERATURE_DOC)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    return_prompt: bool = False


def _check_unicode(text: str) -> str:
    """Refuse a lone surrogate ("\\ud800" in JSON): the tokenizer and the response encoder fail on it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode (a lone surrogate)") from None
    return text


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    @field_validator("content")
    @classmethod
    def _text_parts(cls, content):
        """A text part must carry a string (``{"type": "text", "text": null}`` is not the question "None")."""
        texts = [content] if isinstance(content, str) else []
        if isinstance(content, list):
            for i, part in enumerate(content):
                if not isinstance(part.get("type"), str):
                    raise ValueError(f"part {i}: needs a string 'type'")
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise ValueError(f"part {i}: a text part needs a string 'text'")
                texts += [part["text"]] if part["type"] == "text" else []
        for text in texts:
            _check_unicode(text)
        return content


class ChatRequest(BaseModel):
    """The subset of OpenAI's chat completions request that applies; unknown fields are ignored."""

    model: str = Field("", max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    user: str | None = Field(None, pattern=USER_ID_PATTERN, min_length=1, max_length=64)
    max_tokens: int | None = Field(None, ge=1, le=1024)
    max_completion_tokens: int | None = Field(None, ge=1, le=1024)
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False, description=TEMPERATURE_DOC)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    # Checked by the route (a 400 naming the limit), not by the schema.
    n: int | None = Field(None, description=f"choices, 1-{MAX_CHOICES} (seed + i each)")
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None


class CompletionRequest(BaseModel):
    """OpenAI's legacy completions request. With ``user`` (or a per-user key) ``prompt`` is the question
    (fspo renders the user's shots around it, as in chat); with an admin key and no ``user`` each
    prompt is continued as given (raw completion)."""

    model: str = Field("", max_length=256)
    prompt: str | list[str]
    user: str | None = Field(None, pattern=USER_ID_PATTERN, min_length=1, max_length=64)
    max_tokens: int | None = Field(None, ge=1, le=1024)
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False, description=TEMPERATURE_DOC)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    n: int | None = Field(None, description=f"choices, 1-{MAX_CHOICES} (seed + i each)")
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _unicode(cls, prompt):
        for text in [prompt] if isinstance(prompt, str) else prompt:
            _check_unicode(text)
        return prompt


MISSING_KEY = "missing API key: send 'Authorization: Bearer <key>'"


class Principal(BaseModel):
    admin: bool
    user_id: str | None = None


ERROR_KINDS = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}


def _error(status: int, message: str, detail: Any = None) -> ErrorJSONResponse:
    kind = ERROR_KINDS.get(status, "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "code": status}, "detail": detail or message}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return ErrorJSONResponse(body, status_code=status, headers=headers)


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def sampling(max_new_tokens: int, temperature: float | None, top_p: float | None, seed: int | None) -> GenerationParams:
    """Generation parameters with temperatures below :data:`MIN_TEMPERATURE` made greedy."""
    temperature = temperature or 0.0
    if temperature < MIN_TEMPERATURE:
        temperature = 0.0
    return GenerationParams(max_new_tokens, temperature, top_p or 1.0, seed or 0)


def _choices(n: int | None) -> int:
    n = 1 if n is None else n
    if not 1 <= n <= MAX_CHOICES:
        raise HTTPException(400, f"n must be from 1 to {MAX_CHOICES}, got {n}")
    return n


def _usage(outs: list[Personalized], per_prompt: int) -> dict:
    """OpenAI's usage: each prompt once (``per_prompt`` choices share one), every choice's completion,
    and the prompt tokens whose KV came from the user's prefix cache when the request arrived."""
    firsts = outs[::per_prompt]
    prompt, completion = sum(o.prompt_tokens for o in firsts), sum(o.completion_tokens for o in outs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(o.cached_tokens for o in firsts)},
    }


def _fspo_info(user_id: str | None, outs: list[Personalized]) -> dict:
    return {
        "user": user_id,
        "description": outs[0].description,
        "descriptions": [o.description for o in outs],
        "shots_used": outs[0].shots_used,
    }


def _finish_reason(out: Personalized, max_new: int) -> str:
    return "length" if out.completion_tokens >= max_new else "stop"


def _sse(obj: dict | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


# One choice of an OpenAI request: (generate it, stream it).
Job = tuple[Callable[[], Personalized], Callable[[], Iterator]]
# (choice index, text piece or None, finish_reason or None, opening chunk?) -> one choice of a chunk.
ChoiceChunk = Callable[[int, str | None, str | None, bool], dict | None]


def _event_stream(
    jobs: list[Job],
    first: Iterator,
    max_new: int,
    header: dict,
    choice: ChoiceChunk,
    include_usage: bool,
    info: Callable[[list[Personalized]], dict | None],
    per_prompt: int,
) -> Iterator[bytes]:
    """Server-sent events for the choices, sent one after another (``first`` is the first job's
    stream, opened before the response started so that its errors were a 400), then ``data: [DONE]``.
    Every choice's stream is opened at once, so the engine decodes them together in one batch;
    a client that leaves closes them all (their sequences leave the batch)."""
    outs: list[Personalized] = []
    extra = {"usage": None} if include_usage else {}
    streams = [first]
    try:
        streams += [open_stream() for _, open_stream in jobs[1:]]
        for i, stream in enumerate(streams):
            opening = choice(i, "", None, True)  # chat's role chunk; completions have none
            if opening is not None:
                yield _sse(header | {"choices": [opening]} | extra)
            for item in stream:
                if isinstance(item, str):
                    yield _sse(header | {"choices": [choice(i, item, None, False)]} | extra)
                else:
                    outs.append(item)
            last = header | {"choices": [choice(i, None, _finish_reason(outs[-1], max_new), False)]} | extra
            if i == len(jobs) - 1 and info(outs) is not None:
                last["fspo"] = info(outs)
            yield _sse(last)
        if include_usage:
            yield _sse(header | {"choices": [], "usage": _usage(outs, per_prompt)})
    except FspoError as exc:  # after the 200 went out, an error can only be an event
        yield _sse({"error": {"message": str(exc), "type": "invalid_request_error", "code": 400}})
    finally:
        for stream in streams:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
    yield _sse("[DONE]")


def chat_chunk(i: int, text: str | None, finish: str | None, first: bool) -> dict:
    delta = {"role": "assistant", "content": ""} if first else {} if text is None else {"content": text}
    return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}


def text_chunk(i: int, text: str | None, finish: str | None, first: bool) -> dict | None:
    if first:
        return None  # completions have no opening (role) chunk
    return {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise HTTPException(400, "stop: up to 4 non-empty strings")
    return tuple(stops)


def _streaming(events: Iterator[bytes]) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


def create_app(engine: Engine, store: UserStore, admin_keys: list[str], model_name: str = "fspo") -> FastAPI:
    """Build the API around a loaded engine and a user store."""
    admin_keys = [k for k in admin_keys if k]
    if not admin_keys:
        raise FspoError("fspo serve needs at least one admin API key (--api-key, --api-key-file or FSPO_API_KEY)")
    admin_secrets = [k.encode() for k in admin_keys]
    app = FastAPI(
        title="fspo personalization API",
        version="1",
        description="Personalize one model to many users from their labeled preference pairs (FSPO).",
    )
    bearer = HTTPBearer(auto_error=False)

    def authenticate(key: str) -> Principal | None:
        # Bytes, not str: compare_digest refuses non-ASCII str (a 500 for a key like "é").
        if any(secrets.compare_digest(key.encode(), k) for k in admin_secrets):
            return Principal(admin=True)
        user = store.user_for_key(key)
        return None if user is None else Principal(admin=False, user_id=user)

    async def authorize(scope: dict) -> str | None:
        """Runs before the body is read: every /v1/ route but health needs a valid key."""
        path = scope.get("path", "")
        if not path.startswith("/v1/") or path in PUBLIC_PATHS:
            return None
        key = bearer_token(scope)
        if key is None:
            return MISSING_KEY
        who = await run_in_threadpool(authenticate, key)
        if who is None:
            return "invalid API key"
        scope.setdefault("state", {})["principal"] = who
        return None

    app.add_middleware(BodyGuard, limit=MAX_BODY_BYTES, error=_error, authorize=authorize)

    @app.exception_handler(RequestValidationError)
    async def on_validation(_request: Request, exc: RequestValidationError):
        errors = exc.errors()
        clean = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]
        return _error(422, _validation_message(errors), detail=clean)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(FspoError)
    async def on_fspo(_request: Request, exc: FspoError):
        return _error(400, str(exc))

    def principal(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        checked = getattr(request.state, "principal", None)  # set by the guard, before the body was read
        if checked is not None:
            return checked
        if creds is None or not creds.credentials:
            raise HTTPException(401, MISSING_KEY)
        who = authenticate(creds.credentials)
        if who is None:
            raise HTTPException(401, "invalid API key")
        return who

    def for_user(user_id: str, who: Principal) -> str:
        if not who.admin and who.user_id != user_id:
            raise HTTPException(403, "this key may only act for its own user")
        return user_id

    def require_admin(who: Principal = Depends(principal)) -> Principal:
        if not who.admin:
            raise HTTPException(403, "admin key required")
        return who

    def generate_for(user_id: str, question: str, params: GenerationParams):
        shots = [p.record() for p in store.list(user_id)]
        return engine.generate(user_id, shots, question, params)

    @app.get("/v1/health", tags=["meta"])
    def health() -> dict:
        return {"status": "ok", "model": model_name, "layout": engine.info.layout, "n_shots": engine.info.n_shots}

    @app.get("/v1/models", tags=["openai"])
    def models(who: Principal = Depends(principal)) -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "fspo"}]}

    @app.post("/v1/users/{user_id}/keys", tags=["users"], status_code=201)
    def issue_key(user_id: UserId, who: Principal = Depends(require_admin)) -> dict:
        """Create the user if needed and issue a per-user key (replacing any previous one)."""
        return {"user_id": user_id, "api_key": store.issue_key(user_id)}

    @app.delete("/v1/users/{user_id}", tags=["users"])
    def delete_user(user_id: UserId, who: Principal = Depends(principal)) -> dict:
        for_user(user_id, who)
        if not store.delete_user(user_id):
            raise HTTPException(404, f"no user {user_id!r}")
        engine.invalidate(user_id)
        return {"user_id": user_id, "deleted": True}

    @app.post("/v1/users/{user_id}/preferences", tags=["preferences"], status_code=201)
    def add_preferences(user_id: UserId, body: AddPreferences, who: Principal = Depends(principal)) -> dict:
        for_user(user_id, who)
        pairs = [(p.prompt, p.chosen, p.rejected) for p in body.preferences]
        try:
            ids, count = store.add(user_id, pairs, cap=MAX_PREFS_PER_USER)
        except TooManyPreferences as full:
            raise HTTPException(
                409, f"a user may store at most {MAX_PREFS_PER_USER} preferences (has {full.have})"
            ) from None
        engine.invalidate(user_id)
        return {"user_id": user_id, "ids": ids, "count": count}

    @app.get("/v1/users/{user_id}/preferences", tags=["preferences"])
    def list_preferences(user_id: UserId, who: Principal = Depends(principal)) -> dict:
        for_user(user_id, who)
        items = [
            {"id": p.id, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "created_at": p.created_at}
            for p in store.list(user_id)
        ]
        return {"user_id": user_id, "preferences": items}

    @app.delete("/v1/users/{user_id}/preferences/{pref_id}", tags=["preferences"])
    def delete_preference(user_id: UserId, pref_id: int, who: Principal = Depends(principal)) -> dict:
        for_user(user_id, who)
        # An id outside SQLite's integer range cannot exist (and would overflow the query): 404.
        if not 1 <= pref_id <= MAX_ROW_ID or not store.delete(user_id, pref_id):
            raise HTTPException(404, f"user {user_id!r} has no preference {pref_id}")
        engine.invalidate(user_id)
        return {"user_id": user_id, "deleted": [pref_id]}

    @app.delete("/v1/users/{user_id}/preferences", tags=["preferences"])
    def clear_preferences(user_id: UserId, who: Principal = Depends(principal)) -> dict:
        for_user(user_id, who)
        n = store.clear(user_id)
        engine.invalidate(user_id)
        return {"user_id": user_id, "deleted_count": n}

    @app.post("/v1/users/{user_id}/generate", tags=["generate"])
    def generate(user_id: UserId, body: GenerateRequest, who: Principal = Depends(principal)) -> dict:
        for_user(user_id, who)
        params = sampling(body.max_new_tokens, body.temperature, body.top_p, body.seed)
        out = generate_for(user_id, body.question, params)
        result = {
            "user_id": user_id,
            "answer": out.answer,
            "description": out.description,
            "shots_used": out.shots_used,
            "shots_available": out.shots_available,
            "prompt_tokens": out.prompt_tokens,
            "cached_tokens": out.cached_tokens,
            "completion_tokens": out.completion_tokens,
            "seconds": round(out.seconds, 4),
        }
        if body.return_prompt:
            result["prompt"] = out.prompt
        return result

    def openai_user(requested: str | None, who: Principal) -> str:
        user_id = requested or who.user_id
        if user_id is None:
            raise HTTPException(400, "set 'user' to the id whose preferences should condition the answer")
        return for_user(user_id, who)

    def choice_params(params: GenerationParams, i: int) -> GenerationParams:
        return replace(params, seed=(params.seed + i) % 2**31)

    def personalized_jobs(user_id: str, question: str, params: GenerationParams, n: int) -> list[Job]:
        """``n`` choices for ``user_id``; the user's pairs are read once."""
        shots = [p.record() for p in store.list(user_id)]

        def job(i: int) -> Job:
            p = choice_params(params, i)
            return (
                lambda: engine.generate(user_id, shots, question, p),
                lambda: engine.stream(user_id, shots, question, p),
            )

        return [job(i) for i in range(n)]

    def raw_jobs(prompts: list[str], params: GenerationParams, n: int) -> list[Job]:
        """``n`` raw continuations of every prompt (choice ``k * n + i``: prompt ``k``, seed + ``i``)."""
        for text in prompts:
            engine.render_raw(text, params.max_new_tokens)  # every prompt fits, or a 400 before any work

        def job(text: str, i: int) -> Job:
            p = choice_params(params, i)
            return (lambda: engine.complete(text, p), lambda: engine.stream_complete(text, p))

        return [job(text, i) for text in prompts for i in range(n)]

    def respond(jobs: list[Job], stream: bool, max_new: int, per_prompt: int, info, **events):
        """The choices' results (a list), or for ``stream`` the server-sent events."""
        if not stream:
            if len(jobs) == 1:
                return [jobs[0][0]()]
            # The choices run at once so the engine decodes them together (one batch).
            with ThreadPoolExecutor(max_workers=min(len(jobs), 16), thread_name_prefix="fspo-choice") as pool:
                return list(pool.map(lambda job: job[0](), jobs))
        first = jobs[0][1]()  # opened now: a prompt that does not fit is a 400, not an event
        return _streaming(_event_stream(jobs, first, max_new, info=info, per_prompt=per_prompt, **events))

    def include_usage(options: dict[str, Any] | None) -> bool:
        return bool((options or {}).get("include_usage"))

    @app.post("/v1/chat/completions", tags=["openai"])
    def chat_completions(body: ChatRequest, who: Principal = Depends(principal)):
        """OpenAI-compatible: ``user`` picks whose preferences condition the answer; the last user message
        is the question (earlier turns and system messages are not part of the FSPO layout).
        ``stream=true`` answers with server-sent ``chat.completion.chunk`` events."""
        user_id = openai_user(body.user, who)
        n = _choices(body.n)
        question = _last_user_text(body.messages)
        max_new = body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS
        params = sampling(max_new, body.temperature, body.top_p, body.seed)
        cid, created, model = "chatcmpl-" + uuid.uuid4().hex, int(time.time()), body.model or model_name
        jobs = personalized_jobs(user_id, question, params, n)
        info = partial(_fspo_info, user_id)
        if body.stream:
            return respond(
                jobs,
                True,
                max_new,
                n,
                info,
                header={"id": cid, "object": "chat.completion.chunk", "created": created, "model": model},
                choice=chat_chunk,
                include_usage=include_usage(body.stream_options),
            )
        outs = respond(jobs, False, max_new, n, info)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": out.answer},
                    "logprobs": None,
                    "finish_reason": _finish_reason(out, max_new),
                }
                for i, out in enumerate(outs)
            ],
            "usage": _usage(outs, n),
            "fspo": info(outs),
        }

    @app.post("/v1/completions", tags=["openai"])
    def completions(body: CompletionRequest, who: Principal = Depends(principal)):
        """OpenAI's legacy completions, two ways. With ``user`` (or a per-user key): ``prompt`` is the
        question and the user's shots are rendered around it, exactly as in chat. With an admin key and
        no ``user``: raw completion, the model continues each prompt as given (clients that render FSPO
        prompts themselves, as ``fspo eval`` does, use fspo serve like vLLM). ``stream=true`` answers
        with server-sent ``text_completion`` events. ``echo``, ``suffix``, ``logprobs`` and
        ``best_of`` > 1 are 400."""
        raw = who.admin and body.user is None
        user_id = None if raw else openai_user(body.user, who)
        n = _choices(body.n)
        for name, unsupported in (
            ("echo", bool(body.echo)),
            ("suffix", body.suffix is not None),
            ("logprobs", body.logprobs is not None),
            ("best_of", (body.best_of or 1) != 1),
        ):
            if unsupported:
                raise HTTPException(400, f"{name} is not supported by fspo serve")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        max_new = body.max_tokens or DEFAULT_MAX_TOKENS
        stops = _stops(body.stop)
        params = replace(sampling(max_new, body.temperature, body.top_p, body.seed), stop=stops if raw else ())
        if raw:
            if not 1 <= len(prompts) <= MAX_RAW_PROMPTS or any(not p for p in prompts):
                raise HTTPException(400, f"prompt: 1-{MAX_RAW_PROMPTS} non-empty strings")
            jobs, info = raw_jobs(prompts, params, n), (lambda outs: None)
        else:
            if len(prompts) != 1:
                raise HTTPException(400, "prompt: give one string (one question per request) when a user is named")
            question = prompts[0].strip()
            if not question:
                raise HTTPException(422, "prompt: must not be empty")
            if len(question) > 4000:
                raise HTTPException(422, "prompt: over 4000 characters")
            jobs, info = personalized_jobs(user_id, question, params, n), partial(_fspo_info, user_id)
        cid, created, model = "cmpl-" + uuid.uuid4().hex, int(time.time()), body.model or model_name
        if body.stream:
            return respond(
                jobs,
                True,
                max_new,
                n,
                info,
                header={"id": cid, "object": "text_completion", "created": created, "model": model},
                choice=text_chunk,
                include_usage=include_usage(body.stream_options),
            )
        outs = respond(jobs, False, max_new, n, info)
        result = {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": i, "text": out.answer, "logprobs": None, "finish_reason": _finish_reason(out, max_new)}
                for i, out in enumerate(outs)
            ],
            "usage": _usage(outs, n),
        }
        if info(outs) is not None:
            result["fspo"] = info(outs)
        return result

    return app


def _last_user_text(messages: list[ChatMessage]) -> str:
    for msg in reversed(messages):
        if msg.role != "user" or msg.content is None:
            continue
        if isinstance(msg.content, str):
            text = msg.content
        else:
            text = "\n".join(p["text"] for p in msg.content if p["type"] == "text")
        text = text.strip()
        if text:
            if len(text) > 4000:
                raise HTTPException(422, "messages: the last user message is over 4000 characters")
            return text
    raise HTTPException(422, "messages: needs at least one non-empty user message")
