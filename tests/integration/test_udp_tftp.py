"""TFTP through -U with the real tftp-hpa client against in.tftpd (tftpd-hpa) and tftpy.

A TFTP server answers from a new port (its transfer ID): pen must relay the transfer from
that port and send the client's next packets to it. The C pen cannot do this.
"""

import os
import signal
import socket
import subprocess
import threading

import pytest
from udp_peers import InTftpd, Tftpy, exchange, random_file, start_udp_pen, tftp

from support import wait_for

SIZE = 10 * 1024 * 1024


@pytest.fixture
def tftp_root(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    random_file(root / "big.bin", SIZE)
    os.chmod(root / "big.bin", 0o644)
    return root


@pytest.fixture(params=["in.tftpd", "tftpy"])
def tftp_server(request, tftp_root):
    server = InTftpd(tftp_root) if request.param == "in.tftpd" else Tftpy(tftp_root)
    yield server
    server.stop()


def run_both(*jobs):
    """Run the jobs at once in threads; re-raise the first failure."""
    errors = []

    def wrap(job):
        try:
            job()
        except BaseException as e:          # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    if errors:
        raise errors[0]


def test_get_and_put_at_once_arrive_byte_exact(tftp_server, tftp_root, tmp_path, start_pen):
    pen, port = start_udp_pen(start_pen, servers=[tftp_server.spec])
    getter, putter = tmp_path / "getter", tmp_path / "putter"
    getter.mkdir()
    putter.mkdir()
    upload = random_file(putter / "up.bin", SIZE)
    run_both(lambda: tftp(port, "get big.bin", cwd=getter),
             lambda: tftp(port, "put up.bin", cwd=putter))
    assert (getter / "big.bin").read_bytes() == (tftp_root / "big.bin").read_bytes()
    wait_for(lambda: (tftp_root / "up.bin").exists()
             and (tftp_root / "up.bin").stat().st_size == SIZE, what="the upload to land")
    assert (tftp_root / "up.bin").read_bytes() == upload
    assert pen.proc.poll() is None


def test_two_gets_at_once(tftp_server, tftp_root, tmp_path, start_pen):
    pen, port = start_udp_pen(start_pen, servers=[tftp_server.spec])
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    run_both(lambda: tftp(port, "get big.bin", cwd=first),
             lambda: tftp(port, "get big.bin", cwd=second))
    expected = (tftp_root / "big.bin").read_bytes()
    assert (first / "big.bin").read_bytes() == expected
    assert (second / "big.bin").read_bytes() == expected


def test_client_vanishing_mid_transfer_and_garbage_are_not_fatal(tftp_root, tmp_path, start_pen):
    server = InTftpd(tftp_root)
    try:
        pen, port = start_udp_pen(start_pen, servers=[server.spec])
        gone = tmp_path / "gone"
        gone.mkdir()
        proc = subprocess.Popen(["tftp", "-m", "binary", "127.0.0.1", str(port), "-c", "get",
                                 "big.bin"], cwd=gone, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        part = gone / "big.bin"
        wait_for(lambda: part.exists() and part.stat().st_size > 100_000,
                 what="the transfer to start")
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        # Garbage and odd sizes to the TFTP port from another client.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
            for data in (b"", b"\x00\x09garbage", os.urandom(65507), b"\x00\x01\x00\x00"):
                exchange(junk, port, data, timeout=0.2)
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        took = tftp(port, "get big.bin", cwd=fresh)
        assert (fresh / "big.bin").read_bytes() == (tftp_root / "big.bin").read_bytes()
        assert took < 120 and pen.proc.poll() is None
    finally:
        server.stop()


def test_missing_file_error_reaches_the_client(tftp_server, tmp_path, start_pen):
    pen, port = start_udp_pen(start_pen, servers=[tftp_server.spec])
    result = subprocess.run(["tftp", "-m", "binary", "127.0.0.1", str(port), "-c", "get",
                             "no-such-file"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=30)
    assert "Error code 1" in result.stdout + result.stderr
