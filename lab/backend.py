"""One lab backend: the HTTP, DNS, TFTP and SMTP services of one named server.

Run as `python3 -m pen_lab.backend --name web1 --services http,dns` (in a container or on
a loopback address). Everything it serves is logged to DATA/seen.jsonl.
"""

import argparse
import os
import signal
import sys
import threading

from pen_lab.seenlog import SeenLog

DEFAULT_PORTS = {"http": 80, "dns": 53, "tftp": 69, "smtp": 25}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="pen_lab.backend")
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--answer", default=None, help="address DNS answers with")
    parser.add_argument("--services", default="http,dns,tftp,smtp")
    parser.add_argument("--data", default="/srv/lab")
    for service, port in DEFAULT_PORTS.items():
        parser.add_argument(f"--{service}-port", type=int, default=port)
    args = parser.parse_args(argv)
    args.services = [s for s in args.services.split(",") if s]
    unknown = set(args.services) - set(DEFAULT_PORTS)
    if unknown:
        parser.error(f"--services: unknown service {sorted(unknown)[0]!r}")
    return args


def start(args):
    """Start every asked-for service; return the HTTP server (or None)."""
    seen = SeenLog(os.path.join(args.data, "seen.jsonl"), args.name)
    http = None
    if "dns" in args.services:
        from pen_lab.dnsd import serve_dns
        serve_dns(args.host, args.dns_port, seen, args.answer or args.host)
    if "tftp" in args.services:
        from pen_lab.tftpd import make_tftp_server
        tftp = make_tftp_server(os.path.join(args.data, "tftp"), seen)
        threading.Thread(target=tftp.listen, args=(args.host, args.tftp_port),
                         daemon=True, name="tftp").start()
    if "smtp" in args.services:
        from pen_lab.smtpd import serve_smtp
        serve_smtp(args.host, args.smtp_port, os.path.join(args.data, "maildir"), seen)
    if "http" in args.services:
        from pen_lab.httpd import serve_http
        http = serve_http(args.host, args.http_port, seen)
    return http


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        http = start(args)
    except OSError as err:
        sys.exit(f"pen_lab.backend {args.name}: {err}")
    print(f"backend {args.name} ready: {','.join(args.services)}", flush=True)
    if http is not None:
        http.serve_forever()
    else:
        threading.Event().wait()


if __name__ == "__main__":
    main()
