"""TLS, mutual TLS and bearer tokens over a real loopback port, with certificates made in the test:
who gets in, who does not, that a refused call never reaches the service, that health needs no
token, reflection per --auth-reflection, certificate rotation, and the CLI's connection flags."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lychee_grpc.app import App
from lychee_grpc.cli import main as cli_main
from lychee_grpc.client import AsyncLycheeClient, channel_credentials, make_request
from lychee_grpc.config import AppConfig, GrpcConfig, HttpConfig, MetricsConfig, SecurityConfig
from lychee_grpc.engine.engine import Engine
from lychee_grpc.proto import lychee_pb2 as pb

from ..helpers import engine_config
from ..tls import Pems, write_leaf

TOKEN = "test-token-1"
DOCS = ["vintage wash blue jeans coat", "organic green tea"]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pems(ca, tmp_path_factory) -> Pems:
    return write_leaf(ca, tmp_path_factory.mktemp("tls"), "server")


@pytest.fixture
async def make_app(loaded, tiny_model_dir):
    apps: list[App] = []

    async def factory(security: SecurityConfig) -> App:
        config = AppConfig(
            engine=engine_config(tiny_model_dir, max_batch_documents=16),
            grpc=GrpcConfig(host="127.0.0.1", port=0, max_connection_age_seconds=0), metrics=MetricsConfig(port=0),
            http=HttpConfig(host="127.0.0.1", port=0),
            security=security,
            grace_seconds=1,
        )
        app = App(config, engine_factory=lambda cfg: Engine(cfg, loaded))
        apps.append(app)
        await app.start()
        await app.load()
        return app

    yield factory
    for app in apps:
        await app.stop()


def tls(pems: Pems, **more) -> SecurityConfig:
    return SecurityConfig(tls_cert=str(pems.cert), tls_key=str(pems.key), **more)


def client(app: App, **kwargs) -> AsyncLycheeClient:
    kwargs.setdefault("timeout", 20)
    return AsyncLycheeClient(f"127.0.0.1:{app.port}", **kwargs)


class ServiceSpy:
    """Counts what reaches the service; a refused call must leave it at zero."""

    def __init__(self, app: App, monkeypatch):
        self.calls: list[str] = []
        for name in ("rerank", "rerank_stream", "model_info"):
            real = getattr(app.service, name)
            monkeypatch.setattr(app.service, name, self._spy(name, real))

    def _spy(self, name, real):
        def spy(*args, **kwargs):
            self.calls.append(name)
            return real(*args, **kwargs)

        return spy


async def stream_requests():
    yield pb.RerankStreamRequest(options=pb.StreamOptions(query=pb.Query(parts=[pb.Part(text="denim")])))
    yield pb.RerankStreamRequest(documents=[pb.Document(parts=[pb.Part(text=DOCS[0])])])


async def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        await call
    return caught.value.code()


async def health_status(target: str, credentials: grpc.ChannelCredentials | None = None) -> int:
    channel = grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
    async with channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=20)
    return response.status


async def reflected_services(target: str, metadata=()) -> list[str]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names: list[str] = []
        async for resp in stub.ServerReflectionInfo(ask(), metadata=metadata, timeout=20):
            names += [s.name for s in resp.list_services_response.service]
    return names


# ---- TLS -------------------------------------------------------------------------------------

async def test_tls_client_with_the_ca_reranks(make_app, pems):
    app = await make_app(tls(pems))
    async with client(app, root_certificates=pems.ca) as c:
        response = await c.rerank("retro denim jacket", DOCS)
    assert sorted(r.index for r in response.results) == [0, 1]


async def test_plaintext_client_cannot_reach_a_tls_server(make_app, pems):
    app = await make_app(tls(pems))
    async with client(app, timeout=5) as c:
        assert await code_of(c.rerank("denim", DOCS)) is grpc.StatusCode.UNAVAILABLE


async def test_a_client_trusting_another_ca_is_refused(make_app, pems, tmp_path):
    app = await make_app(tls(pems))
    stranger = write_leaf(trustme.CA(), tmp_path, "stranger")
    async with client(app, root_certificates=stranger.ca) as c:
        assert await code_of(c.model_info(timeout=5)) is grpc.StatusCode.UNAVAILABLE


# ---- mutual TLS ------------------------------------------------------------------------------

async def test_mutual_tls_refuses_a_client_without_a_certificate(make_app, pems):
    app = await make_app(tls(pems, tls_client_ca=str(pems.ca)))
    async with client(app, root_certificates=pems.ca) as c:
        assert await code_of(c.model_info(timeout=5)) is grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_admits_a_client_certificate_from_the_ca_only(make_app, pems, ca, tmp_path):
    app = await make_app(tls(pems, tls_client_ca=str(pems.ca)))
    ours = write_leaf(ca, tmp_path, "client", "client@example.test")
    async with client(app, root_certificates=pems.ca, certificate_chain=ours.cert, private_key=ours.key) as c:
        assert (await c.model_info()).model
    theirs = write_leaf(trustme.CA(), tmp_path, "intruder", "client@example.test")
    async with client(app, root_certificates=pems.ca, certificate_chain=theirs.cert, private_key=theirs.key) as c:
        assert await code_of(c.model_info(timeout=5)) is grpc.StatusCode.UNAVAILABLE


# ---- bearer tokens ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing authorization metadata"),
        (f"Basic {TOKEN}", "not a bearer token"),
        ("Bearer wrong-token", "unknown bearer token"),
    ],
)
async def test_without_the_right_token_nothing_runs(make_app, pems, monkeypatch, header, message):
    app = await make_app(tls(pems, auth_token=TOKEN))
    spy = ServiceSpy(app, monkeypatch)
    metadata = (("authorization", header),) if header else ()
    async with client(app, root_certificates=pems.ca) as c:
        for call in (
            c.stub.Rerank(make_request("denim", DOCS), metadata=metadata, timeout=20),
            c.stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=metadata, timeout=20),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                await call
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert message in caught.value.details()
        stream = c.stub.RerankStream(stream_requests(), metadata=metadata, timeout=20)
        with pytest.raises(grpc.RpcError) as caught:
            async for _ in stream:
                pass
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert spy.calls == []
    assert app.lifecycle.in_flight == 0


async def test_the_right_token_gets_through_over_plaintext_and_tls(make_app, pems, tmp_path, monkeypatch):
    tokens = tmp_path / "tokens"
    tokens.write_text("# the batch job\nfile-token\n")
    app = await make_app(tls(pems, auth_token=TOKEN, auth_tokens_file=str(tokens)))
    spy = ServiceSpy(app, monkeypatch)
    for token in (TOKEN, "file-token"):
        async with client(app, root_certificates=pems.ca, bearer_token=token) as c:
            response = await c.rerank("retro denim jacket", DOCS)
            assert len(response.results) == 2
            events = [e async for e in c.rerank_stream("denim", [DOCS[:1], DOCS[1:]])]
            assert events[-1].HasField("ranking")
    assert spy.calls == ["rerank", "rerank_stream"] * 2
    plain = await make_app(SecurityConfig(auth_token=TOKEN))
    async with client(plain, bearer_token=TOKEN) as c:
        assert (await c.model_info()).model


async def test_health_needs_no_token(make_app, pems):
    app = await make_app(tls(pems, auth_token=TOKEN))
    credentials = channel_credentials(root_certificates=pems.ca)
    assert await health_status(f"127.0.0.1:{app.port}", credentials) == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_needs_no_token_by_default(make_app):
    app = await make_app(SecurityConfig(auth_token=TOKEN))
    assert "lychee.v1.RerankService" in await reflected_services(f"127.0.0.1:{app.port}")


async def test_reflection_needs_a_token_when_configured(make_app):
    app = await make_app(SecurityConfig(auth_token=TOKEN, auth_reflection=True))
    target = f"127.0.0.1:{app.port}"
    with pytest.raises(grpc.RpcError) as caught:
        await reflected_services(target)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as caught:
        await reflected_services(target, (("authorization", "Bearer wrong"),))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "lychee.v1.RerankService" in await reflected_services(target, (("authorization", f"Bearer {TOKEN}"),))
    assert await health_status(target) == health_pb2.HealthCheckResponse.SERVING


# ---- rotation --------------------------------------------------------------------------------

async def test_a_rotated_certificate_serves_the_next_connection(make_app, tmp_path):
    live = write_leaf(trustme.CA(), tmp_path / "live", "server")
    app = await make_app(tls(live))
    target = f"127.0.0.1:{app.port}"
    old_roots = live.ca.read_bytes()
    assert await health_status(target, channel_credentials(root_certificates=old_roots)) == 1
    rotated = write_leaf(trustme.CA(), tmp_path / "next", "server")
    # Key first, then certificate, as a careless rotation might: a half-rotated pair is skipped.
    for name in ("key", "cert"):
        src, dst = getattr(rotated, name), getattr(live, name)
        dst.write_bytes(src.read_bytes())
        st = dst.stat()
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    await asyncio.sleep(1.1)  # the reloader looks at the files at most once a second
    new_roots = rotated.ca.read_bytes()
    assert await health_status(target, channel_credentials(root_certificates=new_roots)) == 1
    with pytest.raises(grpc.RpcError) as caught:
        await health_status(target, channel_credentials(root_certificates=old_roots))
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


# ---- the CLI ---------------------------------------------------------------------------------

async def test_cli_info_and_rerank_take_ca_and_token(make_app, pems, capsys, monkeypatch):
    monkeypatch.delenv("LYCHEE_TOKEN", raising=False)
    app = await make_app(tls(pems, auth_token=TOKEN))
    base = ["--target", f"127.0.0.1:{app.port}", "--ca", str(pems.ca)]
    # The CLI's client is blocking; the server runs on this loop, so the CLI gets a thread.
    assert await asyncio.to_thread(cli_main, ["info", *base, "--token", TOKEN]) == 0
    assert '"model"' in capsys.readouterr().out
    assert await asyncio.to_thread(cli_main, ["info", *base]) == 1
    assert "UNAUTHENTICATED: missing authorization metadata" in capsys.readouterr().err
    monkeypatch.setenv("LYCHEE_TOKEN", TOKEN)
    code = await asyncio.to_thread(cli_main, ["rerank", *base, "--query", "denim", "--doc", "jeans", "--doc", "tea"])
    assert code == 0
    assert "rank" in capsys.readouterr().out
    assert await asyncio.to_thread(cli_main, ["info", *base, "--cert", str(pems.cert)]) == 2
    assert "--cert and --key go together" in capsys.readouterr().err


async def test_http_speaks_tls_and_takes_the_same_tokens(make_app, pems, tmp_path):
    import ssl

    import httpx

    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    app = await make_app(tls(pems, auth_tokens_file=str(tokens)))
    base = f"https://127.0.0.1:{app.http_port}"
    body = {"query": "denim", "documents": DOCS}
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(pems.ca)), timeout=30) as http:
        assert (await http.get(f"{base}/health")).status_code == 200  # probes need no token
        refused = await http.post(f"{base}/v1/rerank", json=body)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthenticated"
        ok = await http.post(f"{base}/v1/rerank", json=body, headers={"authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and len(ok.json()["results"]) == 2
    async with httpx.AsyncClient(timeout=10) as plain:  # no TLS: refused at the handshake
        with pytest.raises(httpx.HTTPError):
            await plain.get(f"http://127.0.0.1:{app.http_port}/health")
