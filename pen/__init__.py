"""pen: a TCP/UDP load balancer on gevent, compatible with Ulric Eriksson's pen."""

__version__ = "0.1.0"
