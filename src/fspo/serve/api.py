"""``fspo serve``: an HTTP API that personalizes one model to many users.

Auth model (see docs/serving.md): admin keys (``--api-key`` / ``FSPO_API_KEY``) may act for any
user and issue per-user keys; a per-user key may act only for its own user. Every user-scoped
route takes the user id from the path (or, for chat completions, the ``user`` field) and checks it
against the key, and every storage call is filtered by that id, so one user's requests can
neither read nor change another user's preferences, nor have them enter their prompt.
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from fspo.errors import FspoError
from fspo.llm.base import GenerationParams
from fspo.serve.personalize import Engine
from fspo.serve.users import UserStore

MAX_BODY_BYTES = 1_000_000
MAX_PREFS_PER_USER = 1000
USER_ID_PATTERN = r"^[A-Za-z0-9_.@:-]{1,64}$"

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=8000)]
Question = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)]
UserId = Annotated[str, Path(pattern=USER_ID_PATTERN, description="user id: 1-64 of A-Z a-z 0-9 _ . @ : -")]


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
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    return_prompt: bool = False


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    """The subset of OpenAI's chat completions request that applies; unknown fields are ignored."""

    model: str = ""
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    user: str | None = Field(None, pattern=USER_ID_PATTERN)
    max_tokens: int | None = Field(None, ge=1, le=1024)
    max_completion_tokens: int | None = Field(None, ge=1, le=1024)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False


class Principal(BaseModel):
    admin: bool
    user_id: str | None = None


def _error(status: int, message: str, kind: str = "invalid_request_error", detail: Any = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "code": status}, "detail": detail or message}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(engine: Engine, store: UserStore, admin_keys: list[str], model_name: str = "fspo") -> FastAPI:
    """Build the API around a loaded engine and a user store."""
    if not admin_keys:
        raise FspoError("fspo serve needs at least one admin API key (--api-key or FSPO_API_KEY)")
    app = FastAPI(
        title="fspo personalization API",
        version="1",
        description="Personalize one model to many users from their labeled preference pairs (FSPO).",
    )
    bearer = HTTPBearer(auto_error=False)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return _error(413, f"request body over {MAX_BODY_BYTES} bytes")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def on_validation(_request: Request, exc: RequestValidationError):
        errors = exc.errors()
        clean = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]
        return _error(422, _validation_message(errors), detail=clean)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_request: Request, exc: StarletteHTTPException):
        kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}.get(
            exc.status_code, "invalid_request_error"
        )
        return _error(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(FspoError)
    async def on_fspo(_request: Request, exc: FspoError):
        return _error(400, str(exc))

    def principal(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        if creds is None or not creds.credentials:
            raise HTTPException(401, "missing API key: send 'Authorization: Bearer <key>'")
        key = creds.credentials
        if any(secrets.compare_digest(key, k) for k in admin_keys):
            return Principal(admin=True)
        user = store.user_for_key(key)
        if user is None:
            raise HTTPException(401, "invalid API key")
        return Principal(admin=False, user_id=user)

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
        have = len(store.list(user_id))
        if have + len(body.preferences) > MAX_PREFS_PER_USER:
            raise HTTPException(409, f"a user may store at most {MAX_PREFS_PER_USER} preferences (has {have})")
        ids = store.add(user_id, [(p.prompt, p.chosen, p.rejected) for p in body.preferences])
        engine.invalidate(user_id)
        return {"user_id": user_id, "ids": ids, "count": have + len(ids)}

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
        if not store.delete(user_id, pref_id):
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
        params = GenerationParams(body.max_new_tokens, body.temperature, body.top_p, body.seed)
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

    @app.post("/v1/chat/completions", tags=["openai"])
    def chat_completions(body: ChatRequest, who: Principal = Depends(principal)) -> dict:
        """OpenAI-compatible: ``user`` picks whose preferences condition the answer; the last user message
        is the question (earlier turns and system messages are not part of the FSPO layout)."""
        if body.stream:
            raise HTTPException(400, "stream=true is not supported")
        user_id = body.user or who.user_id
        if user_id is None:
            raise HTTPException(400, "set 'user' to the id whose preferences should condition the answer")
        for_user(user_id, who)
        question = _last_user_text(body.messages)
        max_new = body.max_completion_tokens or body.max_tokens or 128
        params = GenerationParams(max_new, body.temperature or 0.0, body.top_p or 1.0, body.seed or 0)
        out = generate_for(user_id, question, params)
        finish = "length" if out.completion_tokens >= max_new else "stop"
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.model or model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out.answer}, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": out.prompt_tokens,
                "completion_tokens": out.completion_tokens,
                "total_tokens": out.prompt_tokens + out.completion_tokens,
            },
            "fspo": {
                "user": user_id,
                "description": out.description,
                "shots_used": out.shots_used,
                "cached_tokens": out.cached_tokens,
            },
        }

    return app


def _last_user_text(messages: list[ChatMessage]) -> str:
    for msg in reversed(messages):
        if msg.role != "user" or msg.content is None:
            continue
        if isinstance(msg.content, str):
            text = msg.content
        else:
            text = "\n".join(str(p.get("text", "")) for p in msg.content if p.get("type") == "text")
        text = text.strip()
        if text:
            if len(text) > 4000:
                raise HTTPException(422, "messages: the last user message is over 4000 characters")
            return text
    raise HTTPException(422, "messages: needs at least one non-empty user message")
