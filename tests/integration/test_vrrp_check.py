"""The health check keepalived runs for pen-setup vrrp, against a real listening socket."""

import socket

from pen import vrrp


def test_check_passes_only_while_something_listens(capsys):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        assert vrrp.main(["check", f"127.0.0.1:{port}"]) == 0
    finally:
        listener.close()
    assert vrrp.main(["check", f"127.0.0.1:{port}"]) == 1
    assert f"check 127.0.0.1:{port}" in capsys.readouterr().err
    assert vrrp.main(["check", "127.0.0.1:notaport"]) == 1
