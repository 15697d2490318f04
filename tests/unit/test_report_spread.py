"""The report's federated-evaluation spread: every evaluated client's value, per round and metric."""

from __future__ import annotations

from fedgrid.flow.commands.report import fed_spread, plot_bytes, plot_spread


def _row(r: int, clients: list[tuple[float, float]] | None) -> dict:
    return {"round": r, "bytes_up": 2**20 * r, "bytes_down": 2**21, "bytes_in_sites": None,
            "fed_clients": None if clients is None else [
                {"client": i, "site": "a", "examples": 10, "metrics": [{"name": "loss", "value": lo},
                                                                       {"name": "accuracy", "value": acc}]}
                for i, (lo, acc) in enumerate(clients)]}


def test_the_spread_holds_each_evaluated_clients_value_and_skips_rounds_without_evaluation(tmp_path):
    rows = [_row(1, None), _row(2, [(1.0, 0.5), (2.0, 0.25)]), _row(3, []), _row(4, [(0.5, 0.75)])]
    spread = fed_spread(rows)
    assert spread == {"loss": [(2, [1.0, 2.0]), (4, [0.5])], "accuracy": [(2, [0.5, 0.25]), (4, [0.75])]}
    plot_spread(spread, tmp_path / "s.png")
    plot_bytes(rows, tmp_path / "b.png")
    assert (tmp_path / "s.png").stat().st_size > 10_000 and (tmp_path / "b.png").stat().st_size > 10_000
