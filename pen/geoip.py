"""Countries for `acl N permit|deny country CC`: a MaxMind DB (.mmdb) read with `maxminddb`.

pen 0.34 reads libGeoIP's legacy GeoIP.dat; that format has no well-kept Python reader and
its free data stopped in 2019, so pen-lb reads today's .mmdb format (GeoLite2-Country,
GeoIP2-Country, DB-IP's country lite database), from the file `geoip_database` names or,
failing that, the first of DEFAULT_PATHS that exists. An address the database does not
know has no country, and a country entry never matches it, as in pen.
"""

from __future__ import annotations

import os

# where geoipupdate (Debian contrib) and distributions put a country database
DEFAULT_PATHS = ("/var/lib/GeoIP/GeoLite2-Country.mmdb",
                 "/usr/share/GeoIP/GeoLite2-Country.mmdb",
                 "/usr/share/GeoIP/dbip-country-lite.mmdb")


class GeoipError(ValueError):
    pass


class CountryDatabase:
    """One opened database: country(ip) -> 'SE', or None when the address is unknown."""

    def __init__(self, path: str) -> None:
        try:
            import maxminddb
        except ImportError:
            raise GeoipError("country ACLs need the maxminddb package: "
                             "pip install 'pen-lb[geoip]'") from None
        try:
            self.reader = maxminddb.open_database(path)
        except OSError as e:
            raise GeoipError(f"{path}: {e.strerror}") from None
        except (ValueError, maxminddb.InvalidDatabaseError):
            raise GeoipError(f"{path}: not a MaxMind DB (.mmdb) file") from None
        self.path = path

    def country(self, ip) -> str | None:
        try:
            record = self.reader.get(ip)
        except ValueError:                     # an IPv6 address in an IPv4-only database
            return None
        if not isinstance(record, dict):
            return None
        for key in ("country", "registered_country"):     # where the address is, else whose
            entry = record.get(key)
            if isinstance(entry, dict) and isinstance(entry.get("iso_code"), str):
                return entry["iso_code"].upper()
        return None


_opened: dict[str, CountryDatabase] = {}


def open_database(path: str) -> CountryDatabase:
    """The database at path, opened once per process: a -F file re-read on SIGHUP (in a
    -j jail, perhaps, where the path is gone) finds the one opened at start-up."""
    if path not in _opened:
        _opened[path] = CountryDatabase(path)
    return _opened[path]


def default_path() -> str | None:
    return next((p for p in DEFAULT_PATHS if os.path.exists(p)), None)


def parse_country(code: str) -> str:
    if len(code) != 2 or not code.isascii() or not code.isalpha():
        raise GeoipError(f"expected a two-letter country code, got {code!r}")
    return code.upper()
