"""TLS policy: SSL contexts from pen's options (-E -K -G -A -R -L -Z, ssl_* commands).

Building contexts reads files but touches no socket, so it is unit-tested on its own; the
TLS balancer that uses them is tls.py.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import warnings
from collections import OrderedDict

from gevent import ssl as gssl

log = logging.getLogger("pen")

V = ssl.TLSVersion
VERSIONS = (V.TLSv1, V.TLSv1_1, V.TLSv1_2, V.TLSv1_3)    # oldest first
# -L: pen's names (and the modern ones) -> the lowest version accepted. pen's ssl23 meant
# "negotiate the best both sides have"; today that starts at TLS 1.2.
PROTOCOLS = {"ssl23": V.TLSv1_2, "tls1": V.TLSv1, "tls1.1": V.TLSv1_1,
             "tls1.2": V.TLSv1_2, "tls1.3": V.TLSv1_3}
REFUSED = {"ssl2", "ssl3", "sslv2", "sslv3"}
# ssl_option no_X raises the minimum past X (the accepted versions stay one range).
NO_VERSION = {"no_tlsv1": V.TLSv1, "no_tlsv1.1": V.TLSv1_1, "no_tlsv1.2": V.TLSv1_2}
# TLS 1.2 suites when ssl_ciphers is not given (Mozilla's "intermediate" list: forward
# secret AEAD only). TLS 1.3 suites are OpenSSL's and not affected by ssl_ciphers.
MODERN_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384"))
# With -L tls1/tls1.1 (TLS 1.0/1.1 have no AEAD suites): the modern list, then CBC ones.
LEGACY_CIPHERS = MODERN_CIPHERS + ":" + ":".join((
    "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA", "AES128-SHA", "AES256-SHA"))
SNI_CACHE = 1024            # names whose certificate (or its absence) is remembered
_SNI_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_][a-z0-9_-]{0,62})*$")


class TlsError(ValueError):
    """A TLS setting or file that cannot be used: one line naming it."""


def protocol_minimum(name: str) -> ssl.TLSVersion:
    """-L NAME -> the lowest TLS version accepted."""
    name = name.lower()
    if name in REFUSED:
        raise TlsError(f"-L {name}: SSLv2/SSLv3 are broken and refused; "
                       "use tls1.2 (the default) or tls1.3")
    if name not in PROTOCOLS:
        raise TlsError(f"-L {name}: expected one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def minimum_version(state) -> ssl.TLSVersion:
    """-L's minimum, raised past every version an `ssl_option no_tlsvX` excludes."""
    lowest = protocol_minimum(state.ssl_protocol)
    for option in state.ssl_options:
        excluded = NO_VERSION.get(option)
        if excluded is not None and excluded >= lowest:
            lowest = VERSIONS[VERSIONS.index(excluded) + 1]
    return lowest


def terminating(state) -> bool:
    """Clients speak TLS: -E (or an option that only makes sense with it)."""
    return bool(state.ssl_cert or state.ssl_key or state.ssl_require_client)


def wanted(state) -> bool:
    return terminating(state) or bool(state.ssl_backend)


class TlsSocket(gssl.SSLSocket):
    """gevent's SSL socket that says close_notify when an established session closes, so
    clients can tell the end of a response from a cut connection."""

    established = False

    def close(self) -> None:
        if self.established and self._sslobj is not None:
            self.established = False
            try:
                self._sslobj.shutdown()      # sends close_notify; never waits (fd is non-blocking)
            except (OSError, ValueError):
                pass
        super().close()


class _Context(gssl.SSLContext):
    __slots__ = ()
    sslsocket_class = TlsSocket


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str | None, what: str) -> None:
    try:
        ctx.load_cert_chain(cert, key or None)
    except FileNotFoundError:
        missing = cert if not os.path.exists(cert) else key
        raise TlsError(f"{what}: {missing}: no such file") from None
    except OSError as e:        # ssl.SSLError included: a bad PEM, a key that does not match
        reason = getattr(e, "reason", None) or e.strerror or str(e)
        raise TlsError(f"{what}: {cert}{' / ' + key if key else ''}: {reason}") from None


def _load_ca(ctx: ssl.SSLContext, cafile: str | None, cadir: str | None) -> None:
    try:
        ctx.load_verify_locations(cafile=cafile or None, capath=cadir or None)
    except OSError as e:
        reason = getattr(e, "reason", None) or e.strerror or str(e)
        raise TlsError(f"-G/-A {cafile or cadir}: {reason}") from None


def _tune(ctx: ssl.SSLContext, state, minimum: ssl.TLSVersion) -> None:
    """What server and backend contexts share: versions, ciphers, options, ALPN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # -L tls1 is the user's choice
        ctx.minimum_version = minimum
    ciphers = state.ssl_ciphers or MODERN_CIPHERS
    if minimum < V.TLSv1_2:        # OpenSSL 3 refuses TLS 1.0/1.1 above security level 0
        ciphers = (state.ssl_ciphers or LEGACY_CIPHERS) + ":@SECLEVEL=0"
    try:
        ctx.set_ciphers(ciphers)
    except (ssl.SSLError, ValueError):     # ValueError: a NUL or a lone surrogate
        raise TlsError(f"ssl_ciphers {state.ssl_ciphers}: no cipher can be selected") from None
    if state.ssl_compat:
        ctx.options |= ssl.OP_ALL          # -Z: all of OpenSSL's bug workarounds, as in pen
    if state.http:
        ctx.set_alpn_protocols(["http/1.1"])


def server_context(state, cert: str | None = None, key: str | None = None,
                   cafile: str | None = None) -> ssl.SSLContext:
    """The context clients handshake with; cert/key/cafile override -E/-K/-G (for SNI)."""
    if cert is None:
        cert, key = state.ssl_cert, state.ssl_key
    if not cert:
        raise TlsError("TLS needs a certificate: -E cert.pem")
    ctx = _Context(ssl.PROTOCOL_TLS_SERVER)
    _tune(ctx, state, minimum_version(state))
    # Client-initiated renegotiation is refused outright (pen rate-limited it, see
    # ssl_client_renegotiation_interval); TLS 1.3 has none.
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    if "cipher_server_preference" in state.ssl_options:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(ctx, cert, key, "-E")
    cafile = cafile or state.ssl_ca_file
    if cafile or state.ssl_ca_dir:
        _load_ca(ctx, cafile, state.ssl_ca_dir)
    if state.ssl_require_client:
        if not (cafile or state.ssl_ca_dir):
            raise TlsError("-R: client certificates need a CA to verify them: -G cafile or -A cadir")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def backend_context(state) -> ssl.SSLContext:
    """ssl_backend: the context pen connects to servers with. With -G/-A the servers'
    certificates are verified (and their names, as given on the command line); without,
    the link is encrypted but unauthenticated."""
    ctx = _Context(ssl.PROTOCOL_TLS_CLIENT)
    _tune(ctx, state, minimum_version(state))
    if state.ssl_ca_file or state.ssl_ca_dir:
        _load_ca(ctx, state.ssl_ca_file, state.ssl_ca_dir)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class SniCertificates:
    """sni_callback for `ssl_sni_path DIR`: serve DIR/<name>.crt and .key (and verify client
    certificates against DIR/<name>.ca when present) to clients asking for <name>; other
    names get -E's certificate. Contexts are built on first use and remembered (bounded)."""

    def __init__(self, state, directory: str) -> None:
        self.state, self.directory = state, directory
        self.cache: OrderedDict[str, ssl.SSLContext | None] = OrderedDict()

    def context_for(self, name: str) -> ssl.SSLContext | None:
        name = name.lower().rstrip(".")
        if len(name) > 253 or not _SNI_NAME.match(name):
            return None                    # never a path: no '/', no '..'
        if name in self.cache:
            self.cache.move_to_end(name)
            return self.cache[name]
        ctx = None
        base = os.path.join(self.directory, name)
        if os.path.exists(base + ".crt"):
            key = base + ".key" if os.path.exists(base + ".key") else None
            ca = base + ".ca" if os.path.exists(base + ".ca") else None
            try:
                ctx = server_context(self.state, base + ".crt", key, ca)
            except TlsError as e:
                log.error("ssl_sni_path: %s: %s", name, e)
        while len(self.cache) >= SNI_CACHE:
            self.cache.popitem(last=False)
        self.cache[name] = ctx
        return ctx

    def __call__(self, sslobj, name, _ctx):
        if name:
            ctx = self.context_for(name)
            if ctx is not None:
                sslobj.context = ctx
        return None


class Contexts:
    """The contexts a running balancer uses, built together so a reload swaps all or none."""

    def __init__(self, state) -> None:
        self.server = None
        if terminating(state):
            self.server = server_context(state)
            if state.ssl_sni_path:
                if not os.path.isdir(state.ssl_sni_path):
                    raise TlsError(f"ssl_sni_path {state.ssl_sni_path}: not a directory")
                self.server.sni_callback = SniCertificates(state, state.ssl_sni_path)
        self.backend = backend_context(state) if state.ssl_backend else None
