"""The command language: answers in pen's formats, errors as one line, write round-trips."""

import pytest

from pen import cli, commands, registry
from pen.errors import CommandError
from pen.state import State


def state_from(*argv):
    state, _ = cli.parse(list(argv))
    return state


def ask(state, line):
    return commands.answer(state, line)


def test_answers_in_pens_formats():
    state = state_from("8080", "127.0.0.1:81:10:20:2:1", "[::1]:82")
    assert ask(state, "servers") == (
        "0 addr 127.0.0.1 port 81 conn 0 max 10 hard 20 weight 2 prio 1 sx 0 rx 0\n"
        "1 addr ::1 port 82 conn 0 max 0 hard 0 weight 0 prio 0 sx 0 rx 0\n")
    assert ask(state, "mode") == "no hash no roundrobin no stubborn no weight no prio"
    assert ask(state, "clients_max") == "2048"
    assert ask(state, "conn_max") == "500"
    assert ask(state, "blacklist") == "30"
    assert ask(state, "timeout") == "3"
    assert ask(state, "idle_timeout") == "Idle timeout: 0 seconds"
    assert ask(state, "tarpit_acl") == "tarpit_acl = -1"
    assert ask(state, "listen") == "0.0.0.0:8080"


def test_options_become_commands():
    state = state_from("-h", "-s", "-W", "-b", "5", "-x", "7", "-c", "9", "-T", "60", "-H",
                       "8080", "127.0.0.1")
    assert ask(state, "mode") == "hash no roundrobin stubborn weight no prio"
    assert (state.blacklist_time, state.conn_max, state.clients.slots) == (5, 7, 9)
    assert (state.tracking, state.http) == (60, True)


def test_o_commands_run_after_the_servers_exist():
    state = state_from("-O", "server 0 weight 7", "-O", "prio", "8080", "127.0.0.1")
    assert state.servers[0].weight == 7 and state.prio


def test_setters_and_modes():
    state = State()
    for line in ("hash", "roundrobin", "no hash", "tcp_fastclose both"):
        assert ask(state, line) == ""
    assert ask(state, "blacklist 12") == "12"      # pen answers a numeric setter with the value
    assert ask(state, "mode").startswith("no hash roundrobin")
    assert ask(state, "blacklist") == "12"
    assert state.tcp_fastclose == "both"
    # pen's answer to the bare word (it has no form that shows the setting)
    assert ask(state, "tcp_fastclose") == "do_cmd: ignoring tcp_fastclose without argument\n"


def test_server_command_changes_and_adds_servers():
    state = state_from("8080", "127.0.0.1:81")
    ask(state, "server 0 max 5 hard 6 weight 3 prio 2")
    ask(state, "server 2 address 127.0.0.1 port 83")
    lines = ask(state, "servers").splitlines()
    assert lines[0].startswith("0 addr 127.0.0.1 port 81 conn 0 max 5 hard 6 weight 3 prio 2")
    assert lines[1].startswith("1 addr 0.0.0.0 port 0")
    assert lines[2].startswith("2 addr 127.0.0.1 port 83")


def test_server_blacklist_seconds_and_clearing():
    state = state_from("8080", "127.0.0.1:81")
    ask(state, "server 0 blacklist 100")
    assert state.servers[0].blacklist_until > 0
    ask(state, "server 0 blacklist 0")
    import time
    assert not state.servers[0].blacklisted(time.time())


@pytest.mark.parametrize("line, message", [
    ("bogus", "do_cmd: ignoring command starting with 'bogus'"),
    ("blacklist x", "blacklist: expected a number, got 'x'"),
    ("server 0 colour red", "server: unknown field 'colour'"),
    ("server x", "server: expected a number"),
    ("acl 12 permit 1.2.3.4", "acl: acl number must be 0-9"),
    ("tcp_fastclose sideways", "usage: tcp_fastclose up|down|both|off"),
    ("exit", "Exit is not enabled; restart with -X flag"),
])
def test_mistakes_answer_one_line(line, message):
    reply = ask(State(), line)
    assert reply.startswith(message) and reply.count("\n") == 1


def test_nothing_changes_when_a_server_command_is_wrong():
    state = state_from("8080", "127.0.0.1:81")
    before = ask(state, "servers")
    ask(state, "server 0 max 5 colour red")
    assert ask(state, "servers") == before


def test_write_reproduces_the_running_configuration(tmp_path):
    state = state_from("-h", "-b", "9", "-e", "127.0.0.1:99", "-O", "acl 2 deny 10.0.0.0 255.0.0.0",
                       "-O", "client_acl 2", "8080", "127.0.0.1:81:3:4:5:6", "[::1]:82")
    target = tmp_path / "pen.cfg"
    assert ask(state, f"write {target}") == ""
    again = state_from("8080")
    commands.run_file(again, str(target))
    for query in ("servers", "mode", "blacklist", "client_acl", "emergency_server"):
        assert ask(again, query) == ask(state, query), query
    assert again.acls.commands() == state.acls.commands()


def test_proxy_protocol_settings_are_commands_that_write_keeps(tmp_path):
    state = state_from("8080", "127.0.0.1:81", "127.0.0.1:82")
    assert ask(state, "proxy_protocol") == "off"
    assert ask(state, "proxy_protocol v2") == ""
    assert ask(state, "server 1 proxy_protocol off") == ""
    assert ask(state, "accept_proxy 3") == ""
    assert [s.proxy_version(state.proxy_protocol) for s in state.servers] == [2, 0]
    before = ask(state, "servers")
    assert "proxy_protocol" not in before          # pen's servers line stays pen's
    assert ask(state, "proxy_protocol v3") == "proxy_protocol: expected v1, v2 or off, got 'v3'\n"
    assert ask(state, "server 0 proxy_protocol yes").startswith("server 0 proxy_protocol: expected")
    target = tmp_path / "pen.cfg"
    ask(state, f"write {target}")
    again = state_from("8080")
    commands.run_file(again, str(target))
    assert (again.proxy_protocol, again.accept_proxy) == ("v2", 3)
    assert [s.proxy_protocol for s in again.servers] == [None, "off"]
    assert ask(again, "no accept_proxy") == "" and again.accept_proxy == -1


def test_a_reload_removes_servers_the_file_no_longer_defines(tmp_path):
    cfg = tmp_path / "pen.cfg"
    cfg.write_text("server 1 address 127.0.0.1 port 82\nserver 2 address 127.0.0.1 port 83\n")
    state = state_from("8080", "127.0.0.1:81")
    commands.load_config(state, str(cfg))
    ask(state, "server 3 address 127.0.0.1 port 84")          # added by penctl, not the file
    cfg.write_text("server 2 address 127.0.0.1 port 85\n")
    commands.reload_file(state, str(cfg))
    assert [(s.index, s.port) for s in state.servers] == [(0, 81), (1, 0), (2, 85), (3, 84)]
    assert state.servers[1].endpoint is None                   # an empty slot: never chosen
    cfg.write_text("server 2 address 127.0.0.1 port bad\n")
    with pytest.raises(commands.CommandError):                 # all or nothing
        commands.reload_file(state, str(cfg))
    assert state.servers[2].port == 85 and state.config_servers == {2}


def test_config_file_errors_name_file_and_line(tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("# comment\nhash\nblacklist soon\n")
    with pytest.raises(commands.CommandError, match=r"bad.cfg:3: blacklist: expected a number"):
        commands.run_file(State(), str(cfg))


def test_include_refuses_itself(tmp_path):
    cfg = tmp_path / "loop.cfg"
    cfg.write_text(f"include {cfg}\n")
    with pytest.raises(commands.CommandError, match="included from itself"):
        commands.run_file(State(), str(cfg))


@pytest.mark.parametrize("argv, message", [
    (["-x", "abc", "80", "h"], "-x abc: conn_max: expected a number"),
    (["-q", "0", "80", "h"], "-q: expected a number of at least 1"),
    (["80", "[::1"], "[::1: unclosed '['"),
    (["80", "h:1:a"], "bad soft limit"),
    ([], "missing listen address"),
    (["-O", "nonsense", "80", "127.0.0.1"], "-O nonsense: do_cmd: ignoring"),
    (["-Y", "80"], "-Y: option -Y not recognized"),
])
def test_command_line_mistakes(argv, message):
    with pytest.raises(cli.UsageError, match=message.replace("[", r"\[")):
        cli.parse(argv)


def test_connections_take_pens_slots():
    """pen's connection table: the first free slot from the last one taken, below conn_max."""
    state = State()
    state.conn_max = 3
    a, b = state.open_connection(("10.0.0.1", 1)), state.open_connection(("10.0.0.1", 2))
    assert (a.id, b.id) == (0, 1)
    state.close_connection(a)
    c = state.open_connection(("10.0.0.1", 3))
    assert c.id == 2                                    # from slot 1 on, not back to 0
    d = state.open_connection(("10.0.0.1", 4))
    assert d.id == 0                                    # wrapped around
    assert ask(state, "connection 3") == "Connection 3 out of range\n"
    assert ask(state, "close 7") == "Connection 7 out of range\n"
    state.close_connection(b)
    assert ask(state, "connection 1").startswith("Connection 1:\nstate = 0\n")
    assert ask(state, "close 1") == "Forcibly closing connection 1\n"
    e = state.open_connection(("10.0.0.1", 5))
    f = state.open_connection(("10.0.0.1", 6))          # the table is full: above conn_max
    assert (e.id, f.id) == (1, 3)


def test_source_without_an_argument_shows_it():
    state = State()
    assert ask(state, "source") == ""
    ask(state, "source 127.0.0.1")
    assert ask(state, "source") == "127.0.0.1"


def test_startup_answers_are_printed_as_pen_prints_them(tmp_path):
    config = tmp_path / "pen.cfg"
    config.write_text("blacklist 8\nhash\n")
    state, opts = cli.parse(["-O", "tarpit_acl 2", "-O", "blacklist 7", "-O", "tcp_fastclose",
                             "-F", str(config), "8080", "127.0.0.1"])
    assert opts.answers == ("tarpit_acl = 27\n"
                            "do_cmd: ignoring tcp_fastclose without argument\n8\n")


def test_unix_servers_show_port_1_and_survive_write(tmp_path):
    """pen shows a UNIX socket server with port 1; `write` and a re-read keep its path."""
    state, _ = cli.parse(["8080", "/run/app.sock", "127.0.0.1:81"])
    assert ask(state, "servers").startswith("0 addr /run/app.sock port 1 conn 0 ")
    copy = commands.scratch_copy(state)
    assert copy.servers[0].endpoint.path == "/run/app.sock"
    ask(state, "server 0 address /run/other.sock port 1")
    assert state.servers[0].endpoint.path == "/run/other.sock"


@pytest.mark.parametrize("name", sorted(registry.WHOLE - {"exit", "write"}))
def test_commands_a_worker_group_runs_once_change_no_setting(name):
    """A worker group's parent answers the commands marked `whole` alone (group.py): so
    each of them, bar `write` and `exit`, must be a question, changing nothing."""
    state = state_from("-r", "-x", "50", "-O", "acl 1 permit 10.0.0.1", "127.0.0.1:8000",
                       "127.0.0.1:8001")
    before = commands.dump(state)
    for line in (name, f"{name} 0", f"{name} 1 2"):
        try:
            commands.execute(state, line)
        except CommandError:
            pass
    assert commands.dump(state) == before
