"""The study web app: plain HTML/JS served by FastAPI, one participant per invite token.

Security model: the invite token is the participant's only credential (kept in an HttpOnly,
SameSite=Strict cookie after joining, or sent as a Bearer token by scripts). No route takes a
participant id: every read and write is for the participant the token names, so nobody can see
or answer another participant's items. Model text reaches the page only through ``textContent``,
and a strict Content-Security-Policy forbids inline scripts as a second line of defence. The
token is checked, and the body bounded to 64 KB on the stream, before any body is read.

Generation never parks a participant for good: a failure is noted and retried with backoff (and
at once after a restart); the model and the fit of every question are checked before serving.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import cookie_parser

from fspo.data.schema import PreferenceRecord
from fspo.errors import FspoError
from fspo.llm.base import GenerationParams
from fspo.serve.live import BodyGuard, ErrorJSONResponse, bearer_token
from fspo.serve.study.config import StudyConfig
from fspo.serve.study.store import Conflict, NotFound, Participant, StudyStore

STATIC = Path(__file__).parent / "static"
COOKIE = "fspo_study"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
MAX_BODY_BYTES = 64_000
RETRY_SECONDS = (5, 30, 120, 600)  # wait after the 1st, 2nd, 3rd, later failed generation
log = logging.getLogger("fspo.study")


class LabelAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    position: int = Field(ge=0, le=10_000)
    choice: Literal["left", "right"]


class CompareAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    position: int = Field(ge=0, le=10_000)
    choice: Literal["left", "right", "tie"]


def load_engines(config: StudyConfig, device: str = "auto", dtype: str = "float32"):
    """The personalized and baseline engines for ``config`` on ``device``, or a one-line error."""
    from fspo.data.prompts import ZEROSHOT
    from fspo.data.runs import resolve_model
    from fspo.serve.command import load_engine

    engine = load_engine(resolve_model(config.model).for_serving(), cache_users=32, device=device, dtype=dtype)
    base = config.baseline_model
    if base and base != config.model:
        baseline = resolve_model(base).with_prompting(ZEROSHOT.name)
        return engine, load_engine(baseline, cache_users=0, device=device, dtype=dtype)
    return engine, engine


def answer_budgets(config: StudyConfig, engine, baseline) -> dict[int, int]:
    """Per compare item that needs generating: how many new tokens fit both arms' ``max_length``
    after the bare question (``max_new_tokens`` normally; fewer for a long question; 0 when the
    question alone fills the context). Shots never matter here: they are dropped to fit."""
    from fspo.data.prompts import ZEROSHOT

    budgets = {}
    for i, item in enumerate(config.compare):
        budget = config.max_new_tokens
        for eng, layout, given in ((engine, None, item.personalized), (baseline, ZEROSHOT.name, item.baseline)):
            if given is None:
                try:
                    budget = min(budget, eng.info.max_length - len(eng.render([], item.question, 0, layout).ids))
                except FspoError:  # the question alone is longer than max_length
                    budget = 0
        if item.personalized is None or item.baseline is None:
            budgets[i] = max(budget, 0)
    return budgets


def check_fit(config: StudyConfig, budgets: dict[int, int], serving: bool = False) -> list[str]:
    """One message per compare question that leaves no room for ``max_new_tokens``; ``serving``
    says what will happen instead (fewer new tokens, or the item skipped)."""
    messages = []
    for i, budget in sorted(budgets.items()):
        if budget < config.max_new_tokens:
            fate = (f"its answers get {budget} new tokens" if budget else "it is skipped") if serving else "shorten it"
            messages.append(
                f"compare[{i}].question: with max_new_tokens {config.max_new_tokens} it does not fit the model's "
                f"max_length; {fate}"
            )
    return messages


class AnswerGenerator:
    """Fills a participant's comparison answers once they finish labeling (one model job at a time).

    A failure is recorded on the participant, who stays in ``generating``; the page keeps polling
    and the next poll after a backoff retries. Backoff is in memory, so a restart retries at once.
    """

    def __init__(
        self,
        store: StudyStore,
        config: StudyConfig,
        engine=None,
        baseline_engine=None,
        device: str = "auto",
        dtype: str = "float32",
    ) -> None:
        self.store = store
        self.config = config
        self.device = device
        self.dtype = dtype
        self._engine = engine
        self._baseline = baseline_engine
        self._budgets: dict[int, int] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fspo-study-gen")
        self._inflight: set[int] = set()
        self._failures: dict[int, int] = {}
        self._retry_at: dict[int, float] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    def engines(self):
        """Load the models on first need (a study with only pre-generated answers never loads one)."""
        with self._load_lock:
            if self._engine is None:
                self._engine, self._baseline = load_engines(self.config, self.device, self.dtype)
            return self._engine, self._baseline or self._engine

    def budget(self, item: int) -> int:
        """New tokens for this compare item (see :func:`answer_budgets`)."""
        engine, baseline = self.engines()
        with self._load_lock:
            if self._budgets is None:
                self._budgets = answer_budgets(self.config, engine, baseline)
            return self._budgets.get(item, self.config.max_new_tokens)

    def start(self, pid: int) -> None:
        """Generate now if nothing needs a model, else in the background (the page polls)."""
        with self._lock:
            if pid in self._inflight or time.monotonic() < self._retry_at.get(pid, 0.0):
                return
            self._inflight.add(pid)
        if not self.config.needs_model():
            self.run(pid)
            return
        try:
            self._pool.submit(self.run, pid)
        except RuntimeError:  # shutting down: the next start (or a restart's resume) picks it up
            with self._lock:
                self._inflight.discard(pid)

    def resume(self) -> int:
        """Queue everyone left waiting (after a restart or a fixed model); returns how many."""
        self.store.requeue_errors()
        waiting = self.store.participants_in("generating")
        for pid in waiting:
            self.start(pid)
        return len(waiting)

    def delayed(self, pid: int) -> bool:
        with self._lock:
            return pid in self._failures

    def run(self, pid: int) -> None:
        try:
            self._fill(pid)
            self.store.set_status(pid, "compare" if self.store.comparisons(pid) else "done")  # all skipped: done
            with self._lock:
                self._failures.pop(pid, None)
                self._retry_at.pop(pid, None)
        except Exception as exc:  # noted for the operator and retried; the participant sees "preparing"
            log.exception("generation failed for participant %s (will retry)", pid)
            with self._lock:
                n = self._failures[pid] = self._failures.get(pid, 0) + 1
                self._retry_at[pid] = time.monotonic() + RETRY_SECONDS[min(n, len(RETRY_SECONDS)) - 1]
            self.store.note_failure(pid, f"{type(exc).__name__}: {exc}"[:2000])
        finally:
            with self._lock:
                self._inflight.discard(pid)

    def _fill(self, pid: int) -> None:
        shots = []
        for lab in self.store.labels(pid):
            chosen, rejected = (
                (lab["left_text"], lab["right_text"])
                if lab["choice"] == "left"
                else (lab["right_text"], lab["left_text"])
            )
            shots.append(PreferenceRecord(f"participant-{pid}", lab["question"], chosen, rejected))
        for row in self.store.comparisons(pid):
            if row["personalized"] is not None:
                continue
            item = self.config.compare[row["item"]]
            personalized, baseline, shots_used = item.personalized, item.baseline, None
            if personalized is None or baseline is None:
                engine, base_engine = self.engines()
                budget = self.budget(row["item"])
                if budget == 0:  # the question alone fills the context: no answer can be generated
                    log.warning("compare item %s does not fit the model; skipped for participant %s", row["item"], pid)
                    self.store.skip_comparison(pid, row["position"])
                    continue
                params = GenerationParams(max_new_tokens=budget)
                if personalized is None:
                    out = engine.generate(f"participant-{pid}", shots, item.question, params)
                    personalized, shots_used = out.answer, out.shots_used
                if baseline is None:
                    baseline = base_engine.baseline(item.question, params).answer
            self.store.set_answers(pid, row["position"], personalized, baseline, shots_used)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)


def _error(status: int, message: str) -> ErrorJSONResponse:
    return ErrorJSONResponse({"error": message}, status_code=status)


def create_app(
    store: StudyStore, engine=None, baseline_engine=None, device: str = "auto", dtype: str = "float32"
) -> FastAPI:
    """The study app for the study stored in ``store`` (see :func:`StudyStore.set_config`)."""
    config = store.config()
    generator = AnswerGenerator(store, config, engine, baseline_engine, device, dtype)
    app = FastAPI(title=f"fspo study: {config.title}", docs_url=None, redoc_url=None)
    app.state.generator = generator
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def token_of(scope_or_request) -> str | None:
        scope = scope_or_request if isinstance(scope_or_request, dict) else scope_or_request.scope
        token = bearer_token(scope)
        if token is None:
            raw = b"; ".join(v for k, v in scope.get("headers", ()) if k == b"cookie").decode("latin-1")
            token = cookie_parser(raw).get(COOKIE) if raw else None
        return (token.strip() or None) if token else None

    async def authorize(scope: dict) -> str | None:
        """Runs before the body is read: every /api/ route needs a known invite token."""
        if not scope.get("path", "").startswith("/api/"):
            return None
        token = token_of(scope)
        if token is None:
            return "not joined: open your invite link"
        who = await run_in_threadpool(store.participant, token)
        if who is None:
            return "unknown invite token"
        return None

    app.add_middleware(BodyGuard, limit=MAX_BODY_BYTES, error=_error, authorize=authorize)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(RequestValidationError)
    async def on_validation(_request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        return _error(422, "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    def current(request: Request) -> Participant:
        token = token_of(request)
        if not token:
            raise HTTPException(401, "not joined: open your invite link")
        who = store.participant(token)
        if who is None:
            raise HTTPException(401, "unknown invite token")
        return who

    def json_body(request: Request) -> None:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HTTPException(415, "send the answer as JSON (Content-Type: application/json)")

    def joined(token: str) -> Response:
        who = store.participant(token.strip()) if token.strip() else None
        if who is None:
            page = (STATIC / "invalid.html").read_text()
            return HTMLResponse(page, status_code=403)
        store.mark_joined(who.id)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict", max_age=60 * 60 * 24 * 30)
        return response

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/join", include_in_schema=False)
    def join_link(token: str = "") -> Response:
        if not token.strip():
            raise HTTPException(400, "the invite link has no token")
        return joined(token)

    @app.post("/join", include_in_schema=False)
    def join_form(token: str = Form(..., min_length=1, max_length=200)) -> Response:
        return joined(token)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/api/state")
    def state(who: Participant = Depends(current)) -> dict:
        base = {"title": config.title, "intro": config.intro}
        if who.status == "label":
            labels = store.labels(who.id)
            todo = [lab for lab in labels if lab["choice"] is None]
            lab = todo[0]
            item = {
                "position": lab["position"],
                "question": lab["question"],
                "left": lab["left_text"],
                "right": lab["right_text"],
            }
            return {
                **base,
                "phase": "label",
                "progress": {"done": len(labels) - len(todo), "total": len(labels)},
                "item": item,
            }
        if who.status in ("generating", "error"):  # "error": written only by older versions
            generator.start(who.id)  # resumes or retries; a no-op while running or backing off
            who = store.get(who.id)
            if who.status in ("generating", "error"):
                return {**base, "phase": "generating", "delayed": who.error is not None or generator.delayed(who.id)}
        if who.status == "compare":
            rows = store.comparisons(who.id)
            todo = [r for r in rows if r["choice"] is None]
            r = todo[0]
            pers_left = r["personalized_side"] == "left"
            left, right = (r["personalized"], r["baseline"]) if pers_left else (r["baseline"], r["personalized"])
            item = {"position": r["position"], "question": r["question"], "left": left, "right": right}
            return {
                **base,
                "phase": "compare",
                "progress": {"done": len(rows) - len(todo), "total": len(rows)},
                "item": item,
            }
        if who.status == "done":
            return {**base, "phase": "done"}
        return {
            **base,
            "phase": "error",
            "message": "Something went wrong preparing your answers. The study team "
            "has been notified; please try again later.",
        }

    @app.post("/api/label", dependencies=[Depends(json_body)])
    def label(body: LabelAnswer, who: Participant = Depends(current)) -> dict:
        if who.status != "label":
            raise HTTPException(409, "labeling is already finished")
        try:
            last = store.answer_label(who.id, body.position, body.choice)
        except Conflict:
            raise HTTPException(409, f"item {body.position} is already answered") from None
        except NotFound:
            raise HTTPException(404, f"no labeling item {body.position}") from None
        if last:
            generator.start(who.id)
        return {"stored": True}

    @app.post("/api/compare", dependencies=[Depends(json_body)])
    def compare(body: CompareAnswer, who: Participant = Depends(current)) -> dict:
        if who.status != "compare":
            raise HTTPException(409, "comparisons are not open for you yet" if who.status != "done" else "already done")
        try:
            store.answer_comparison(who.id, body.position, body.choice)
        except Conflict:
            raise HTTPException(409, f"item {body.position} is already answered") from None
        except NotFound:
            raise HTTPException(404, f"no comparison item {body.position}") from None
        return {"stored": True}

    return app
