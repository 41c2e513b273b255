"""security.py without a server: start-up checks, the token check, token files and their reload,
the TLS options for the HTTP side, and the interceptor's exemption rule."""

from __future__ import annotations

import hmac
import os
import ssl
from pathlib import Path

import pytest
import trustme

from lychee_grpc import security
from lychee_grpc.cli.serve import main as serve_main
from lychee_grpc.config import AppConfig, SecurityConfig, build, from_env
from lychee_grpc.rpc.interceptors import needs_token
from lychee_grpc.security import (
    CertificateReloader,
    SecurityConfigError,
    TlsFiles,
    TokenAuthenticator,
    parse_token_file,
    parse_token_list,
    problems,
)
from lychee_grpc.service.errors import ErrorKind, Unauthenticated, kind_of

from ..tls import Pems, write_leaf

SECRET = "s3cr3t-token_A.b~c+d/e=="


@pytest.fixture(scope="module")
def pems(tmp_path_factory) -> Pems:
    return write_leaf(trustme.CA(), tmp_path_factory.mktemp("tls"), "server")


def touch_later(path: Path) -> None:
    """Moves the mtime forward so a change is seen even within the filesystem's time resolution."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


# ---- the token check -------------------------------------------------------------------------

def refusal(auth: TokenAuthenticator, header: str | None) -> str:
    with pytest.raises(Unauthenticated) as caught:
        auth.check(header)
    assert kind_of(caught.value) is ErrorKind.UNAUTHENTICATED
    return str(caught.value)


def test_a_configured_bearer_token_passes_with_any_scheme_case():
    auth = TokenAuthenticator([SECRET, "other"])
    auth.check(f"Bearer {SECRET}")
    auth.check(f"bearer {SECRET}")
    auth.check("BEARER other")


def test_missing_header_says_missing():
    auth = TokenAuthenticator([SECRET])
    assert "missing" in refusal(auth, None)
    assert "missing" in refusal(auth, "   ")


@pytest.mark.parametrize("header", [f"Basic {SECRET}", SECRET, "Bearer", "Bearer   "])
def test_a_header_that_is_not_a_bearer_token_says_so_without_echoing_it(header):
    message = refusal(TokenAuthenticator([SECRET]), header)
    assert "not a bearer token" in message
    assert SECRET not in message


def test_an_unknown_token_is_refused_without_echoing_it():
    sent = "nearly-" + SECRET
    message = refusal(TokenAuthenticator([SECRET]), f"Bearer {sent}")
    assert message == "unknown bearer token"
    assert sent not in message


def test_every_configured_token_is_compared_even_after_a_match(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", counting)
    auth = TokenAuthenticator(["first", "second", "third"])
    auth.check("Bearer first")
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(Unauthenticated):
        auth.check("Bearer nope")
    assert len(calls) == 3


def test_no_token_configured_means_auth_off():
    assert TokenAuthenticator.from_config(SecurityConfig()) is None


# ---- where tokens come from ------------------------------------------------------------------

def test_token_file_skips_comments_and_blank_lines():
    text = "# production\nalpha\n\n   beta   # the batch job\n#gamma\n"
    assert parse_token_file(text, "t.txt") == ["alpha", "beta"]


def test_a_token_that_cannot_be_sent_is_named_by_line_not_shown():
    with pytest.raises(SecurityConfigError) as caught:
        parse_token_file("alpha\nhas space\n", "t.txt")
    assert "t.txt line 2" in str(caught.value)
    assert "has space" not in str(caught.value)


def test_token_list_is_comma_separated():
    assert parse_token_list(" a, b ,,c ") == ["a", "b", "c"]
    assert parse_token_list(None) == []
    with pytest.raises(SecurityConfigError, match="item 2"):
        parse_token_list("a,b\tc")


def test_file_and_variable_tokens_both_pass(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("from-file\n")
    auth = TokenAuthenticator.from_config(SecurityConfig(auth_tokens_file=str(path), auth_token="from-env,x"))
    assert auth is not None
    for token in ("from-file", "from-env", "x"):
        auth.check(f"Bearer {token}")


def test_token_file_is_reread_when_it_changes(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("old\n")
    auth = TokenAuthenticator(file=str(path), reload_interval=0)
    auth.check("Bearer old")
    path.write_text("new\n")
    touch_later(path)
    auth.check("Bearer new")
    assert refusal(auth, "Bearer old") == "unknown bearer token"


def test_token_file_is_not_reread_within_the_interval(tmp_path):
    now = [0.0]
    path = tmp_path / "tokens"
    path.write_text("old\n")
    auth = TokenAuthenticator(file=str(path), reload_interval=5, clock=lambda: now[0])
    path.write_text("new\n")
    touch_later(path)
    now[0] = 4.0
    auth.check("Bearer old")
    now[0] = 5.0
    auth.check("Bearer new")


def test_a_broken_token_file_edit_keeps_the_previous_tokens(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("old\n")
    auth = TokenAuthenticator(file=str(path), reload_interval=0)
    path.write_text("bad token\n")
    touch_later(path)
    auth.check("Bearer old")
    path.unlink()
    auth.check("Bearer old")


def test_an_emptied_token_file_refuses_everyone(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("old\n")
    auth = TokenAuthenticator(file=str(path), reload_interval=0)
    path.write_text("# all revoked\n")
    touch_later(path)
    assert refusal(auth, "Bearer old") == "unknown bearer token"


# ---- start-up checks -------------------------------------------------------------------------

def test_complete_settings_have_no_problems(pems, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("t\n")
    config = SecurityConfig(tls_cert=str(pems.cert), tls_key=str(pems.key), tls_client_ca=str(pems.ca),
                            auth_tokens_file=str(tokens), auth_token="u")
    assert problems(config) == []
    assert problems(SecurityConfig()) == []


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"tls_cert": "CERT"}, "--tls-cert and --tls-key go together"),
        ({"tls_key": "KEY"}, "--tls-cert and --tls-key go together"),
        ({"tls_client_ca": "CA"}, "--tls-client-ca (mutual TLS) needs --tls-cert"),
        ({"tls_cert": "CERT", "tls_key": "/nonexistent/key.pem"}, "--tls-key /nonexistent/key.pem: cannot read it"),
        ({"tls_cert": "CERT", "tls_key": "CERT"}, "not a PEM certificate chain and its matching private key"),
        ({"tls_cert": "CERT", "tls_key": "KEY", "tls_client_ca": "KEY"}, "--tls-client-ca"),
        ({"auth_tokens_file": "/nonexistent/tokens"}, "--auth-tokens-file /nonexistent/tokens: cannot read it"),
        ({"auth_tokens_file": "EMPTY"}, "holds no tokens"),
    ],
)
def test_unusable_settings_are_named(pems, tmp_path, fields, expected):
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n")
    paths = {"CERT": str(pems.cert), "KEY": str(pems.key), "CA": str(pems.ca), "EMPTY": str(empty)}
    config = SecurityConfig(**{k: paths.get(v, v) for k, v in fields.items()})
    found = problems(config)
    assert any(expected in p for p in found), found


def test_tls_and_token_problems_are_reported_together(tmp_path):
    found = problems(SecurityConfig(tls_cert="c.pem", auth_tokens_file=str(tmp_path / "missing")))
    assert any("--tls-cert and --tls-key go together" in p for p in found), found
    assert any("--auth-tokens-file" in p for p in found), found


def test_a_key_that_does_not_match_the_certificate_is_a_problem(pems, tmp_path):
    other = write_leaf(trustme.CA(), tmp_path, "other")
    found = problems(SecurityConfig(tls_cert=str(pems.cert), tls_key=str(other.key)))
    assert len(found) == 1 and "matching private key" in found[0]


def test_serve_exits_2_naming_the_flag(capsys, tmp_path):
    code = serve_main(["--model", str(tmp_path), "--tls-cert", str(tmp_path / "missing.pem")])
    assert code == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err


def test_a_bad_token_variable_never_shows_the_token(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LYCHEE_AUTH_TOKEN", "ok,not ok")
    code = serve_main(["--model", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "--auth-token (LYCHEE_AUTH_TOKEN) item 2" in err
    assert "not ok" not in err


def test_the_token_variable_is_hidden_in_help(capsys, monkeypatch):
    monkeypatch.setenv("LYCHEE_AUTH_TOKEN", SECRET)
    with pytest.raises(SystemExit):
        serve_main(["--help"])
    assert SECRET not in capsys.readouterr().out


def test_settings_land_in_the_security_group():
    values = from_env({"LYCHEE_TLS_CERT": "c.pem", "LYCHEE_TLS_KEY": "k.pem", "LYCHEE_TLS_CLIENT_CA": "ca.pem",
                       "LYCHEE_AUTH_TOKENS_FILE": "t", "LYCHEE_AUTH_TOKEN": "a,b",
                       "LYCHEE_AUTH_REFLECTION": "true"})
    assert build(values).security == SecurityConfig("c.pem", "k.pem", "ca.pem", "t", "a,b", auth_reflection=True)
    assert AppConfig().security.auth_reflection is False


# ---- TLS material ----------------------------------------------------------------------------

def test_uvicorn_options_follow_the_settings(pems):
    assert security.uvicorn_ssl_options(SecurityConfig()) == {}
    tls = SecurityConfig(tls_cert=str(pems.cert), tls_key=str(pems.key))
    assert security.uvicorn_ssl_options(tls) == {"ssl_certfile": str(pems.cert), "ssl_keyfile": str(pems.key)}
    mutual = SecurityConfig(tls_cert=str(pems.cert), tls_key=str(pems.key), tls_client_ca=str(pems.ca))
    options = security.uvicorn_ssl_options(mutual)
    assert options["ssl_ca_certs"] == str(pems.ca)
    assert options["ssl_cert_reqs"] == ssl.CERT_REQUIRED


def test_ssl_context_requires_a_client_certificate_only_with_a_client_ca(pems):
    assert security.server_ssl_context(SecurityConfig()) is None
    plain = security.server_ssl_context(SecurityConfig(tls_cert=str(pems.cert), tls_key=str(pems.key)))
    assert plain is not None and plain.verify_mode == ssl.CERT_NONE
    mutual = security.server_ssl_context(
        SecurityConfig(tls_cert=str(pems.cert), tls_key=str(pems.key), tls_client_ca=str(pems.ca)))
    assert mutual is not None and mutual.verify_mode == ssl.CERT_REQUIRED


def test_reloader_answers_none_until_the_files_change(tmp_path):
    first = write_leaf(trustme.CA(), tmp_path, "server")
    reloader = CertificateReloader(TlsFiles(str(first.cert), str(first.key)), min_interval=0)
    assert reloader() is None
    write_leaf(trustme.CA(), tmp_path, "server")  # same paths, new pair
    touch_later(first.cert)
    assert reloader() is not None
    assert reloader() is None
    assert reloader.reloads == 1


def test_reloader_keeps_the_certificate_while_the_pair_is_half_rotated(tmp_path):
    first = write_leaf(trustme.CA(), tmp_path, "server")
    reloader = CertificateReloader(TlsFiles(str(first.cert), str(first.key)), min_interval=0)
    fresh = write_leaf(trustme.CA(), tmp_path / "next", "server")
    first.cert.write_bytes(fresh.cert.read_bytes())  # the certificate first, the key later
    touch_later(first.cert)
    assert reloader() is None
    first.key.write_bytes(fresh.key.read_bytes())
    touch_later(first.key)
    assert reloader() is not None


# ---- which methods need a token --------------------------------------------------------------

@pytest.mark.parametrize(
    ("method", "reflection_needs_token", "expected"),
    [
        ("/lychee.v1.RerankService/Rerank", False, True),
        ("/lychee.v1.RerankService/Explain", False, True),
        ("/grpc.health.v1.Health/Check", True, False),
        ("/grpc.health.v1.Health/Watch", True, False),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", False, False),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True, True),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", True, True),
        ("/some.future.Service/Method", False, True),
    ],
)
def test_only_health_and_optionally_reflection_are_exempt(method, reflection_needs_token, expected):
    assert needs_token(method, reflection_needs_token) is expected
