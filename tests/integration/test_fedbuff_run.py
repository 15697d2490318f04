"""FedBuff's asynchronous loop in a real run (the server step by hand: tests/unit/test_fedbuff.py)."""

from __future__ import annotations

from fedgrid.flow.config import parse_job

# threads: the loop, its buffer and its staleness do not depend on the executor kind
SITES = [{"name": "a", "executor": {"kind": "local", "workers": 1}, "clients": 3},
         {"name": "b", "executor": {"kind": "local", "workers": 1}, "clients": 3}]


def test_async_run_uses_stale_updates_survives_failures_and_resumes(tmp_path, make_job) -> None:
    from fedgrid.flow.rounds.runner import run

    # site b answers each task only once the server has stepped past the model it trained from
    # (hold_at: stale for certain, and at most one b update per step); site a's answers take 0.2 s
    # each, so a step needs 0.6 s of them: b's released answer (a thread waking up) lands in one of
    # the next steps with a wide margin
    faults = [{"site": "b", "hold_at": list(range(1, 10))}, {"site": "a", "delay_s": 0.2},
              {"clients": [1], "fail_p": 0.5}]
    over = dict(model="mlp", strategy={"name": "fedbuff", "buffer_size": 3}, sites=SITES,
                train={"epochs": 2, "batch_size": 16, "lr": 0.1}, round={"deadline_s": 60}, faults=faults)
    first = run(parse_job(make_job(tmp_path / "run", rounds=6, **over)), quiet=True)
    assert [r["round"] for r in first.rows] == list(range(1, 7))
    assert all(r["clients_ok"] == 3 for r in first.rows)  # one server step per buffer of 3 updates
    ups = [u for r in first.rows for u in r["updates"]]
    # the held site trained while the other moved the model on: its updates arrive stale
    assert any(u["site"] == "b" and u["staleness"] >= 1 for u in ups)
    assert sum(u["site"] == "a" for u in ups) > sum(u["site"] == "b" for u in ups)  # fast site contributes more
    assert all(f["client"] == 1 and "InjectedFault" in f["reason"] for r in first.rows for f in r["failures"])
    again = run(parse_job(make_job(tmp_path / "run", rounds=9, **over)), quiet=True)
    assert again.resumed_from == 6 and [r["round"] for r in again.rows] == list(range(1, 10))
    assert again.rows[-1]["test_accuracy"] > 0.5  # (digits, 10 classes: it learns)
