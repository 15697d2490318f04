"""The stages before round one: archiving with --fresh, and a warm-up that cannot hold the driver."""

from __future__ import annotations

import io
from concurrent.futures import Future

from fedgrid.flow.rounds.prepare import archive_rounds
from fedgrid.flow.rounds.progress import RunProgress
from fedgrid.flow.rounds.runner import _await_warm_up


def test_fresh_twice_in_one_second_keeps_both_archives(tmp_path, monkeypatch) -> None:
    import fedgrid.flow.rounds.prepare as prep

    monkeypatch.setattr(prep.time, "strftime", lambda fmt: "20261201-120000")
    dests = []
    for text in ("first", "second"):
        (tmp_path / "rounds").mkdir()
        (tmp_path / "rounds" / "round-000001.arrow").write_text(text)
        dests.append(archive_rounds(tmp_path))
    assert [d.name for d in dests] == ["20261201-120000", "20261201-120000-2"]
    assert [(d / "rounds" / "round-000001.arrow").read_text() for d in dests] == ["first", "second"]


def test_a_warm_up_that_never_answers_does_not_hold_round_one() -> None:
    out = io.StringIO()
    never, failed, ok = Future(), Future(), Future()
    failed.set_exception(RuntimeError("no torch here"))
    ok.set_result({"pid": 1})
    _await_warm_up([("a", never), ("a", failed), ("b", ok)], 0.2, RunProgress(1, 0, stream=out))
    text = out.getvalue()
    assert "warm-up failed on a worker: no torch here" in text and "1 warm-up task(s) unanswered" in text
