"""penctl: send one command to a running pen's control port (-C) and print the answer.

    penctl [--json] [--timeout S] host:port|port|/path/to/socket command [args...]

The protocol is pen's: the words joined by spaces and a newline, then read until the
balancer closes. `--json` turns answers with structure (servers, health, recent, mode, status,
single values) into JSON; it works against the C pen too, except for `status`, which asks
pen-lb for `status json`.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys

MAX_ANSWER = 64 << 20          # bytes; a status page of a big client table fits easily


class PenctlError(Exception):
    pass


def connect(target: str, timeout: float) -> socket.socket:
    if "/" in target:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(target)
        except OSError as e:
            sock.close()
            raise PenctlError(f"{target}: {e.strerror or e}") from None
        return sock
    host, sep, port = target.rpartition(":")
    host = host.strip("[]") if sep else ""
    if not port.isdigit():
        raise PenctlError(f"{target}: expected host:port, port or /path/to/socket")
    try:
        return socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout)
    except OSError as e:
        raise PenctlError(f"{target}: {e.strerror or e}") from None


def ask(target: str, line: str, timeout: float = 10.0) -> str:
    """One command, one answer."""
    with connect(target, timeout) as sock:
        try:
            sock.sendall(line.encode() + b"\n")
            chunks, size = [], 0
            while size <= MAX_ANSWER:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except socket.timeout:
            raise PenctlError(f"{target}: no answer within {timeout:g} s") from None
        except OSError as e:
            raise PenctlError(f"{target}: {e.strerror or e}") from None
    return b"".join(chunks).decode("utf-8", "replace")


# --- answers as data (pure) ----------------------------------------------------------------

def _value(word: str):
    try:
        return int(word)
    except ValueError:
        try:
            return float(word)
        except ValueError:
            return word


def parse_pairs(line: str, first: str) -> dict:
    """`V1 k2 v2 k3 v3 ...` (pen's servers and recent lines) -> {first: V1, k2: v2, ...}."""
    words = line.split()
    out = {first: _value(words[0])} if words else {}
    for key, value in zip(words[1::2], words[2::2], strict=False):   # a lone last word: ignored
        out[key] = _value(value)
    return out


def parse_mode(text: str) -> dict:
    words, out = text.split(), {}
    i = 0
    while i < len(words):
        if words[i] == "no" and i + 1 < len(words):
            out[words[i + 1]] = False
            i += 2
        else:
            out[words[i]] = True
            i += 1
    return out


def as_json(command: str, text: str):
    """The answer to `command` as JSON-able data."""
    name = command.split()[0] if command.split() else ""
    lines = text.splitlines()
    if name in ("servers", "health"):
        return [parse_pairs(line, "server") for line in lines if line.strip()]
    if name == "recent":
        return [parse_pairs(line, "address") for line in lines if line.strip()]
    if name == "mode":
        return parse_mode(text)
    if name == "status" and text.lstrip().startswith("{"):
        return json.loads(text)
    if len(lines) == 1:
        return {"answer": _value(lines[0].strip())}
    return {"answer": lines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="penctl", description="Send a command to a running pen's control port.")
    parser.add_argument("--json", action="store_true",
                        help="print the answer as JSON (servers, recent, mode, status, values)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="seconds to wait for the balancer [10]")
    parser.add_argument("target", metavar="host:port|/path")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if not args.command or not " ".join(args.command).strip():
        parser.print_usage(sys.stderr)
        return 1
    line = " ".join(args.command)
    if args.json and line.split() == ["status"]:
        line = "status json"
    try:
        text = ask(args.target, line, args.timeout)
    except PenctlError as e:
        print(f"penctl: {e}", file=sys.stderr)
        return 1
    try:
        if args.json:
            try:
                print(json.dumps(as_json(line, text), indent=1))
            except ValueError:
                print(json.dumps({"answer": text.splitlines()}, indent=1))
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
    except BrokenPipeError:                 # `penctl ... status | head`
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
