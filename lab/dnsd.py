"""DNS backend (dnslib): answers A queries with its own address, TXT with its name."""

from dnslib import QTYPE, RR, TXT, A
from dnslib.server import BaseResolver, DNSServer


class _NameResolver(BaseResolver):
    def __init__(self, seen, address):
        self.seen = seen
        self.address = address

    def resolve(self, request, handler):
        qname = request.q.qname
        qtype = QTYPE[request.q.qtype]
        self.seen.record("dns", handler.client_address[0], qname=str(qname), qtype=qtype)
        reply = request.reply()
        if qtype in ("A", "ANY"):
            reply.add_answer(RR(qname, QTYPE.A, rdata=A(self.address), ttl=5))
        if qtype in ("TXT", "ANY"):
            reply.add_answer(RR(qname, QTYPE.TXT, rdata=TXT(self.seen.server), ttl=5))
        return reply


class _QuietLogger:
    def __getattr__(self, name):
        return lambda *args: None


def serve_dns(host, port, seen, address):
    """Start UDP and TCP DNS servers in threads; return them."""
    resolver = _NameResolver(seen, address)
    servers = [DNSServer(resolver, address=host, port=port, tcp=tcp, logger=_QuietLogger())
               for tcp in (False, True)]
    for server in servers:
        server.start_thread()
    return servers
