"""daemon.write_pidfile: a reader (systemd's PIDFile=, `pen --upgrade` waiting for the new
copy) never sees the pid file empty or partly written, and nothing is left beside it."""

import os
import threading

import pytest

from pen import daemon


def test_a_reader_never_sees_the_pid_file_empty(tmp_path):
    path = tmp_path / "pen.pid"
    daemon.write_pidfile(str(path))
    seen, done = set(), threading.Event()

    def read():
        while not done.is_set():
            seen.add(path.read_text())
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(2000):            # (writing in place, the reader saw "" within these)
            daemon.write_pidfile(str(path))
    finally:
        done.set()
        reader.join()
    assert seen == {str(os.getpid())}
    assert os.listdir(tmp_path) == ["pen.pid"]


def test_where_no_file_can_be_put_aside_the_pid_is_written_in_place(tmp_path):
    path = tmp_path / "pen.pid"
    (tmp_path / f"pen.pid.{os.getpid()}.tmp").mkdir()     # (as a directory taking no file)
    daemon.write_pidfile(str(path))
    assert path.read_text() == str(os.getpid())


def test_an_unwritable_place_is_one_line_naming_it(tmp_path):
    with pytest.raises(daemon.DaemonError, match=r"^-p .*/nowhere/pen.pid: No such file"):
        daemon.write_pidfile(str(tmp_path / "nowhere" / "pen.pid"))
