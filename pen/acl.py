"""Access lists 0-9 with pen's semantics.

The first matching entry decides; if none matches, the answer is the opposite of the
last entry; an empty list permits everyone. An entry is a network, or a country looked up
in the GeoIP database (geoip.py); an address of no known country matches no country entry.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .geoip import CountryDatabase, GeoipError, parse_country

ACL_COUNT = 10


class AclError(ValueError):
    pass


@dataclass(frozen=True)
class AclEntry:
    permit: bool
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    country: str | None = None           # ISO 3166 code, upper case: `country SE`

    def command(self, n: int) -> str:
        """The penctl command that recreates this entry."""
        verb = "permit" if self.permit else "deny"
        if self.country is not None:
            return f"acl {n} {verb} country {self.country}"
        net = self.network
        if net.version == 4:
            return f"acl {n} {verb} {net.network_address} {net.netmask}"
        return f"acl {n} {verb} {net.network_address}/{net.prefixlen}"


def parse_entry(verb: str, address: str, mask: str | None = None) -> AclEntry:
    """`permit|deny a.b.c.d [mask]`, `permit|deny v6addr[/len]` or `permit|deny country CC`."""
    if verb not in ("permit", "deny"):
        raise AclError(f"expected permit or deny, got {verb!r}")
    if address == "country":
        try:
            return AclEntry(verb == "permit", country=parse_country(mask or ""))
        except GeoipError as e:
            raise AclError(f"country: {e}") from None
    try:
        if ":" in address:
            if mask is not None:
                raise AclError(f"IPv6 entries take /length, not a mask: {mask!r}")
            network = ipaddress.IPv6Network(address if "/" in address else address + "/128",
                                            strict=False)
        else:
            network = ipaddress.IPv4Network(f"{address}/{mask or '255.255.255.255'}", strict=False)
    except ValueError as e:
        raise AclError(f"bad address in acl: {e}") from None
    return AclEntry(verb == "permit", network)


class AccessLists:
    """The ten numbered lists."""

    def __init__(self) -> None:
        self.lists: list[list[AclEntry]] = [[] for _ in range(ACL_COUNT)]
        self.geoip: CountryDatabase | None = None      # for country entries

    def uses_countries(self) -> bool:
        return any(e.country for entries in self.lists for e in entries)

    def check_number(self, n: int) -> int:
        if not 0 <= n < ACL_COUNT:
            raise AclError(f"acl number must be 0-{ACL_COUNT - 1}, got {n}")
        return n

    def add(self, n: int, entry: AclEntry) -> None:
        self.lists[self.check_number(n)].append(entry)

    def clear(self, n: int) -> None:
        self.lists[self.check_number(n)].clear()

    def permits(self, n: int, ip) -> bool:
        """Does list n let ip through? Lists outside 0-9 (e.g. -1, unset) permit all."""
        if not 0 <= n < ACL_COUNT or ip is None:
            return True
        entries = self.lists[n]
        if not entries:
            return True
        country = False                                  # not looked up yet
        for entry in entries:
            if entry.country is not None:
                if country is False:
                    country = self.geoip.country(ip) if self.geoip is not None else None
                if country == entry.country:
                    return entry.permit
            elif ip.version == entry.network.version and ip in entry.network:
                return entry.permit
        return not entries[-1].permit

    def matches(self, n: int, ip) -> bool:
        """Is ip listed (by a permit entry) in list n? For tarpit-style lists."""
        if not 0 <= n < ACL_COUNT or ip is None or not self.lists[n]:
            return False
        return self.permits(n, ip)

    def commands(self) -> list[str]:
        out = []
        for n, entries in enumerate(self.lists):
            out.append(f"no acl {n}")
            out.extend(entry.command(n) for entry in entries)
        return out
