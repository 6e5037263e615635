"""TFTP backend (tftpy): serves generated files, keeps uploads, logs both."""

import logging
import os

import tftpy

from pen_lab.sample import sample_bytes as _sample_bytes

SAMPLE_NAME = "sample.bin"
SAMPLE_SIZE = 70_000  # spans many 512-byte blocks and ends in a partial one


def sample_bytes(size=SAMPLE_SIZE):
    """Deterministic, non-repeating content: clients can check it byte for byte."""
    return _sample_bytes(size)


def make_tftp_server(root, seen):
    """Files for download live outside tftpy's root so every get passes through our log."""
    uploads = os.path.join(root, "uploads")
    downloads = os.path.join(root, "downloads")
    os.makedirs(uploads, exist_ok=True)
    os.makedirs(downloads, exist_ok=True)
    with open(os.path.join(downloads, SAMPLE_NAME), "wb") as sample:
        sample.write(sample_bytes())

    def open_download(name, raddress=None, rport=None):
        path = os.path.join(downloads, os.path.basename(name))
        seen.record("tftp", raddress, op="get", file=name)
        return open(path, "rb") if os.path.isfile(path) else None

    def open_upload(path, context):
        name = os.path.basename(path)
        seen.record("tftp", context.host, op="put", file=name)
        return open(os.path.join(uploads, name), "wb")

    logging.getLogger("tftpy").setLevel(logging.WARNING)
    return tftpy.TftpServer(uploads, dyn_file_func=open_download, upload_open=open_upload)
