"""The TLS front end: terminates clients' TLS (-E) and, with ssl_backend, re-encrypts to
the servers; the contexts come from tls_contexts.py.

The handshake runs in the connection's greenlet, bounded by the connect timeout (-t), so a
client that never says hello costs one greenlet for -t seconds and never the accept loop.
"""

from __future__ import annotations

import logging

from .sockets import layered
from .tcp import TcpBalancer
from .tls_contexts import Contexts

log = logging.getLogger("pen")


class TlsBalancer(TcpBalancer):
    """TcpBalancer whose clients speak TLS (-E) and/or whose servers do (ssl_backend)."""

    def __init__(self, state, sock, conn_log=None, *, contexts: Contexts | None = None,
                 **listening) -> None:
        super().__init__(state, sock, conn_log, **listening)
        self.use(contexts or Contexts(state))
        if self.contexts.server is not None:
            self.proto = "https"

    def use(self, contexts: Contexts) -> None:
        self.contexts = contexts
        self.layered_clients = contexts.server is not None
        self.layered_servers = contexts.backend is not None

    def reload(self) -> None:
        """Re-read certificates and keys; raises TlsError and keeps the old ones if any fail.
        Connections already established keep the session they have."""
        self.use(Contexts(self.state))

    def wrap_client(self, client, address):
        ctx = self.contexts.server
        if ctx is None:
            return client
        sock, tls = layered(client, self.state.timeout), None
        try:
            tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            tls.do_handshake()
        except BaseException as e:    # SSLError, timeout, reset, closed meanwhile, Closed
            (tls or sock).close()
            if isinstance(e, (OSError, ValueError)):
                return self._failed(address, e)
            raise
        tls.established = True
        return tls

    def _failed(self, address, error):
        """A client whose handshake failed (bad bytes, no hello in time, a refused
        certificate): counted in state.counters["tls_failures"]."""
        self.state.count("tls_failures")
        peer = address[0] if isinstance(address, tuple) else "a UNIX client"
        log.info("tls: handshake with %s failed: %s (%d TLS failures)", peer,
                 getattr(error, "reason", None) or error or "timeout",
                 self.state.counters["tls_failures"])
        return None

    def wrap_upstream(self, sock, server):
        ctx = self.contexts.backend
        if ctx is None:
            return sock
        try:
            tls = ctx.wrap_socket(layered(sock, self.state.timeout),
                                  server_hostname=server.endpoint.host,
                                  do_handshake_on_connect=False)
        except ValueError as e:          # check_hostname without a name (a UNIX socket)
            raise OSError(f"ssl_backend: {e}") from None
        try:
            tls.do_handshake()           # bounded by the connect timeout set on sock
        except BaseException:
            tls.close()
            raise
        tls.established = True
        return tls

