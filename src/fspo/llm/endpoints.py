"""The one endpoint syntax of every command that talks to an inference engine.

``http://host:port/v1#model``: the OpenAI-compatible API root and, after ``#``, the served model
name (``vllm serve DIR --served-model-name fspo`` -> ``http://127.0.0.1:8000/v1#fspo``). Without
``#model`` the first model the server lists at ``/v1/models`` is used. A URL with no path gets
``/v1``. The API key is never part of the URL: it comes from ``$OPENAI_API_KEY`` (or an option).

``fspo synth --engine``, ``fspo eval --method-engines`` / ``--judge-model`` and ``fspo serve
--engine`` all parse their option here, so a bad value is the same one-line error everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from fspo.errors import FspoError, show

EXAMPLE = "http://127.0.0.1:8000/v1#fspo"
MAX_LENGTH = 2048


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible API root (``base_url`` ends with the API prefix, e.g. ``/v1``) and the
    served model (``None``: the first one the server lists)."""

    base_url: str
    model: str | None = None

    def __str__(self) -> str:
        return f"{self.base_url}#{self.model}" if self.model else self.base_url


def is_endpoint(text: str) -> bool:
    """Whether ``text`` is meant as an endpoint (starts with http:// or https://), not a model spec."""
    return isinstance(text, str) and text.strip().lower().startswith(("http://", "https://"))


def parse_endpoint(text: str, option: str = "--engine") -> Endpoint:
    """``http://host:port/v1[#model]`` -> :class:`Endpoint`, or a one-line :class:`FspoError` naming
    ``option``."""

    def bad(why: str) -> FspoError:
        return FspoError(f"{option}: {why}, got {show(text)} (expected URL[#model], e.g. {EXAMPLE})")

    if not isinstance(text, str):
        raise bad("expected a string")
    text = text.strip()
    if not text:
        raise bad("empty")
    if len(text) > MAX_LENGTH:
        raise bad(f"longer than {MAX_LENGTH} characters")
    if not text.isprintable() or any(ch.isspace() for ch in text):
        raise bad("spaces or control characters")
    url, hashed, model = text.partition("#")
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is not a number from 0 to 65535 raises here
    except ValueError:
        raise bad("not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise bad("the URL must start with http:// or https://")
    if not parts.hostname:
        raise bad("no host")
    if parts.username is not None or parts.password is not None:
        raise bad("credentials in the URL (set $OPENAI_API_KEY instead)")
    if port == 0:
        raise bad("port 0")
    if parts.query:
        raise bad("a query string")
    if hashed and not model:
        raise bad("nothing after '#' (name the served model, or leave out '#')")
    path = parts.path.rstrip("/") or "/v1"
    base = urlunsplit((parts.scheme.lower(), parts.netloc, path, "", ""))
    return Endpoint(base, model or None)


def served_models(client, base_url: str) -> list[str]:
    """The model ids an OpenAI-compatible server lists (``client``: an ``openai.OpenAI``)."""
    from fspo.llm.openai_compat import api_error

    try:
        return [m.id for m in client.models.list()]
    except Exception as exc:
        raise api_error(exc, base_url + "/models", base_url) from None


def default_model(client, endpoint: Endpoint, option: str = "--engine") -> str:
    """``endpoint.model``, else the first model the server lists (or a one-line error)."""
    if endpoint.model:
        return endpoint.model
    models = served_models(client, endpoint.base_url)
    if not models:
        raise FspoError(f"{option}: {endpoint.base_url}/models lists no model; name one: {endpoint.base_url}#MODEL")
    return models[0]
