"""Build the lab's images offline: a Debian bookworm base and the app image on top.

Base, in order: an image the user names (--base / PEN_LAB_BASE) that is already present;
our own cached base; debian:bookworm pulled from a reachable registry; else debootstrap +
`docker import`. The app image installs wheels built on the host (containers cannot reach
PyPI) and is tagged with a hash of the project source, so an unchanged tree is instant.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import docker.errors

from pen_lab.errors import LabError

LABEL = "pen-lab"
BASE_TAG = "pen-lab-base:bookworm"
APP_REPO = "pen-lab"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ["python3", "iproute2", "iptables", "curl", "dnsutils", "tftp-hpa", "swaks",
                 "pen", "procps", "netbase", "openssl", "ca-certificates", "keepalived"]
PACKAGES_LABEL = f"{LABEL}.packages"  # a cached base lacking one of them is rebuilt
SERVICE_WHEELS = ["dnslib", "tftpy", "aiosmtpd"]

APP_DOCKERFILE = """\
FROM {base}
COPY wheels /tmp/wheels
COPY pip.whl /tmp/pip.whl
RUN python3 /tmp/pip.whl/pip install --quiet --no-index --no-cache-dir \\
        --break-system-packages --find-links /tmp/wheels pen-lb {services} \\
    && rm -rf /tmp/wheels /tmp/pip.whl \\
    && python3 -c "import pen, pen_lab.backend, dnslib, tftpy, aiosmtpd, gevent"
"""

PULLED_DOCKERFILE = """\
FROM debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends {packages} \\
    && rm -rf /var/lib/apt/lists/*
"""


def find_source(explicit=None):
    """The pen-lb source tree the lab builds from: --source, PEN_LAB_SOURCE, or cwd upwards."""
    candidates = [Path(explicit)] if explicit else []
    if not explicit and os.environ.get("PEN_LAB_SOURCE"):
        candidates.append(Path(os.environ["PEN_LAB_SOURCE"]))
    if not candidates:
        here = Path.cwd().resolve()
        candidates = [here, *here.parents, Path(__file__).resolve().parent.parent]
    for root in candidates:
        pyproject = root / "pyproject.toml"
        if pyproject.is_file() and 'name = "pen-lb"' in pyproject.read_text():
            return root.resolve()
    where = explicit or "the current directory or its parents"
    raise LabError(f"--source: no pen-lb source tree (pyproject.toml) in {where}")


def source_files(root):
    yield root / "pyproject.toml"
    for package in ("pen", "lab"):
        for path in sorted((root / package).rglob("*")):
            parts = set(path.relative_to(root).parts)
            if path.is_file() and not parts & {"__pycache__", ".cache"} \
                    and path.suffix not in (".pyc", ".pyo"):
                yield path


def content_hash(root, base_id):
    digest = hashlib.sha256(base_id.encode())
    digest.update(APP_DOCKERFILE.encode())
    for path in source_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _image(client, name):
    try:
        return client.images.get(name)
    except docker.errors.ImageNotFound:
        return None


def ensure_base(client, say, base=None):
    """Return the base image to build on, making one if needed."""
    base = base or os.environ.get("PEN_LAB_BASE")
    if base:
        image = _image(client, base)
        if image is None:
            raise LabError(f"--base: image {base!r} is not present on this docker engine")
        say(f"base image: {base} (configured)")
        return image
    image = _image(client, BASE_TAG)
    if image is not None:
        listed = (image.labels or {}).get(PACKAGES_LABEL)
        missing = [p for p in BASE_PACKAGES if p not in (listed or "").split(",")]
        if not missing:
            say(f"base image: {BASE_TAG} (cached)")
            return image
        say(f"base image: {BASE_TAG} " + (f"lacks {', '.join(missing)}" if listed else
                                           "does not list its packages") + ": building it again")
    image = _base_from_registry(client, say)
    return image if image is not None else _base_from_debootstrap(client, say)


def _base_from_registry(client, say):
    try:
        client.images.pull("debian", tag="bookworm")
    except docker.errors.APIError:
        say("no container registry reachable: building the base with debootstrap")
        return None
    say("pulled debian:bookworm; installing the lab's packages in it")
    with tempfile.TemporaryDirectory(prefix="pen-lab-") as context:
        Path(context, "Dockerfile").write_text(
            PULLED_DOCKERFILE.format(packages=" ".join(BASE_PACKAGES)))
        image, _ = client.images.build(path=context, tag=BASE_TAG, rm=True,
                                       labels={LABEL: "1", PACKAGES_LABEL: ",".join(BASE_PACKAGES)})
    return image


def _base_from_debootstrap(client, say):
    if shutil.which("debootstrap") is None:
        raise LabError("no base image, no registry and no debootstrap: "
                       "install debootstrap or pass --base IMAGE")
    if os.geteuid() != 0:
        raise LabError("building the base image with debootstrap needs root")
    with tempfile.TemporaryDirectory(prefix="pen-lab-base-") as work:
        rootfs = Path(work, "rootfs")
        say(f"debootstrap bookworm (minbase + {', '.join(BASE_PACKAGES)}) ...")
        _run(["debootstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES),
              "bookworm", str(rootfs), MIRROR], "debootstrap")
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
        tarball = Path(work, "rootfs.tar")
        _run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], "tar")
        shutil.rmtree(rootfs)
        say(f"docker import -> {BASE_TAG}")
        repo, tag = BASE_TAG.split(":")
        client.api.import_image_from_file(
            str(tarball), repository=repo, tag=tag,
            changes=[f"LABEL {LABEL}=1", f"LABEL {PACKAGES_LABEL}={','.join(BASE_PACKAGES)}",
                     "ENV LANG=C.UTF-8", 'CMD ["bash"]'])
    return client.images.get(BASE_TAG)


def _run(argv, what):
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-15:])
        raise LabError(f"{what} failed (exit {done.returncode}):\n{tail}")


def build_wheels(root, dest, say):
    """Wheels for this project and the lab services, built on the host."""
    say(f"pip wheel {root} + {', '.join(SERVICE_WHEELS)} (on the host)")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(dest),
          str(root), *SERVICE_WHEELS], "pip wheel")
    tools = Path(dest).parent / "tools"
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary",
          ":all:", "--dest", str(tools), "pip"], "pip download pip")
    pip_wheel = next(tools.glob("pip-*.whl"))
    shutil.copy(pip_wheel, Path(dest).parent / "pip.whl")


def ensure_image(client, say, source=None, base=None):
    """Return the tag of an app image matching the current source tree, building it if needed."""
    root = find_source(source)
    base_image = ensure_base(client, say, base)
    tag = f"{APP_REPO}:{content_hash(root, base_image.id)}"
    if _image(client, tag) is not None:
        say(f"app image: {tag} (up to date with {root})")
        return tag
    with tempfile.TemporaryDirectory(prefix="pen-lab-app-") as context:
        build_wheels(root, Path(context, "wheels"), say)
        Path(context, "Dockerfile").write_text(APP_DOCKERFILE.format(
            base=base_image.id, services=" ".join(SERVICE_WHEELS)))
        say(f"docker build -> {tag} (no network)")
        try:
            client.images.build(path=context, tag=tag, rm=True, network_mode="none",
                                labels={LABEL: "1"})
        except docker.errors.BuildError as err:
            lines = [entry.get("stream", "") for entry in err.build_log]
            raise LabError(f"app image build failed: {err}\n{''.join(lines)[-2000:]}") from None
    _forget_older_apps(client, tag)
    return tag


def _forget_older_apps(client, keep):
    """App images of earlier source trees are dead weight; drop those no container uses."""
    for image in client.images.list(name=APP_REPO, filters={"label": LABEL}):
        if keep not in image.tags:
            try:
                client.images.remove(image.id)
            except docker.errors.APIError:
                pass  # still used by a container: `pen-lab down --images` will take it
