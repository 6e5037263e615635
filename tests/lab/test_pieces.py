"""The lab's pure pieces, no docker needed: command lines, replies, the report."""

from pen_lab.pencmd import pen_argv, penctl_argv, shown
from pen_lab.replies import Reply, count_by_server, parse_reply
from pen_lab.report import render
from pen_lab.seenlog import read_seen


def test_pen_command_line_keeps_pen_grammar_and_guards_the_control_port():
    argv = pen_argv("c", ["-r", "-H"], "80", ["10.0.0.1:80", "10.0.0.2:80"], as_root=True)
    assert argv[0] == "/usr/bin/pen" and argv[-3:] == ["80", "10.0.0.1:80", "10.0.0.2:80"]
    assert argv[argv.index("-C") + 1] == "10999" and "-f" in argv
    assert argv[argv.index("-u") + 1] == "root"
    assert "control_acl 9" in argv and "acl 9 permit 127.0.0.1" in argv
    assert pen_argv("py", [], "80", ["a"])[:3] == ["python3", "-m", "pen"]
    assert "-u" not in pen_argv("py", [], "80", ["a"])
    assert shown(penctl_argv("py", "127.0.0.1:10999", ["servers"])) == \
        "penctl 127.0.0.1:10999 servers"


def test_replies_parse_answers_and_errors():
    good = parse_reply(1.0, '{"server": "server1", "peer": "10.0.0.9", "xff": "1.2.3.4"}', "c1")
    assert (good.server, good.peer, good.xff, good.error) == ("server1", "10.0.0.9", "1.2.3.4", None)
    bad = parse_reply(2.0, "ERROR curl: (28) Operation timed out", "c1")
    assert bad.server is None and "timed out" in bad.error
    assert count_by_server([good, bad, good]) == {"server1": 2}
    assert read_seen('{"a": 1}\n{"torn') == [{"a": 1}]


def test_report_is_self_contained_and_escapes_names():
    replies = [Reply(10.0, "server1"), Reply(11.0, None, error="refused"),
               Reply(12.0, "<b>")]
    page = render([("failover", replies, [(10.5, "server2 breaks (docker stop)")])])
    assert page.count("<svg") == 1 and "<script" not in page and "http://" not in \
        page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "FAILED (1)" in page and "server2 breaks" in page and "&lt;b&gt;" in page
