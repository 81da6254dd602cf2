"""Charts of a benchmark run, drawn from the JSON that ``bench.py`` writes.

Usage: ``python benchmarks/plots.py RESULTS.json [--out-dir DIR]``.
``bench.py`` calls :func:`write_charts` itself after every run when
matplotlib is installed (the ``bench`` extra; ``nox -s bench`` installs it).

One PNG per part the run measured, named after the JSON file and written
beside it (``latest.json`` gives ``latest-cpu.png``, ``latest-polling.png``
and ``latest-ratelimit.png``):

* ``cpu`` (part a): client CPU per task of banana_async beside the plain
  aiohttp and httpx loops, the median of each variant and every run.
* ``polling`` (part c): status queries per task against the mean detection
  delay, for banana_async's adaptive polling and the plain 2 s loop as
  measured, beside two families of ideal pollers computed on the very tasks
  of the run (their durations are in the JSON): one that sends every
  task's first query at one fixed time and then polls at the interval, and
  one that polls at a fixed interval from the start. The ideal pollers
  spend no time on the network, so they are a bound, not a rival.
* ``ratelimit`` (part d): completed images per second and the share of
  requests answered 429, second by second, for the default client (which
  learns the provider's limit) beside the client told the limit, with and
  without ``Retry-After`` on the 429s.

Parts without a chart (memory, journal, events) are skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

# No display on the machines that run the benchmarks; Agg draws PNGs in memory.
matplotlib.use("Agg")

import bench  # the targets: one source for the table and the charts
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

DPI = 110
MEASURED = "#1f5fa8"
"""banana_async's colour in every chart; baselines are grey or orange."""
BASELINE = "#e07b00"
IDEAL = "#7a7a7a"


# -- a. CPU per task ---------------------------------------------------------------------

CPU_LABELS = {
    "banana-fixed": "banana_async\n(adaptive_polling=False)",
    "banana": "banana_async\n(default: adaptive polling)",
    "aiohttp": "plain aiohttp loop",
    "httpx": "plain httpx loop",
}


def cpu_chart(details: dict[str, Any], sizes: dict[str, Any], note: str = "") -> Figure:
    """Part a: CPU per task of each variant, the median as a bar and every run as a dot."""
    medians: dict[str, float] = details["median_cpu_us_per_task"]
    variants = [v for v in CPU_LABELS if v in medians]
    samples: dict[str, list[float]] = {v: [] for v in variants}
    for run in details["runs"]:
        if run["variant"] in samples:
            samples[run["variant"]].append(run["cpu_us_per_task"])
    figure = Figure(figsize=(8, 4.2), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    # Top to bottom in the order of CPU_LABELS: banana_async first.
    positions = list(range(len(variants)))[::-1]
    colours = [MEASURED if v.startswith("banana") else BASELINE for v in variants]
    axes.barh(positions, [medians[v] for v in variants], color=colours, alpha=0.75, height=0.6)
    for position, variant in zip(positions, variants, strict=True):
        runs = samples[variant]
        axes.plot(runs, [position] * len(runs), "o", color="black", markersize=3.5)
    plain = medians["aiohttp"]
    # A variant far slower than the rest (httpx at high concurrency, say)
    # would squash the others into slivers: the axis stops short of it.
    ordered = sorted(medians[v] for v in variants)
    cut = 3 * ordered[-2] if len(ordered) > 1 and ordered[-1] > 4 * ordered[-2] else None
    widest = max(max(medians[v], *samples[v]) for v in variants)
    right = cut if cut is not None else widest * 1.45
    for position, variant in zip(positions, variants, strict=True):
        text = f"{medians[variant]:,.0f} µs"
        if variant != "aiohttp":
            text += f" ({medians[variant] / plain:.2f}x aiohttp)"
        end = max(medians[variant], *samples[variant])
        if cut is not None and end > cut:
            # Written inside the bar, at the cut, with an arrow for "further on".
            axes.annotate(
                text + " →",
                (cut, position),
                xytext=(-6, 0),
                textcoords="offset points",
                ha="right",
                va="center",
                fontsize=9,
            )
            continue
        axes.annotate(
            text,
            (end, position),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=9,
        )
    target = bench.CPU_TARGET * plain
    axes.axvline(target, color="black", linestyle="--", linewidth=1)
    axes.annotate(
        f"target for adaptive_polling=False: ≤ {bench.CPU_TARGET:g}x aiohttp",
        (target, positions[0] + 0.75),
        xytext=(4, 0),
        textcoords="offset points",
        fontsize=8,
        va="center",
    )
    axes.set_yticks(positions, [CPU_LABELS[v] for v in variants], fontsize=9)
    axes.set_xlim(0, right)
    axes.set_ylim(-0.6, positions[0] + 1.05)
    axes.set_xlabel("client CPU time per task (µs, user + system; bar: median, dots: runs)")
    axes.set_title(
        f"a. CPU per task: {sizes['cpu_count']:,} tasks answered at their 2nd query, "
        f"concurrency {sizes['cpu_concurrency']}{note}",
        fontsize=10,
    )
    axes.grid(axis="x", alpha=0.3)
    return figure


# -- c. polling --------------------------------------------------------------------------


def first_poll_at(durations: Sequence[float], first: float, interval: float) -> tuple[float, float]:
    """Queries per task and mean delay of an ideal poller, on tasks of these durations.

    It queries every task ``first`` seconds after its creation, then every
    ``interval`` seconds until the task is done, and spends no time on the
    network: a task of duration ``d`` is seen at the first query at or
    after ``d``.
    """
    queries = delay = 0.0
    for duration in durations:
        later = max(0, math.ceil((duration - first) / interval))
        queries += 1 + later
        delay += first + later * interval - duration
    return queries / len(durations), delay / len(durations)


def best_first_poll(
    firsts: Sequence[float], curve: Sequence[tuple[float, float]], delay_target: float
) -> tuple[float, float, float] | None:
    """Of the ideal pollers ``curve`` (queries, delay) for ``firsts``, the cheapest on time.

    Returns (first poll, queries per task, mean delay) of the one with the
    fewest queries among those whose mean delay meets ``delay_target``, or
    None when none does.
    """
    meeting = [
        (queries, first, delay)
        for first, (queries, delay) in zip(firsts, curve, strict=True)
        if delay <= delay_target
    ]
    if not meeting:
        return None
    queries, first, delay = min(meeting)
    return first, queries, delay


def polling_chart(details: dict[str, Any], sizes: dict[str, Any], note: str = "") -> Figure:
    """Part c: queries per task against mean detection delay, measured and ideal.

    The left panel shows every poller; the right one is a close-up of the
    dashed box around banana_async's figures and the best fixed first poll.
    """
    interval = float(sizes["poll_interval"])
    durations: list[float] = details["banana"]["durations_s"]
    figure = Figure(figsize=(12, 5.8), dpi=DPI, layout="constrained")
    axes, zoom = figure.subplots(1, 2, width_ratios=[2, 1])
    # The ideal pollers, as curves over their one setting. Their first poll
    # comes no sooner than the interval, as banana_async's does.
    step = interval / 100
    firsts = [interval + i * step for i in range(int((max(durations) - interval) / step) + 2)]
    curve = [first_poll_at(durations, first, interval) for first in firsts]
    intervals = [interval * i / 40 for i in range(8, 121)]  # 0.2 to 3 intervals
    every = [first_poll_at(durations, each, each) for each in intervals]
    delay_target = bench.BATCH_DELAY_TARGET_INTERVALS * interval
    queries_target = bench.BATCH_QUERIES_TARGET
    best = best_first_poll(firsts, curve, delay_target)
    first_wave = sizes["poll_concurrency"]
    for panel in (axes, zoom):
        panel.plot(
            [c[0] for c in curve],
            [c[1] for c in curve],
            color=IDEAL,
            linewidth=1.5,
            label=f"ideal: 1st query at a fixed time T, then every {interval:g} s",
        )
        panel.plot(
            [c[0] for c in every],
            [c[1] for c in every],
            color=IDEAL,
            linestyle=":",
            linewidth=1.5,
            label="ideal: a query every I s from the start (I from "
            f"{intervals[0]:g} to {intervals[-1]:g} s)",
        )
        # The whole batch's target: a box in the lower left.
        panel.fill_between(
            [0, queries_target], 0, delay_target, color=MEASURED, alpha=0.07, zorder=0
        )
        panel.plot(
            [0, queries_target, queries_target],
            [delay_target, delay_target, 0],
            color=MEASURED,
            linestyle="--",
            linewidth=0.8,
            label=f"target, whole batch: ≤ {queries_target:g} queries/task, ≤ {delay_target:g} s",
        )
        if best is not None:
            # Hollow and under the measured points, which may land right on it.
            panel.plot(
                best[1],
                best[2],
                "*",
                markerfacecolor="none",
                markeredgecolor="black",
                markersize=16,
                linestyle="none",
                zorder=4,
                label=f"ideal: the fewest queries for a mean delay ≤ {delay_target:g} s "
                f"(T={best[0]:.2f} s, {best[1]:.2f} queries/task)",
            )
        for name, marker, size, text in (
            ("all", "o", 9, "all tasks"),
            ("first", "^", 7, f"1st wave (first {first_wave} inputs)"),
            ("steady", "s", 7, "after the 1st wave"),
        ):
            for variant, colour, who in (
                ("banana", MEASURED, "banana_async, adaptive"),
                ("fixed", BASELINE, f"plain loop, every {interval:g} s"),
            ):
                figures = details[variant][name]
                panel.plot(
                    figures["queries_per_task"],
                    figures["mean_delay_s"],
                    marker,
                    color=colour,
                    markersize=size,
                    markeredgecolor="black",
                    markeredgewidth=0.5,
                    linestyle="none",
                    label=f"measured: {who}, {text}",
                    zorder=6,
                )
        panel.grid(alpha=0.3)
        panel.set_xlabel("status queries per task (counted by the provider)")

    def mark(panel: Axes, every_t: float, low: float, high: float) -> None:
        """Dots with their T on the fixed-first-poll curve, every ``every_t`` seconds."""
        first = math.ceil(low / every_t) * every_t
        while first <= high:
            queries, delay = first_poll_at(durations, first, interval)
            panel.plot(queries, delay, "o", color=IDEAL, markersize=3)
            panel.annotate(
                f"T={first:g} s",
                (queries, delay),
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=7,
                color=IDEAL,
            )
            first += every_t

    mark(axes, interval, interval, max(durations))
    fixed_q = max(details["fixed"][n]["queries_per_task"] for n in ("all", "first", "steady"))
    delays = [details[v][n]["mean_delay_s"] for v in ("banana", "fixed") for n in ("all", "first")]
    axes.set_xlim(0.8, fixed_q + 1.2)
    axes.set_ylim(0, max(*delays, interval) * 1.35)
    axes.set_ylabel("mean detection delay (s): seen done - really done")
    axes.legend(fontsize=7, loc="upper right", framealpha=0.9)
    # The close-up: banana_async after the first wave and over the whole
    # batch, the best fixed first poll and the target's corner.
    xs = [details["banana"][n]["queries_per_task"] for n in ("all", "steady")]
    ys = [details["banana"][n]["mean_delay_s"] for n in ("all", "steady")]
    xs.append(queries_target)
    ys.append(delay_target)
    if best is not None:
        xs.append(best[1])
        ys.append(best[2])
    left, right = min(xs) - 0.3, max(xs) + 0.3
    bottom, top = min(ys) - 0.25 * interval / 2, max(ys) + 0.25 * interval / 2
    zoom.set_xlim(left, right)
    zoom.set_ylim(bottom, top)
    mark(zoom, interval / 4, interval, max(durations))
    axes.add_patch(
        Rectangle(
            (left, bottom),
            right - left,
            top - bottom,
            fill=False,
            linestyle="--",
            linewidth=0.8,
            edgecolor="black",
            zorder=7,
        )
    )
    zoom.set_title("close-up of the dashed box", fontsize=9)
    zoom.set_ylabel("mean detection delay (s)")
    figure.suptitle(
        f"c. Polling: {sizes['poll_count']} tasks of {sizes['poll_min']:g}-"
        f"{sizes['poll_max']:g} s, concurrency {sizes['poll_concurrency']}, "
        f"poll interval {interval:g} s (lower left is better){note}",
        fontsize=11,
    )
    return figure


# -- d. rate-limited batch ---------------------------------------------------------------


def _per_second(counts: Sequence[int], step: float) -> list[float]:
    return [count / step for count in counts]


def _share(limited: Sequence[int], accepted: Sequence[int]) -> list[float]:
    """Percent of the requests of each bin answered 429 (NaN where none arrived: a gap)."""
    return [
        100 * refused / (refused + ok) if refused + ok else math.nan
        for refused, ok in zip(limited, accepted, strict=True)
    ]


def _steps(axes: Axes, values: Sequence[float], step: float, **style: Any) -> None:
    """One value per bin, drawn as a flat step across each bin."""
    times = [i * step for i in range(len(values) + 1)]
    axes.stairs(values, times, baseline=None, **style)


def ratelimit_chart(details: dict[str, Any], sizes: dict[str, Any], note: str = "") -> Figure:
    """Part d: images/s and the share of 429s over time, with and without Retry-After."""
    measured, baseline = list(details["variants"])[:2]
    baseline_label = "told the limit: " + ", ".join(
        f"{key}={value:g}"
        for key, value in details["variants"][baseline].items()
        if key == "requests_per_second"
    )
    modes = [mode for mode in details if mode != "variants"]
    figure = Figure(figsize=(10, 6.4), dpi=DPI, layout="constrained")
    grid = figure.subplots(2, len(modes), sharex=True, sharey="row", squeeze=False)
    share_target = 100 * bench.RATE_LIMITED_SHARE_TARGET
    for column, mode in enumerate(modes):
        top, bottom = grid[0][column], grid[1][column]
        for variant, colour, width, label in (
            (baseline, IDEAL, 1.2, baseline_label),
            (measured, MEASURED, 1.8, "default client: learns the limit"),
        ):
            run = details[mode][variant]
            series = run["series"]
            step = float(series["step_s"])
            _steps(
                top,
                _per_second(series["images"], step),
                step,
                color=colour,
                linewidth=width,
                label=f"{label} (mean {run['images_per_s']:.1f}/s)",
            )
            _steps(
                bottom,
                _share(series["rate_limited"], series["accepted"]),
                step,
                color=colour,
                linewidth=width,
                label=f"{label} ({100 * run['rate_limited_share']:.1f} % overall)",
            )
        best = details[mode][measured]["best_images_per_s"]
        top.axhline(
            best,
            color="black",
            linestyle=":",
            linewidth=1,
            label=f"a client that knows every duration (mean {best:.1f}/s)",
        )
        bottom.axhline(
            share_target,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"target for the whole batch: ≤ {share_target:g} %",
        )
        top.set_title(f"429s {mode}", fontsize=10)
        top.set_ylabel("images completed per second")
        bottom.set_ylabel("requests answered 429 (%)")
        bottom.set_xlabel(f"time since the batch started (s; {step:g} s bins)")
        for axes in (top, bottom):
            axes.grid(alpha=0.3)
            axes.legend(fontsize=7.5, loc="upper right")
            axes.set_xlim(left=0)
    shares = [
        share
        for mode in modes
        for variant in (measured, baseline)
        for share in _share(
            details[mode][variant]["series"]["rate_limited"],
            details[mode][variant]["series"]["accepted"],
        )
        if not math.isnan(share)
    ]
    grid[1][0].set_ylim(0, max([2 * share_target, *shares]) * 1.1)
    # Headroom above the busiest second for the legends.
    busiest = max(
        count / float(details[mode][variant]["series"]["step_s"])
        for mode in modes
        for variant in (measured, baseline)
        for count in details[mode][variant]["series"]["images"]
    )
    best = max(details[mode][measured]["best_images_per_s"] for mode in modes)
    grid[0][0].set_ylim(0, max(busiest, best) * 1.35)
    figure.suptitle(
        f"d. Rate-limited batch: {sizes['rl_count']} tasks of {sizes['rl_min']:g}-"
        f"{sizes['rl_max']:g} s, concurrency {sizes['rl_concurrency']}, provider limit "
        f"{sizes['rl_rate']:g} requests/s per key (burst {sizes['rl_burst']:g}){note}",
        fontsize=11,
    )
    return figure


# -- files -------------------------------------------------------------------------------

CHARTS = {"cpu": cpu_chart, "polling": polling_chart, "ratelimit": ratelimit_chart}


def write_charts(
    report: dict[str, Any], json_path: Path, out_dir: Path | None = None
) -> list[Path]:
    """Write one PNG per charted part of ``report``; return their paths.

    Args:
        report: What ``bench.py`` wrote to ``json_path``.
        json_path: The JSON file; each chart is named after it
            (``latest.json``: ``latest-cpu.png``, ...).
        out_dir: Where the charts go; beside ``json_path`` when None.
    """
    folder = json_path.parent if out_dir is None else out_dir
    folder.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, Any] = report["meta"]["sizes"]
    written = []
    for part, draw in CHARTS.items():
        if part not in report["details"]:
            continue
        note = "\nQUICK RUN: smoke-test sizes, not for judging" if report["meta"]["quick"] else ""
        figure = draw(report["details"][part], sizes, note)
        path = folder / f"{json_path.stem}-{part}.png"
        figure.savefig(path)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw the charts of a benchmark run.")
    parser.add_argument("results", type=Path, help="the JSON that bench.py wrote")
    parser.add_argument("--out-dir", type=Path, help="where the PNGs go (default: beside it)")
    args = parser.parse_args(argv)
    report: dict[str, Any] = json.loads(args.results.read_text())
    written = write_charts(report, args.results, args.out_dir)
    for path in written:
        print(f"chart written to {path}")
    if not written:
        print(f"no charted part ({', '.join(CHARTS)}) in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
