"""``fspo serve``: auth, per-user isolation, validation, OpenAI compatibility, persistence."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from fspo.data.runs import resolve_model
from fspo.serve.api import create_app
from fspo.serve.live import serve_in_thread
from fspo.serve.personalize import Engine
from fspo.serve.users import UserStore

ADMIN = "admin-secret"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(resolve_model("tiny"))


@pytest.fixture()
def app(engine, tmp_path):
    return create_app(engine, UserStore(tmp_path / "serve.sqlite"), [ADMIN], model_name="tiny")


@pytest.fixture()
def client(app) -> TestClient:
    return TestClient(app)


def auth(key: str = ADMIN) -> dict:
    return {"Authorization": f"Bearer {key}"}


def pair(tag: str) -> dict:
    return {"prompt": f"Question {tag}?", "chosen": f"Answer liked {tag}", "rejected": f"Answer disliked {tag}"}


def test_auth_required(client: TestClient) -> None:
    assert client.get("/v1/health").status_code == 200
    r = client.get("/v1/users/a/preferences")
    assert r.status_code == 401 and "Bearer" in r.json()["error"]["message"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/users/a/preferences", headers=auth("wrong")).status_code == 401


def test_crud_and_generate(client: TestClient) -> None:
    r = client.post("/v1/users/alice/preferences", json={"preferences": [pair("a1"), pair("a2")]}, headers=auth())
    assert r.status_code == 201 and r.json()["count"] == 2
    ids = r.json()["ids"]
    listed = client.get("/v1/users/alice/preferences", headers=auth()).json()["preferences"]
    assert [p["id"] for p in listed] == ids
    body = {"question": "What should I read?", "max_new_tokens": 4, "return_prompt": True}
    g = client.post("/v1/users/alice/generate", json=body, headers=auth()).json()
    assert g["shots_used"] == 2 and "Answer liked a1" in g["prompt"] and g["cached_tokens"] == 0
    g2 = client.post("/v1/users/alice/generate", json=body, headers=auth()).json()
    assert g2["cached_tokens"] > 0 and g2["answer"] == g["answer"]
    assert client.delete(f"/v1/users/alice/preferences/{ids[0]}", headers=auth()).status_code == 200
    assert client.delete(f"/v1/users/alice/preferences/{ids[0]}", headers=auth()).status_code == 404
    assert len(client.get("/v1/users/alice/preferences", headers=auth()).json()["preferences"]) == 1
    assert client.delete("/v1/users/alice/preferences", headers=auth()).json()["deleted_count"] == 1


def test_users_are_isolated(client: TestClient) -> None:
    alice = client.post("/v1/users/alice/keys", headers=auth()).json()["api_key"]
    bob = client.post("/v1/users/bob/keys", headers=auth()).json()["api_key"]
    client.post("/v1/users/alice/preferences", json={"preferences": [pair("ALICE")]}, headers=auth(alice))
    r = client.post("/v1/users/bob/preferences", json={"preferences": [pair("BOB")]}, headers=auth(bob))
    bob_id = r.json()["ids"][0]
    # A user key cannot read, write, delete or generate for another user.
    assert client.get("/v1/users/bob/preferences", headers=auth(alice)).status_code == 403
    assert (
        client.post("/v1/users/bob/preferences", json={"preferences": [pair("X")]}, headers=auth(alice)).status_code
        == 403
    )
    assert client.delete(f"/v1/users/bob/preferences/{bob_id}", headers=auth(alice)).status_code == 403
    assert client.delete(f"/v1/users/alice/preferences/{bob_id}", headers=auth(alice)).status_code == 404
    assert client.post("/v1/users/bob/generate", json={"question": "q"}, headers=auth(alice)).status_code == 403
    assert client.post("/v1/users/bob/keys", headers=auth(alice)).status_code == 403
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "user": "bob", "max_tokens": 2}
    assert client.post("/v1/chat/completions", json=chat, headers=auth(alice)).status_code == 403
    # Bob's pairs never enter Alice's prompt, even after both were cached.
    body = {"question": "Tell me something.", "max_new_tokens": 2, "return_prompt": True}
    for _ in range(2):
        pa = client.post("/v1/users/alice/generate", json=body, headers=auth(alice)).json()["prompt"]
        pb = client.post("/v1/users/bob/generate", json=body, headers=auth(bob)).json()["prompt"]
        assert "ALICE" in pa and "BOB" not in pa
        assert "BOB" in pb and "ALICE" not in pb
    # Deleting Bob leaves Alice intact.
    assert client.delete("/v1/users/bob", headers=auth(bob)).status_code == 200
    assert client.get("/v1/users/bob/preferences", headers=auth(bob)).status_code == 401  # key gone with the user
    assert len(client.get("/v1/users/alice/preferences", headers=auth(alice)).json()["preferences"]) == 1
    # Re-issuing a key revokes the old one.
    client.post("/v1/users/alice/keys", headers=auth())
    assert client.get("/v1/users/alice/preferences", headers=auth(alice)).status_code == 401


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"preferences": []}, "preferences"),
        ({"preferences": [{"prompt": "q", "chosen": "  ", "rejected": "b"}]}, "chosen"),
        ({"preferences": [{"prompt": "q", "chosen": "same", "rejected": "same"}]}, "identical"),
        ({"preferences": [{"prompt": "q", "chosen": "a"}]}, "rejected"),
        ({"preferences": [{**pair("x"), "extra": 1}]}, "extra"),
        ({"preferences": [{"prompt": "q" * 9000, "chosen": "a", "rejected": "b"}]}, "prompt"),
        ([1, 2], "body"),
    ],
)
def test_bad_preference_bodies_are_422(client: TestClient, body, needle: str) -> None:
    r = client.post("/v1/users/alice/preferences", json=body, headers=auth())
    assert r.status_code == 422
    assert needle in r.json()["error"]["message"]


def test_other_bad_requests(client: TestClient) -> None:
    r = client.post(
        "/v1/users/alice/preferences", content=b"{not json", headers={**auth(), "content-type": "application/json"}
    )
    assert r.status_code == 422 and "JSON" in r.json()["error"]["message"]
    assert client.post("/v1/users/alice/generate", json={"question": ""}, headers=auth()).status_code == 422
    r = client.post("/v1/users/alice/generate", json={"question": "q", "max_new_tokens": 0}, headers=auth())
    assert r.status_code == 422 and "max_new_tokens" in r.json()["error"]["message"]
    assert client.get("/v1/users/bad%20id!/preferences", headers=auth()).status_code == 422
    big = {"preferences": [pair("x")], "pad": "x" * 1_100_000}
    assert client.post("/v1/users/alice/preferences", json=big, headers=auth()).status_code == 413
    chat = {"messages": [{"role": "system", "content": "hi"}], "user": "alice"}
    r = client.post("/v1/chat/completions", json=chat, headers=auth())
    assert r.status_code == 422 and "user message" in r.json()["error"]["message"]
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert "user" in client.post("/v1/chat/completions", json=chat, headers=auth()).json()["error"]["message"]
    chat = {"messages": [{"role": "user", "content": "hi"}], "user": "alice", "n": 9}
    r = client.post("/v1/chat/completions", json=chat, headers=auth())
    assert r.status_code == 400 and r.json()["error"]["message"] == "n must be from 1 to 8, got 9"


def test_openapi_spec(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/users/{user_id}/preferences",
        "/v1/users/{user_id}/generate",
    ):
        assert path in spec["paths"]


def test_preferences_survive_restart(engine, tmp_path) -> None:
    db = tmp_path / "p.sqlite"
    c1 = TestClient(create_app(engine, UserStore(db), [ADMIN]))
    c1.post("/v1/users/carol/preferences", json={"preferences": [pair("c")]}, headers=auth())
    c2 = TestClient(create_app(engine, UserStore(db), [ADMIN]))
    assert len(c2.get("/v1/users/carol/preferences", headers=auth()).json()["preferences"]) == 1


def test_openai_client_against_live_server(app) -> None:
    openai = pytest.importorskip("openai")
    with serve_in_thread(app) as base:
        admin = openai.OpenAI(base_url=base + "/v1", api_key=ADMIN, max_retries=0)
        import httpx

        key = httpx.post(f"{base}/v1/users/dave/keys", headers=auth()).json()["api_key"]
        httpx.post(f"{base}/v1/users/dave/preferences", json={"preferences": [pair("d")]}, headers=auth(key))
        assert [m.id for m in admin.models.list().data] == ["tiny"]
        for client, user in ((admin, "dave"), (openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0), None)):
            kwargs = {"user": user} if user else {}
            out = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "Say hi."}], max_tokens=3, **kwargs
            )
            assert out.object == "chat.completion" and out.choices[0].message.role == "assistant"
            assert isinstance(out.choices[0].message.content, str) and out.usage.completion_tokens <= 3
            assert out.model_extra["fspo"]["user"] == "dave" and out.model_extra["fspo"]["shots_used"] == 1
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "/v1", api_key="nope", max_retries=0).models.list()
        with pytest.raises(openai.PermissionDeniedError):
            openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0).chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "x"}], user="eve"
            )
        with pytest.raises(openai.UnprocessableEntityError):
            admin.chat.completions.create(model="tiny", messages=[], user="dave")
