"""A client that never stops asking: RATE requests a second for DURATION seconds, each timed.

    python3 -m pen_lab.probe --url http://10.89.1.100/ [--rate 20] [--duration 20]
                             [--timeout 2] [--source ADDR ...]

Runs in a client container during the HA scenarios. Requests leave on schedule, whether or
not the earlier ones were answered (a dead balancer must not slow the clock), each in its
own thread; at most RATE x TIMEOUT are in flight. With --source the requests take the
addresses in turn. Prints `start T` at once, then one line per request, in order sent:
SENT ANSWERED SOURCE BODY, where ANSWERED is 0 and BODY starts with ERROR when it failed.
"""

import argparse
import http.client
import sys
import threading
import time
from urllib.parse import urlsplit


def ask(host, port, path, source, timeout):
    """(time answered or 0, the body's first line or ERROR ...)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request("GET", path)
        body = conn.getresponse().read(4096).decode(errors="replace")
        return time.time(), (body.strip().splitlines() or ["ERROR empty answer"])[0]
    except (OSError, http.client.HTTPException) as err:
        return 0.0, f"ERROR {type(err).__name__}: {err}".replace("\n", " ")
    finally:
        conn.close()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="pen_lab.probe")
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--timeout", type=float, default=2)
    parser.add_argument("--source", action="append", default=[])
    args = parser.parse_args(argv)
    if not (0 < args.rate <= 200 and 0 < args.duration <= 600 and 0 < args.timeout <= 10):
        parser.error("--rate 0..200, --duration 0..600 and --timeout 0..10")
    url = urlsplit(args.url)
    results = {}
    threads = []

    def one(number, sent, source):
        results[number] = (sent, *ask(url.hostname, url.port or 80, url.path or "/", source,
                                      args.timeout), source or "-")

    began = time.time()
    print(f"start {began:.6f}", flush=True)
    for number in range(int(args.rate * args.duration)):
        due = began + number / args.rate
        time.sleep(max(0.0, due - time.time()))
        source = args.source[number % len(args.source)] if args.source else None
        thread = threading.Thread(target=one, args=(number, time.time(), source), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(args.timeout + 5)
    for number in sorted(results):
        sent, answered, body, source = results[number]
        print(f"{sent:.6f} {answered:.6f} {source} {body}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
