"""The report (`fedgrid report RUN_DIR`, and what a finished run's trackers keep): PNG plots and
a Markdown summary of a run, from its files only.

Three figures, each answering a question people ask after a night of training:
- accuracy.png -- is it learning? Test accuracy and loss per round (train loss beside them).
- sites.png -- which site holds the rounds up? Median train and queue seconds per site per round.
- failures.png -- what went wrong, and when? Failed clients per round, stacked by kind of reason.
- bytes.png -- what crossed the network each round (and, with site aggregation, what stayed in the sites).
- fed_spread.png (with federated evaluation) -- do all clients learn? Each round's distribution of
  the clients' held-out metrics as box plots; metrics.png (clients' own metrics) beside it.

summary.md puts the numbers next to the images (rounds, best and last accuracy, seconds per round,
failures by reason, a table per site). matplotlib draws with the Agg backend, so it works on a
login node without a display.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from fedgrid.flow.results.status import reason_kind, status_and_rows


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _integer_axes(*axes, y: bool = False) -> None:
    """Rounds (and failure counts) are whole numbers: no 1.5 on the axis."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if y:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _line(ax: Any, rows: list[dict[str, Any]], key: str, **style: Any) -> None:
    """`key` per round, for the rounds that have it (evaluation may skip some)."""
    pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
    if pts:
        ax.plot(*zip(*pts, strict=True), **style)


def _legend(ax: Any, where: str) -> None:
    """A legend for what the panel shows (a run may have no loss of any kind to plot)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=where, fontsize="small")


def plot_accuracy(rows: list[dict[str, Any]], path: Path) -> None:
    plt = _plt()
    rounds = [r["round"] for r in rows]
    fig, (a, b) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    _line(a, rows, "test_accuracy", marker="o", ms=3, label="test accuracy")
    _line(a, rows, "train_accuracy", ls="--", alpha=0.7, label="train accuracy (clients)")
    _line(a, rows, "fed_accuracy", marker="s", ms=3, color="C2", label="federated accuracy (clients' held-out)")
    a.set_ylabel("accuracy")
    a.grid(alpha=0.3)
    _legend(a, "lower right")
    _line(b, rows, "test_loss", marker="o", ms=3, color="C3", label="test loss")
    _line(b, rows, "train_loss", ls="--", alpha=0.7, color="C1", label="train loss (clients)")
    _line(b, rows, "fed_loss", marker="s", ms=3, color="C4", label="federated loss")
    b.set_ylabel("loss")
    b.set_xlabel("round")
    b.grid(alpha=0.3)
    _legend(b, "upper right")
    if rounds:
        b.set_xlim(min(rounds) - 0.5, max(rounds) + 0.5)
    _integer_axes(a, b)
    fig.suptitle("accuracy and loss per round")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    """The clients' own metrics beyond loss and accuracy (those have their own plot)."""
    seen = dict.fromkeys(m["name"] for r in rows for u in (r.get("updates") or []) for m in (u.get("metrics") or []))
    seen.update(dict.fromkeys(m["name"] for r in rows for c in (r.get("fed_clients") or []) for m in c["metrics"]))
    return [n for n in seen if n not in ("loss", "accuracy")]


def plot_metrics(rows: list[dict[str, Any]], path: Path, names: list[str]) -> None:
    """One panel per metric: the clients' training mean, and the federated evaluation's mean with
    its spread across clients (the band from the lowest client to the mean, the 10th percentile)."""
    plt = _plt()
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.6 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        _line(ax, rows, f"train_{name}", ls="--", alpha=0.8, label="train (clients' mean)")
        _line(ax, rows, f"fed_{name}", marker="s", ms=3, color="C2", label="federated (mean)")
        _line(ax, rows, f"fed_{name}_p10", ls=":", color="C2", alpha=0.8, label="federated (10th percentile)")
        pts = [(r["round"], r[f"fed_{name}_min"], r[f"fed_{name}"]) for r in rows if r.get(f"fed_{name}") is not None]
        if pts:
            xs, lo, hi = zip(*pts, strict=True)
            ax.fill_between(xs, lo, hi, color="C2", alpha=0.15, label="lowest client to mean")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        _legend(ax, "best")
    axes[-1, 0].set_xlabel("round")
    _integer_axes(*axes[:, 0])
    fig.suptitle("the clients' own metrics per round")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def site_series(rows: list[dict[str, Any]], key: str) -> dict[str, list[tuple[int, float]]]:
    """Per site: (round, median of `key` over that round's updates from the site)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        by: dict[str, list[float]] = {}
        for u in r.get("updates") or []:
            if u.get(key) is not None:
                by.setdefault(u["site"], []).append(u[key])
        for site, xs in by.items():
            out.setdefault(site, []).append((r["round"], statistics.median(xs)))
    return dict(sorted(out.items()))


def plot_sites(rows: list[dict[str, Any]], path: Path) -> None:
    plt = _plt()
    fig, (a, b) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for ax, key, label in ((a, "train_s", "train s (median per update)"), (b, "queue_s", "queue s (median)")):
        for i, (site, pts) in enumerate(site_series(rows, key).items()):
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, color=f"C{i % 10}", label=site)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        _legend(ax, "upper right")
    b.set_xlabel("round")
    _integer_axes(a, b)
    fig.suptitle("per-site timings")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_failures(rows: list[dict[str, Any]], path: Path) -> None:
    plt = _plt()
    kinds = sorted({reason_kind(f.get("reason", "")) for r in rows for f in r.get("failures") or []})
    rounds = [r["round"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bottom = [0] * len(rows)
    for i, kind in enumerate(kinds):
        counts = [sum(1 for f in r.get("failures") or [] if reason_kind(f.get("reason", "")) == kind) for r in rows]
        ax.bar(rounds, counts, bottom=bottom, color=f"C{(i + 3) % 10}", label=kind)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    if not kinds:
        ax.text(0.5, 0.5, "no failures", transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_xlabel("round")
    ax.set_ylabel("failed clients")
    ax.grid(alpha=0.3, axis="y")
    if kinds:
        ax.legend(loc="upper right", fontsize="small")
    _integer_axes(ax, y=True)
    fig.suptitle("failures per round, by kind")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fed_spread(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, list[float]]]]:
    """Per federated-evaluation metric: (round, every evaluated client's value) for each round that had one."""
    out: dict[str, list[tuple[int, list[float]]]] = {}
    for r in rows:
        per: dict[str, list[float]] = {}
        for c in r.get("fed_clients") or []:
            for m in c.get("metrics") or []:
                if isinstance(m.get("value"), int | float):
                    per.setdefault(m["name"], []).append(float(m["value"]))
        for name, vals in per.items():
            out.setdefault(name, []).append((r["round"], vals))
    return out


def plot_spread(spread: dict[str, list[tuple[int, list[float]]]], path: Path) -> None:
    """fed_spread.png -- do all clients learn, or only the mean? One box per evaluated round
    (clients' held-out metric: median, quartiles, whiskers at 1.5 IQR, outliers), a panel per metric."""
    plt = _plt()
    names = sorted(spread)
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.6 * len(names) + 0.6), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        rounds, vals = zip(*spread[name], strict=True)
        width = max(0.5, 0.6 * min((b - a for a, b in zip(rounds, rounds[1:], strict=False)), default=1))
        ax.boxplot(vals, positions=rounds, widths=width, manage_ticks=False, flierprops={"ms": 3})
        ax.set_ylabel(f"client {name}")
        ax.grid(alpha=0.3)
    axes[0, 0].set_title("federated evaluation across clients, per round")
    axes[-1, 0].set_xlabel("round")
    _integer_axes(axes[-1, 0])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bytes(rows: list[dict[str, Any]], path: Path) -> None:
    """bytes.png -- what crossed the network each round: up (to the driver), down (to the
    clients), and, with site aggregation, what stayed inside the sites."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    mib = 2**20
    for key, label in (("bytes_up", "up (to the driver)"), ("bytes_down", "down (to the clients)"),
                       ("bytes_in_sites", "kept inside the sites")):
        pts = [(r["round"], r[key] / mib) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("MiB per round")
    ax.grid(alpha=0.3)
    _legend(ax, "best")
    _integer_axes(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _traffic(rows: list[dict[str, Any]]) -> list[str]:
    """Bytes up and down: per round and per client (what compression changes)."""
    up = [r.get("bytes_up") or 0 for r in rows]
    down = [r.get("bytes_down") or 0 for r in rows]
    per_client_up = [u.get("bytes_up") for r in rows for u in r.get("updates") or [] if u.get("bytes_up")]
    sel = sum(r.get("clients_selected") or 0 for r in rows)
    mib = 2**20
    out = [f"| bytes up / down per round (mean) | {statistics.mean(up) / mib:.2f} / "
           f"{statistics.mean(down) / mib:.2f} MiB |"]
    if per_client_up and sel:
        out.append(f"| bytes up / down per client and round (mean) | {statistics.mean(per_client_up) / mib:.3f} / "
                   f"{sum(down) / sel / mib:.3f} MiB |")
    return out


def _metric_lines(m: dict[str, Any]) -> list[str]:
    out = [f"| train {k} (clients, last round) | {v:.4g} |" for k, v in (m.get("train") or {}).items()]
    if fed := m.get("federated"):
        out += [f"| federated {k} (round {fed['round']}, {fed['clients']} clients): mean / min / p10 | "
                f"{_num(v['mean'], '.4g')} / {_num(v['min'], '.4g')} / {_num(v['p10'], '.4g')} |"
                for k, v in fed["metrics"].items()]
    return out


def summary_md(info: dict[str, Any], rows: list[dict[str, Any]], images: list[str]) -> str:
    lines = [f"# {info['job']}: {info['rounds_done']} of {info['rounds_target']} rounds", "",
             f"Run directory: `{info['run_dir']}`", ""]
    total = sum(r.get("seconds") or 0 for r in rows)
    lines += ["| | |", "|---|---|",
              f"| last round | {info['last_round']} |",
              f"| test accuracy (last / best) | {_num(info['last_accuracy'], '.4f')} / "
              f"{_num(info['best_accuracy'], '.4f')} |",
              f"| test loss (last) | {_num(info['last_loss'], '.4f')} |",
              f"| median seconds per round | {_num(info['seconds_per_round'], '.2f')} |",
              f"| training wall time (sum of rounds) | {total:.1f} s |",
              f"| client failures | {info['total_failures']} |"]
    if info.get("next_firing"):
        lines.append(f"| next scheduled run | {info['next_firing']} |")
    lines += _traffic(rows)
    eps = [r["dp_epsilon"] for r in rows if r.get("dp_epsilon") is not None]
    if eps:
        lines.append(f"| privacy: epsilon after the last round | {eps[-1]:.2f} |")
    lines += _metric_lines(info.get("metrics") or {})
    lines += ["", "## Failures by reason", ""]
    if info["failures_by_reason"]:
        lines += ["| reason | count |", "|---|---|"]
        lines += [f"| {k} | {n} |" for k, n in info["failures_by_reason"].items()]
    else:
        lines.append("No client failed.")
    lines += ["", "## Sites", "", "| site | updates | failures | median train s | median queue s |",
              "|---|---|---|---|---|"]
    lines += [f"| {s} | {v['updates']} | {v['failures']} | {_num(v['train_s_median'], '.2f')} | "
              f"{_num(v['queue_s_median'], '.2f')} |" for s, v in info["sites"].items()]
    lines += ["", "## Plots", ""] + [f"![{Path(i).stem}]({i})" for i in images]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path, out: Path | None = None) -> list[Path]:
    """Write accuracy.png, sites.png, failures.png, bytes.png (metrics.png when the clients report
    their own metrics, fed_spread.png with federated evaluation) and summary.md into `out` (default
    <run_dir>/report); returns their paths. Raises ValueError when the run has no rounds yet.
    Written into the run directory, the report is made as the run's own files are."""
    from fedgrid.flow.persist.runlock import writing_in

    with writing_in(run_dir, out):
        return _write_report(run_dir.resolve(), out)


def _write_report(run_dir: Path, out: Path | None) -> list[Path]:
    info, rows = status_and_rows(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}: no finished rounds to report on yet")
    out = out or run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    pngs = [out / "accuracy.png", out / "sites.png", out / "failures.png"]
    for fn, path in zip((plot_accuracy, plot_sites, plot_failures), pngs, strict=True):
        fn(rows, path)
    if names := metric_names(rows):
        pngs.append(out / "metrics.png")
        plot_metrics(rows, pngs[-1], names)
    if spread := fed_spread(rows):
        pngs.append(out / "fed_spread.png")
        plot_spread(spread, pngs[-1])
    pngs.append(out / "bytes.png")
    plot_bytes(rows, pngs[-1])
    md = out / "summary.md"
    md.write_text(summary_md(info, rows, [p.name for p in pngs]))
    return [*pngs, md]
