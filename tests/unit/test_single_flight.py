"""One run of a job at a time on SQLite: in a process, across processes, and after a fork."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from closedloop.store.db import create_engine, single_flight


def test_a_second_holder_is_refused_and_the_lock_frees_after_an_error(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    other = create_engine(f"sqlite:///{tmp_path / 'x.db'}")  # another pool, same file
    with single_flight(engine, 1) as mine, single_flight(other, 1) as theirs:
        assert (mine, theirs) == (True, False)
    with pytest.raises(RuntimeError), single_flight(engine, 1):
        raise RuntimeError("the job failed")
    with single_flight(other, 1) as again, single_flight(other, 2) as another_job:
        assert (again, another_job) == (True, True)


def test_in_memory_databases_do_not_share_a_lock() -> None:
    a, b = create_engine("sqlite://"), create_engine("sqlite://")
    with single_flight(a, 7) as first, single_flight(b, 7) as second:
        assert (first, second) == (True, True)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_a_thread_holds_the_lock_may_run(tmp_path: Path) -> None:
    """The SDK's embedded mode survives a fork: the child must not inherit a lock that no
    thread of its own will ever release."""
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with single_flight(engine, 3):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    done_r, done_w = os.pipe()  # the parent's run has ended
    answer_r, answer_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a copy of the held lock, and no thread to release it
        os.read(done_r, 1)
        with single_flight(create_engine(f"sqlite:///{tmp_path / 'x.db'}"), 3) as got:
            os.write(answer_w, b"1" if got else b"0")
        os._exit(0)
    release.set()
    thread.join(10)
    os.write(done_w, b"x")
    answer = os.read(answer_r, 1)
    os.waitpid(pid, 0)
    assert answer == b"1"
