"""Transmit checksum offload on or off, without ethtool (the lab's image has none).

Frames a raw socket reads from a veth whose sender offloads checksums arrive with the TCP
checksum unfinished; a forwarder that re-sends them as they are (the C pen in DSR mode) has
them dropped by the server. `python3 -m pen_lab.nic IF off` is `ethtool -K IF tx off`;
it prints the previous state (on/off) so that it can be put back. Needs CAP_NET_ADMIN.
"""

import array
import fcntl
import socket
import struct
import sys

SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16
ETHTOOL_STXCSUM = 0x17


def _ethtool(ifname, command, data=0):
    value = array.array("I", [command, data])  # struct ethtool_value {cmd; data}
    request = struct.pack("16sP", ifname.encode()[:15], value.buffer_info()[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        fcntl.ioctl(probe.fileno(), SIOCETHTOOL, request)
    return value[1]


def tx_checksum(ifname, on=None):
    """The interface's transmit checksum offload (True/False) before setting it to `on`."""
    before = bool(_ethtool(ifname, ETHTOOL_GTXCSUM))
    if on is not None:
        _ethtool(ifname, ETHTOOL_STXCSUM, int(on))
    return before


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[1] not in ("on", "off"):
        sys.exit("usage: python3 -m pen_lab.nic IF on|off")
    try:
        before = tx_checksum(argv[0], argv[1] == "on")
    except OSError as err:
        sys.exit(f"pen_lab.nic {argv[0]}: {err.strerror}")
    print("on" if before else "off")


if __name__ == "__main__":
    main()
