"""The balancer under test: one switch between our pen and the C reference."""

from pen_lab.errors import LabError

CONTROL_PORT = 10999
CONTROL_ACL = 9  # the ACL list the lab reserves for control_acl

PENS = {
    "py": ["python3", "-m", "pen"],
    "c": ["/usr/bin/pen"],
}
PENCTLS = {
    "py": ["python3", "-c", "import sys; from pen.penctl import main; sys.exit(main())"],
    "c": ["/usr/bin/penctl"],
}


def check_kind(kind):
    if kind not in PENS:
        raise LabError(f"--pen: expected one of {', '.join(PENS)}, got {kind!r}")
    return kind


def pen_argv(kind, options, listen, servers, control=str(CONTROL_PORT), as_root=False,
             python=None):
    """pen [options] -f -C CONTROL ... LISTEN SERVER...; control only answers 127.0.0.1."""
    argv = list(PENS[kind])
    if python and kind == "py":
        argv[0] = python
    argv += list(options)
    argv += ["-f", "-C", control,
             "-O", f"acl {CONTROL_ACL} permit 127.0.0.1", "-O", f"control_acl {CONTROL_ACL}"]
    if as_root:
        argv += ["-u", "root"]  # pen refuses a control port as root without -u
    return argv + [listen, *servers]


def penctl_argv(kind, target, words, python=None):
    argv = list(PENCTLS[kind])
    if python and kind == "py":
        argv[0] = python
    return argv + [target, *words]


def shown(argv):
    """A command line as a learner would type it."""
    if argv[:2] == ["python3", "-c"] or (len(argv) > 1 and argv[1] == "-c"):
        argv = ["penctl", *argv[3:]]
    return " ".join(a if a and " " not in a else repr(a) for a in argv)
