"""TLS material and bearer tokens for every transport.

- `problems(config)`: start-up checks (pairs, readable files, a key that matches its certificate,
  tokens that a client can send), each a sentence naming the flag; the CLI exits 2 on any.
- `grpc_server_credentials(config)`: grpc credentials that re-read the certificate files when they
  change (grpc asks before every new connection's handshake), mutual TLS when a client CA is set.
- `uvicorn_ssl_options(config)` / `server_ssl_context(config)`: the same material for the HTTP server.
- `Authenticator`: what both transports call (the gRPC interceptor, the HTTP middleware);
  `TokenAuthenticator` implements it: `Bearer <token>` compared in constant time against every
  configured token, the token file re-read when it changes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from .config import SecurityConfig
from .service.errors import Unauthenticated

log = logging.getLogger(__name__)

# RFC 6750 b64token: what may follow "Bearer " in a header.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class SecurityConfigError(ValueError):
    """TLS or token settings that cannot work; the message names the flag."""


# ---- start-up checks -------------------------------------------------------------------------

def problems(config: SecurityConfig) -> list[str]:
    """Every reason the security settings cannot work, as sentences naming the flags."""
    out: list[str] = []
    cert, key, ca = config.tls_cert, config.tls_key, config.tls_client_ca
    if bool(cert) != bool(key):
        out.append("--tls-cert and --tls-key go together: give both or neither")
    if ca and not cert:
        out.append("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key: the server must speak TLS first")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", ca)):
        if path:
            problem = _unreadable(flag, path)
            if problem:
                out.append(problem)
    tls_loadable = not out
    if tls_loadable and cert and key:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            out.append(f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate chain and its matching "
                       f"private key ({exc.reason or exc})")
    if tls_loadable and ca:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            out.append(f"--tls-client-ca {ca}: not a PEM CA bundle ({exc.reason or exc})")
    try:
        tokens = configured_tokens(config)
    except SecurityConfigError as exc:
        out.append(str(exc))
    else:
        if config.auth_tokens_file and not tokens:
            out.append(f"--auth-tokens-file {config.auth_tokens_file} holds no tokens: every request would be "
                       "refused")
    return out


def _unreadable(flag: str, path: str) -> str | None:
    try:
        with open(path, "rb"):
            return None
    except OSError as exc:
        return f"{flag} {path}: cannot read it ({exc.strerror or exc})"


# ---- TLS -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    client_ca: str | None = None

    @classmethod
    def of(cls, config: SecurityConfig) -> TlsFiles | None:
        if not config.tls_cert or not config.tls_key:
            return None
        return cls(config.tls_cert, config.tls_key, config.tls_client_ca or None)

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.cert, self.key) + ((self.client_ca,) if self.client_ca else ())


def _signature(paths: Iterable[str]) -> tuple[tuple[int, int, int], ...]:
    # stat follows symlinks, so a Kubernetes secret volume's `..data` swap changes it too.
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class CertificateReloader:
    """grpc's certificate-configuration fetcher: called before every new connection's handshake,
    it answers None (keep the current certificate) unless a file changed since the last load. A
    half-rotated pair (new certificate, old key) is not handed to grpc: the current certificate
    stays until the pair matches again."""

    def __init__(self, files: TlsFiles, min_interval: float = 1.0):
        self.files = files
        self.min_interval = min_interval  # at most one stat of the files per interval
        self._lock = threading.Lock()
        self._checked = 0.0
        self._signature = _signature(files.paths)
        self.initial = self._configuration()
        self.reloads = 0

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        f = self.files
        # Validate the pair the way the HTTP side loads it, so a mismatched key is refused here
        # rather than failing every handshake.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(f.cert, f.key)
        root = Path(f.client_ca).read_bytes() if f.client_ca else None
        return grpc.ssl_server_certificate_configuration(
            [(Path(f.key).read_bytes(), Path(f.cert).read_bytes())], root_certificates=root
        )

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        now = time.monotonic()
        with self._lock:
            if now - self._checked < self.min_interval:
                return None
            self._checked = now
            try:
                signature = _signature(self.files.paths)
            except OSError as exc:
                log.warning("TLS files unreadable, keeping the current certificate: %s", exc)
                return None
            if signature == self._signature:
                return None
            try:
                configuration = self._configuration()
            except (OSError, ssl.SSLError) as exc:
                log.warning("TLS files changed but do not load (%s); keeping the current certificate until "
                            "they do", exc)
                return None
            self._signature = signature
            self.reloads += 1
            log.info("TLS certificate reloaded from %s", self.files.cert)
            return configuration


def grpc_server_credentials(config: SecurityConfig, min_interval: float = 1.0) -> grpc.ServerCredentials | None:
    """None when TLS is off; mutual TLS (a client certificate signed by --tls-client-ca required)
    when a client CA is set."""
    files = TlsFiles.of(config)
    if files is None:
        return None
    reloader = CertificateReloader(files, min_interval)
    return grpc.dynamic_ssl_server_credentials(
        # grpc's stub omits the None a fetcher returns to keep the current certificate.
        reloader.initial, reloader, require_client_authentication=files.client_ca is not None  # pyright: ignore[reportArgumentType]
    )


def uvicorn_ssl_options(config: SecurityConfig) -> dict[str, Any]:  # uvicorn.Config keywords, str and int
    """Keyword arguments for `uvicorn.Config`/`uvicorn.run`: {} when TLS is off."""
    files = TlsFiles.of(config)
    if files is None:
        return {}
    options: dict[str, Any] = {"ssl_certfile": files.cert, "ssl_keyfile": files.key}
    if files.client_ca:
        options.update(ssl_ca_certs=files.client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def server_ssl_context(config: SecurityConfig) -> ssl.SSLContext | None:
    """An `ssl.SSLContext` for servers that take one (asyncio, hypercorn); None when TLS is off."""
    files = TlsFiles.of(config)
    if files is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert, files.key)
    if files.client_ca:
        context.load_verify_locations(cafile=files.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


# ---- bearer tokens ---------------------------------------------------------------------------

def _valid(token: str, where: str) -> str:
    # The message says where the token is, never the token itself.
    if not _TOKEN.fullmatch(token):
        raise SecurityConfigError(f"{where}: a bearer token may hold only letters, digits and -._~+/ "
                                  "(then trailing =)")
    return token


def parse_token_file(text: str, name: str) -> list[str]:
    """One token per line; `#` starts a comment (no bearer token contains one); blank lines skipped."""
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.split("#", 1)[0].strip()
        if token:
            tokens.append(_valid(token, f"--auth-tokens-file {name} line {number}"))
    return tokens


def parse_token_list(value: str | None) -> list[str]:
    """--auth-token / LYCHEE_AUTH_TOKEN: comma-separated."""
    tokens = [t.strip() for t in (value or "").split(",")]
    return [_valid(t, f"--auth-token (LYCHEE_AUTH_TOKEN) item {i}") for i, t in enumerate(tokens, 1) if t]


def read_token_file(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecurityConfigError(f"--auth-tokens-file {path}: cannot read it ({exc})") from None
    return parse_token_file(text, path)


def configured_tokens(config: SecurityConfig) -> list[str]:
    tokens = parse_token_list(config.auth_token)
    if config.auth_tokens_file:
        tokens += read_token_file(config.auth_tokens_file)
    return tokens


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison's time independent of the tokens' lengths.
    return hashlib.sha256(token.encode()).digest()


class Authenticator(Protocol):
    def check(self, authorization: str | None) -> None:
        """Raises Unauthenticated unless the header carries a valid bearer token."""
        ...


class TokenAuthenticator(Authenticator):
    """`check("Bearer <token>")` passes when the token is one of `tokens` or of the token file's;
    otherwise raises Unauthenticated saying what was wrong, never echoing what was sent."""

    def __init__(self, tokens: Iterable[str] = (), file: str | None = None, reload_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self._fixed = [_digest(t) for t in tokens]
        self.file = file
        self.reload_interval = reload_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._file_digests: list[bytes] = []
        self._file_signature: tuple | None = None
        self._checked = float("-inf")
        if file is not None:
            self._file_digests = [_digest(t) for t in read_token_file(file)]
            self._file_signature = _signature([file])
            self._checked = clock()

    @classmethod
    def from_config(cls, config: SecurityConfig) -> TokenAuthenticator | None:
        """None when no token is configured (auth off)."""
        if not config.auth_token and not config.auth_tokens_file:
            return None
        return cls(parse_token_list(config.auth_token), config.auth_tokens_file)

    def _digests(self) -> list[bytes]:
        if self.file is None:
            return self._fixed
        now = self._clock()
        with self._lock:
            if now - self._checked >= self.reload_interval:
                self._checked = now
                self._reload()
            return self._fixed + self._file_digests

    def _reload(self) -> None:
        assert self.file is not None
        try:
            signature = _signature([self.file])
            if signature == self._file_signature:
                return
            digests = [_digest(t) for t in read_token_file(self.file)]
        except (OSError, SecurityConfigError) as exc:
            # A broken edit keeps the tokens that worked; an emptied file empties them (fail closed).
            log.error("bearer tokens not reloaded, keeping the previous ones: %s", exc)
            return
        self._file_signature = signature
        self._file_digests = digests
        log.info("bearer tokens reloaded from %s (%d tokens)", self.file, len(digests))

    def check(self, authorization: str | None) -> None:
        if authorization is None or not authorization.strip():
            raise Unauthenticated("missing authorization metadata: send 'authorization: Bearer <token>'")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("the authorization metadata is not a bearer token: send "
                                  "'authorization: Bearer <token>'")
        presented = _digest(token)
        matched = False
        for digest in self._digests():  # every token compared: no early exit
            matched |= hmac.compare_digest(presented, digest)
        if not matched:
            raise Unauthenticated("unknown bearer token")
