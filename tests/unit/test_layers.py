"""The package's import graph: no cycles, and layers that point one way.

Every import counts, also those inside functions: a cycle hidden in a function is still
a cycle for whoever reads the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "pen"

# Highest first; a module imports only from its own layer or the layers below it.
LAYERS = {
    "command line": {"__main__", "cli", "penctl", "setup_host", "service"},
    "process": {"runtime", "daemon", "demo", "upgrade", "notify", "group", "member",
                "signals"},
    "input/output": {"balancer", "tcp", "tls", "udp", "dsr", "control", "relay", "dial",
                     "transparent", "sockets", "logs", "mmsg", "greenlets", "vrrp",
                     "probes", "monitor", "metrics", "board", "steering"},
    "pure core": {"__init__", "state", "select", "commands", "hooks", "acl", "addr", "http",
                  "status", "udptable", "dsr_frames", "dsr_slots", "tls_contexts", "errors",
                  "portable", "proxy_protocol", "geoip", "maglev", "evict", "health",
                  "health_commands", "registry"},
}
RANK = {module: rank for rank, modules in enumerate(reversed(LAYERS.values()))
        for module in modules}


def imports(module: str) -> set[str]:
    """The pen modules that module imports, wherever in it the import stands."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.level == 0 and node.module and
                                   node.module.split(".")[0] == "pen"):
                base = (node.module or "").removeprefix("pen").lstrip(".")
                if base:
                    found.add(base.split(".")[0])
                else:                   # from . import a, b: modules, or names of __init__
                    found.update(alias.name if (PACKAGE / f"{alias.name}.py").exists()
                                 else "__init__" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("pen."))
    return found - {module}


def graph() -> dict[str, set[str]]:
    return {path.stem: imports(path.stem) for path in sorted(PACKAGE.glob("*.py"))}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every module that reaches itself, with one path back to it."""
    found = []
    for start in edges:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == start:
                    found.append(path + [start])
                    stack.clear()
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    return found


def test_every_module_has_a_layer():
    assert set(graph()) == set(RANK), "place new modules in LAYERS"


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_layers_point_down():
    upward = [f"{m} ({layer(m)}) imports {n} ({layer(n)})"
              for m, targets in graph().items() for n in targets if RANK[n] > RANK[m]]
    assert upward == []


def layer(module: str) -> str:
    return next(name for name, modules in LAYERS.items() if module in modules)


def test_the_checks_can_fail():
    """The helpers find a cycle and an upward import when there is one."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})[0] == ["a", "b", "c", "a"]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert RANK["cli"] > RANK["runtime"] > RANK["tcp"] > RANK["state"]
