"""Reused greenlets (pen/workers.py): tasks run, workers are reused, errors are contained."""

import gevent
from gevent.event import Event

from pen.greenlets import Pool


def test_a_finished_worker_takes_the_next_task():
    workers = Pool(keep=4)
    ran, done = [], Event()
    first = workers.spawn(ran.append, "a")
    gevent.sleep(0)
    assert ran == ["a"] and workers.idle == [first]
    second = workers.spawn(lambda: (ran.append("b"), done.set()))
    assert second is first                     # the same greenlet, no new one
    assert done.wait(5) and ran == ["a", "b"]


def test_tasks_that_wait_get_workers_of_their_own():
    workers = Pool(keep=2)
    go, finished = Event(), []
    for n in range(5):
        workers.spawn(lambda n=n: (go.wait(), finished.append(n)))
    gevent.sleep(0)
    assert finished == [] and workers.idle == []
    go.set()
    gevent.sleep(0)
    assert sorted(finished) == [0, 1, 2, 3, 4]
    assert len(workers.idle) == 2              # the rest ended instead of parking


def test_an_error_is_reported_and_the_worker_lives_on(capsys):
    workers = Pool(keep=4)
    worker = workers.spawn(lambda: 1 / 0)
    gevent.sleep(0)
    assert "ZeroDivisionError" in capsys.readouterr().err
    assert workers.idle == [worker]
    ran = []
    assert workers.spawn(ran.append, 1) is worker
    gevent.sleep(0)
    assert ran == [1]


def test_a_late_wake_up_does_not_start_anything():
    workers = Pool(keep=4)
    worker = workers.spawn(lambda: None)
    gevent.sleep(0)
    gevent.get_hub().loop.run_callback(worker.switch, "stray")
    gevent.get_hub().loop.run_callback(worker.throw, ValueError("stray"))
    gevent.sleep(0)
    assert workers.idle == [worker] and not worker.dead
