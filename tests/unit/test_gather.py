"""The tolerant gather on real futures: quorum, deadline, failures as data."""

import threading
from concurrent.futures import ThreadPoolExecutor

from fedgrid.apps.update import ClientUpdate, Failure
from fedgrid.flow.rounds.gather import gather


def _ok(c, gate: threading.Event | None = None):
    if gate is not None:  # a straggler: answers only once the test has looked (no race with the clock)
        gate.wait(60)
    return ClientUpdate(client=c, site="s", round=1, num_examples=1, params={})


def _boom(c):
    raise RuntimeError(f"client {c} exploded")


def test_failures_are_recorded_and_round_goes_on():
    with ThreadPoolExecutor(4) as ex:
        futs = {0: ("a", ex.submit(_ok, 0)), 1: ("b", ex.submit(_boom, 1)), 2: ("a", ex.submit(_ok, 2))}
        seen = []
        g = gather(futs, quorum=2, deadline_s=10, on_result=lambda c, ok: seen.append((c, ok)))
    assert [u.client for u in g.updates] == [0, 2]
    assert g.failures == [Failure(client=1, site="b", reason="RuntimeError: client 1 exploded")]
    assert sorted(seen) == [(0, True), (1, False), (2, True)]
    assert g.quorum_met(2) and not g.quorum_met(3)


def test_deadline_cuts_stragglers_and_marks_them_late():
    gate = threading.Event()
    with ThreadPoolExecutor(4) as ex:
        try:
            futs = {0: ("a", ex.submit(_ok, 0)), 1: ("a", ex.submit(_ok, 1, gate))}
            g = gather(futs, quorum=1, deadline_s=1.0)
            assert not futs[1][1].done()  # returned at the deadline, not when the straggler finished
            assert [u.client for u in g.updates] == [0]
            assert g.failures[0].client == 1 and g.failures[0].reason.startswith("late")
        finally:
            gate.set()


def test_gives_up_as_soon_as_quorum_is_impossible():
    gate = threading.Event()
    with ThreadPoolExecutor(4) as ex:
        try:
            futs = {0: ("a", ex.submit(_boom, 0)), 1: ("a", ex.submit(_boom, 1)), 2: ("a", ex.submit(_ok, 2, gate))}
            g = gather(futs, quorum=2, deadline_s=30)
            assert not futs[2][1].done()
            assert not g.quorum_met(2)
            reasons = {f.client: f.reason for f in g.failures}
            assert reasons[2].startswith("abandoned")
        finally:
            gate.set()


def test_a_by_reference_read_that_hangs_is_late_not_a_hung_round():
    import threading

    from fedgrid.apps.store import Ref

    release = threading.Event()

    def accept(client, site, u):
        if u.ref is not None:
            release.wait(60)  # a hung mount: the read never returns while the round waits
        return u

    try:
        hung = ClientUpdate(client=1, site="b", round=1, num_examples=5, params={},
                            ref=Ref(uri="/mnt/hung/x", sha256="0" * 64, nbytes=8))
        with ThreadPoolExecutor(2) as ex:
            futs = {0: ("a", ex.submit(_ok, 0)), 1: ("b", ex.submit(lambda: hung))}
            g = gather(futs, quorum=1, deadline_s=4.0, accept=accept)  # (client 0 answers at once)
        assert [u.client for u in g.updates] == [0]
        assert g.failures[0].client == 1 and "did not finish within round.deadline_s" in g.failures[0].reason
    finally:
        release.set()


def test_a_lost_site_fails_its_clients_and_the_others_are_still_collected():
    """The gather polls `down` while it waits; a lost site's pending client fails with the
    site's reason (not late), and its answer arriving afterwards is not counted."""
    from concurrent.futures import Future

    lost: Future = Future()  # site b's client: answers only after the gather has returned
    polled = threading.Event()

    def down():
        polled.set()
        return {"b": "site down: gone"}

    with ThreadPoolExecutor(1) as ex:
        try:
            # site a's clients answer one after another; the last only once `down` has been polled
            futs = {c: ("a", ex.submit(_ok, c, polled if c == 199 else None)) for c in range(200)}
            futs[500] = ("b", lost)
            g = gather(futs, quorum=1, deadline_s=60, down=down, poll_s=0.01)
        finally:
            polled.set()
    lost.set_result(ClientUpdate(client=500, site="b", round=1, num_examples=1, params={}))
    assert [u.client for u in g.updates] == list(range(200))
    assert g.failures == [Failure(client=500, site="b", reason="site down: gone")]
    assert not g.late


def test_answers_already_in_before_the_gather_starts_are_collected():
    from concurrent.futures import Future

    futs = {}
    for c in range(3):
        f: Future = Future()
        f.set_result(ClientUpdate(client=c, site="s", round=1, num_examples=1, params={}))
        futs[c] = ("s", f)
    seen = []
    g = gather(futs, quorum=3, deadline_s=5, on_result=lambda c, ok: seen.append(c))
    assert [u.client for u in g.updates] == [0, 1, 2] and sorted(seen) == [0, 1, 2]
