"""`acl N permit|deny country CC` against a small .mmdb made here (mmdb-writer, test-only)."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pen import commands, geoip
from pen.state import State

mmdb_writer = pytest.importorskip("mmdb_writer")
netaddr = pytest.importorskip("netaddr")

SE, US, UNKNOWN = (ipaddress.ip_address(a) for a in ("10.1.0.1", "10.2.0.1", "10.3.0.1"))


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """10.1.0.0/16 in Sweden, 10.2.0.0/16 and 2001:db8::/32 in the US, nothing else."""
    writer = mmdb_writer.MMDBWriter(ip_version=6, ipv4_compatible=True,
                                    database_type="GeoLite2-Country")
    writer.insert_network(netaddr.IPSet(["10.1.0.0/16"]), {"country": {"iso_code": "SE"}})
    writer.insert_network(netaddr.IPSet(["10.2.0.0/16", "2001:db8::/32"]),
                          {"country": {"iso_code": "US"}})
    writer.insert_network(netaddr.IPSet(["10.4.0.0/16"]),        # known only by its owner
                          {"registered_country": {"iso_code": "NO"}})
    path = tmp_path_factory.mktemp("geo") / "country.mmdb"
    writer.to_db_file(str(path))
    return str(path)


def ask(state, line):
    return commands.answer(state, line)


def test_country_entries_decide_as_pen(database):
    state = State()
    for line in (f"geoip_database {database}", "acl 1 deny country SE",
                 "acl 1 permit country us"):
        assert ask(state, line) == ""
    assert ask(state, "geoip_database") == database
    assert not state.acls.permits(1, SE)
    assert state.acls.permits(1, US)
    assert state.acls.permits(1, ipaddress.ip_address("2001:db8::5"))
    # an address of no known country matches no entry: the opposite of the last one
    assert not state.acls.permits(1, UNKNOWN)
    assert not state.acls.permits(1, ipaddress.ip_address("2001:db9::1"))
    state.acls.add(2, state.acls.lists[1][0])
    assert state.acls.permits(2, UNKNOWN) and state.acls.permits(2, US)


def test_registered_country_when_the_location_is_unknown(database):
    state = State()
    ask(state, f"geoip_database {database}")
    ask(state, "acl 3 deny country NO")
    assert not state.acls.permits(3, ipaddress.ip_address("10.4.1.1"))


def test_without_a_database_no_country_matches(database, monkeypatch):
    monkeypatch.setattr(geoip, "DEFAULT_PATHS", ())
    state = State()
    ask(state, "acl 1 deny country SE")
    assert state.acls.permits(1, SE)             # no entry matched: opposite of deny
    assert ask(state, "geoip_database") == ""


def test_a_default_database_is_found_as_pen_finds_GeoIP_dat(database, monkeypatch):
    monkeypatch.setattr(geoip, "DEFAULT_PATHS", ("/nonexistent.mmdb", database))
    state = State()
    ask(state, "acl 1 deny country SE")
    assert not state.acls.permits(1, SE)
    assert ask(state, "geoip_database") == database


def test_write_keeps_the_entries_and_the_database(database, tmp_path):
    state = State()
    ask(state, f"geoip_database {database}")
    ask(state, "acl 4 permit country se")
    ask(state, "acl 4 deny 10.0.0.0 255.0.0.0")
    ask(state, f"write {tmp_path / 'pen.cfg'}")
    text = (tmp_path / "pen.cfg").read_text()
    assert f"geoip_database {database}\n" in text
    assert "no acl 4\nacl 4 permit country SE\nacl 4 deny 10.0.0.0 255.0.0.0\n" in text
    again = State()
    commands.run_file(again, str(tmp_path / "pen.cfg"))
    assert again.acls.lists[4] == state.acls.lists[4]
    assert again.acls.permits(4, SE) and not again.acls.permits(4, US)


@pytest.mark.parametrize("line, message", [
    ("acl 1 permit country", "acl: country: expected a two-letter country code, got ''"),
    ("acl 1 permit country SWE", "acl: country: expected a two-letter country code"),
    ("acl 1 permit country S1", "acl: country: expected a two-letter country code"),
    ("geoip_database /nonexistent.mmdb", "geoip_database: /nonexistent.mmdb: No such file"),
    ("geoip_database /etc/hostname", "geoip_database: /etc/hostname: not a MaxMind DB"),
])
def test_mistakes_answer_one_line(line, message):
    reply = ask(State(), line)
    assert reply.startswith(message) and reply.count("\n") == 1


@given(st.text(max_size=6))
def test_any_country_word_is_an_entry_or_one_line(word):
    state = State()
    reply = ask(state, f"acl 1 deny country {word}")
    words = f"acl 1 deny country {word}".split()
    if reply == "":
        assert len(words) == 5 and state.acls.lists[1][0].country == words[4].upper()
    else:
        assert reply.count("\n") == 1 and not state.acls.lists[1]
