"""TFTP through -U -O transparent: the server sees the client's own address, and the transfer
still follows the server's new port (its transfer ID) back through pen.

    client ns  c0 ──── p0  pen ns  p1 ──── s0  server ns
    10.78.1.2/24    10.78.1.1   10.78.2.1    10.78.2.2/24
"""

import hashlib
import sys

import pytest

pytestmark = pytest.mark.root

CLIENT, PEN_CLIENT_SIDE, PEN_SERVER_SIDE, SERVER = "10.78.1.2", "10.78.1.1", "10.78.2.1", "10.78.2.2"

# tftpy serving "whoami" (the client address it saw) and "blob" (2 MB, deterministic).
TFTPY_SERVER = r"""
import hashlib, logging, os, sys, tempfile, tftpy
logging.getLogger("tftpy").setLevel(logging.WARNING)
BLOB = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(65536))
root, scratch = tempfile.mkdtemp(), tempfile.mkdtemp()     # root stays empty: all via files()
def files(name, raddress=None, rport=None):
    if name not in ("whoami", "blob"):
        return None
    path = os.path.join(scratch, name)
    with open(path, "wb") as f:                # tftpy flocks what it serves: real files
        f.write(f"{raddress}\n".encode() if name == "whoami" else BLOB)
    return open(path, "rb")
tftpy.TftpServer(root, dyn_file_func=files).listen(sys.argv[1], int(sys.argv[2]))
"""
BLOB_SHA = hashlib.sha256(b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest()
                                   for i in range(65536))).hexdigest()


@pytest.fixture
def topology(lab):
    cli, pen, srv = lab.ns("c"), lab.ns("p"), lab.ns("s")
    lab.veth(cli, "c0", pen, "p0")
    lab.veth(pen, "p1", srv, "s0")
    lab.addr(cli, "c0", f"{CLIENT}/24")
    lab.addr(pen, "p0", f"{PEN_CLIENT_SIDE}/24")
    lab.addr(pen, "p1", f"{PEN_SERVER_SIDE}/24")
    lab.addr(srv, "s0", f"{SERVER}/24")
    lab.run(srv, "ip", "route", "add", "default", "via", PEN_SERVER_SIDE)
    record = f"/tmp/{lab.prefix}-setup.json"
    lab.files.append(record)
    lab.run(pen, sys.executable, "-m", "pen.setup_host", "transparent", "--state", record)
    server = lab.spawn(srv, sys.executable, "-c", TFTPY_SERVER, "0.0.0.0", "6969")
    lab.wait_listening(srv, 6969, server, "udp")
    return lab, cli, pen


def fetch(lab, cli, name, tmp_path):
    out = tmp_path / name
    lab.run(cli, "tftp", "-m", "binary", PEN_CLIENT_SIDE, "69", "-c", "get", name, str(out),
            timeout=60)
    return out.read_bytes()


def test_tftp_server_sees_the_client_only_in_transparent_mode(topology, tmp_path):
    lab, cli, pen = topology
    plain = lab.pen(pen, "-U", f"{PEN_CLIENT_SIDE}:69", f"{SERVER}:6969", port=69, proto="udp")
    assert fetch(lab, cli, "whoami", tmp_path).decode().strip() == PEN_SERVER_SIDE
    lab.stop(plain)
    lab.pen(pen, "-U", "-O", "transparent", f"{PEN_CLIENT_SIDE}:69", f"{SERVER}:6969",
            port=69, proto="udp")
    assert fetch(lab, cli, "whoami", tmp_path).decode().strip() == CLIENT
    assert hashlib.sha256(fetch(lab, cli, "blob", tmp_path)).hexdigest() == BLOB_SHA
