"""Figures, tables, report and status on a small synthetic metrics table.

The table has 2 seeds x rounds 0..3 of the main chain plus a 'reinit' branch at rounds 1..3;
seed 1's reinit at round 3 diverges. Each run's early-stop step and accuracies are chosen
while building it (the validation loss is lowest at a random step), so expected values are
computed from those choices, not from lotto's own summary.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from lotto import cli
from lotto.core import metrics
from lotto.core.spec import DatasetSpec, ExperimentSpec, ModelSpec, PruningSpec, TrainingSpec
from lotto.core.spec_types import EXECUTION_ONLY
from lotto.outputs import figures, report, status, tables

SEEDS = (0, 1)
ROUNDS = (0, 1, 2, 3)
STEPS = (0, 100, 200, 300, 400)
RATE = 0.512  # density kept per round
DIVERGED = (1, 3, "reinit")  # (seed, round, branch)
ROOT = Path(__file__).resolve().parents[1]


def _runs():
    for seed in SEEDS:
        for round_ in ROUNDS:
            for branch in ("main", "reinit"):
                if branch == "reinit" and round_ == 0:
                    continue
                yield seed, round_, branch


def build_metrics(path: Path, experiment: str = "toy", seed_offset: int = 0) -> dict:
    """Write the synthetic table to `path`; return per run the true early-stop step and
    accuracies (fractions), the density and whether it diverged."""
    rng = np.random.default_rng(seed_offset)
    rows, truth = [], {}
    for seed, round_, branch in _runs():
        density = RATE**round_
        stop = int(rng.choice(STEPS[1:]))
        accuracy = rng.uniform(0.5, 0.99, len(STEPS))
        diverged = (seed, round_, branch) == DIVERGED
        for i, step in enumerate(STEPS):
            val_loss = 0.1 + abs(step - stop) / 1000
            common = {"seed": seed, "round": round_, "branch": branch, "density": density, "step": step,
                      "lr": 0.1}
            rows.append({**common, "split": "val", "loss": val_loss, "accuracy": accuracy[i], "status": "ok"})
            rows.append({**common, "split": "test", "loss": 1.0, "accuracy": accuracy[i], "status": "ok"})
            if step:
                train_status = "diverged" if diverged and step == STEPS[-1] else "ok"
                rows.append({**common, "split": "train", "loss": 0.5, "accuracy": 0.9, "status": train_status})
        truth[(seed, round_, branch)] = {
            "stop": stop,
            "acc_stop": accuracy[STEPS.index(stop)],
            "acc_final": accuracy[-1],
            "density": density,
            "diverged": diverged,
        }
    metrics.write(path, rows, experiment=experiment)
    return truth


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "results" / "toy" / "metrics.parquet"
    truth = build_metrics(path)
    return path, metrics.read([path]), truth


def _series(ax) -> dict:
    """Every labelled data line of the axes: plain lines and the data line of error bars."""
    lines = {line.get_label(): line for line in ax.get_lines()}
    lines.update({c.get_label(): c.lines[0] for c in ax.containers if c.get_label()})
    return lines


def _check_image(png: Path) -> None:
    assert png.stat().st_size > 0 and png.with_suffix(".pdf").stat().st_size > 0
    assert png.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    image = matplotlib.image.imread(png)
    width, height = figures.SIZE_IN
    assert image.shape[:2] == (round(height * figures.DPI), round(width * figures.DPI))


@pytest.mark.parametrize("which", ["early_stop", "final"])
def test_accuracy_vs_density_axes_mean_and_diverged(toy, tmp_path, which):
    _, frame, truth = toy
    png = tmp_path / "fig" / "accuracy.png"
    fig = figures.accuracy_vs_density(frame, png, which=which)
    _check_image(png)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.xaxis_inverted()
    left, right = ax.get_xlim()
    assert left > 100 > right
    key = "acc_stop" if which == "early_stop" else "acc_final"
    lines = _series(ax)
    # the reinit line's mean leaves out the diverged run
    reinit = lines["toy: reinit"]
    expected = [
        100 * np.mean([truth[(s, r, "reinit")][key] for s in SEEDS if (s, r, "reinit") != DIVERGED])
        for r in ROUNDS[1:]
    ]
    np.testing.assert_allclose(reinit.get_ydata(), expected)
    np.testing.assert_allclose(reinit.get_xdata(), [100 * RATE**r for r in ROUNDS[1:]])
    crosses = lines[figures.DIVERGED_LABEL]
    np.testing.assert_allclose(crosses.get_xdata(), [100 * RATE ** DIVERGED[1]])
    np.testing.assert_allclose(crosses.get_ydata(), [100 * truth[DIVERGED][key]])
    dense = lines["dense"]
    assert dense.get_linestyle() == "--"
    np.testing.assert_allclose(dense.get_ydata()[0], 100 * np.mean([truth[(s, 0, "main")][key] for s in SEEDS]))
    tick_labels = [t.get_text() for t in ax.get_xticklabels()]
    assert tick_labels[:2] == ["100", "51.2"]


def test_early_stop_vs_density(toy, tmp_path):
    _, frame, truth = toy
    png = tmp_path / "early.png"
    fig = figures.early_stop_vs_density(frame, png, title="Early stop")
    _check_image(png)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.xaxis_inverted() and ax.get_title() == "Early stop"
    main = _series(ax)["toy"]
    np.testing.assert_allclose(main.get_ydata(), [np.mean([truth[(s, r, "main")]["stop"] for s in SEEDS])
                                                  for r in ROUNDS])


def test_curves_pick_closest_rounds(toy, tmp_path):
    _, frame, _ = toy
    png = tmp_path / "curves.png"
    fig = figures.curves(frame, png, densities=[1.0, 0.3])
    _check_image(png)
    by_label = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert set(by_label) == {"100%", "26.2%"}  # 0.3 is closest (in log) to round 2's 0.262
    test = frame[(frame.split == "test") & (frame.branch == "main") & (frame["round"] == 2)]
    expected = test.groupby("step").accuracy.mean() * 100
    np.testing.assert_allclose(by_label["26.2%"].get_ydata(), expected.values)


def test_long_legend_goes_below_and_grows_the_figure(toy, tmp_path):
    path, frame, _ = toy
    other = tmp_path / "other.parquet"
    build_metrics(other, experiment="other", seed_offset=1)
    png = tmp_path / "two.png"
    fig = figures.accuracy_vs_density(metrics.read([path, other]), png)
    height, width = matplotlib.image.imread(png).shape[:2]
    assert width == round(figures.SIZE_IN[0] * figures.DPI) and height > round(figures.SIZE_IN[1] * figures.DPI)
    assert fig.axes[0].get_legend() is None and len(fig.legends) == 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:4] == ["other", "other: reinit", "toy", "toy: reinit"]
    assert labels[-1] == figures.DIVERGED_LABEL


def test_density_ticks_thin_crowded_densities():
    percents = [100 * 0.8**r for r in range(30)]
    ticks = figures.density_ticks(percents, max_ticks=6)
    assert ticks[0] == 100 and len(ticks) <= 6
    assert all(t in percents for t in ticks)


def test_figure_refuses_bad_options(toy, tmp_path):
    _, frame, _ = toy
    with pytest.raises(ValueError, match="choose one of: early_stop, final"):
        figures.accuracy_vs_density(frame, tmp_path / "a.png", which="best")
    with pytest.raises(ValueError, match="must end in .png"):
        figures.early_stop_vs_density(frame, tmp_path / "a.svg")


def test_table_values_match_independent_statistics(toy, tmp_path):
    _, frame, truth = toy
    md, tex, out_html = tmp_path / "t.md", tmp_path / "t.tex", tmp_path / "t.html"
    table = tables.write_tables(frame, md, tex, out_html)
    for (seed_round_branch) in {(r, b) for _, r, b in _runs()}:
        round_, branch = seed_round_branch
        ok = [truth[(s, round_, branch)] for s in SEEDS if not truth[(s, round_, branch)]["diverged"]]
        row = table[(table["round"] == round_) & (table.branch == branch)].iloc[0]
        assert row.seeds == 2 and row.diverged == 2 - len(ok)
        assert row.percent == pytest.approx(100 * RATE**round_)
        assert row.early_stop_mean == pytest.approx(np.mean([t["stop"] for t in ok]))
        assert row.final_accuracy_mean == pytest.approx(100 * np.mean([t["acc_final"] for t in ok]))
        if len(ok) > 1:
            stds = np.std([100 * t["acc_stop"] for t in ok], ddof=1)
            assert row.early_stop_accuracy_std == pytest.approx(stds)
    first = truth[(0, 1, "main")], truth[(1, 1, "main")]
    cell = f"{100 * np.mean([t['acc_final'] for t in first]):.2f} ± {100 * np.std([t['acc_final'] for t in first], ddof=1):.2f}"
    assert cell in md.read_text()
    latex = tex.read_text()
    assert "\\toprule" in latex and "\\midrule" in latex and "\\bottomrule" in latex
    assert cell.replace(" ± ", r" $\pm$ ") in latex and "(\\%)" in latex
    assert out_html.read_text().count("<tr") == len(table) + 1
    assert list(table.branch[:4]) == ["main"] * 4  # main chain first


def _spec(name: str = "toy") -> ExperimentSpec:
    return ExperimentSpec(
        name=name,
        dataset=DatasetSpec("synthetic"),
        model=ModelSpec("lenet_300_100"),
        training=TrainingSpec(optimizer="sgd", lr=0.1, batch_size=10, duration=400),
        pruning=PruningSpec(rounds=2, rate=0.5, scope="global"),
        seeds=SEEDS,
        branches=("reinit",),
        description="a <toy> experiment",
    )


def test_report_links_are_relative_and_survive_a_move(toy, tmp_path):
    _, frame, _ = toy
    results = tmp_path / "results"
    fig_main = results / "figures" / "toy" / "accuracy.png"
    fig_cmp = results / "figures" / "comparison.png"
    figures.accuracy_vs_density(frame, fig_main)
    figures.early_stop_vs_density(frame, fig_cmp)
    table_html = results / "tables" / "toy.html"
    tables.write_tables(frame, results / "tables" / "toy.md", results / "tables" / "toy.tex", table_html)
    bench = tmp_path / "benchmarks" / "toy" / "seed0" / "round1.tsv"
    bench.parent.mkdir(parents=True)
    bench.write_text("s\th:m:s\tmax_rss\n12.5\t0:00:12\t300.2\n13.5\t0:00:13\t310.0\n")
    facts = report.collect_run_facts([bench], tmp_path / "benchmarks")
    assert facts["jobs"] == [{"job": "toy/seed0/round1", "seconds": 13.0, "max_rss_mb": 310.0}]
    assert facts["versions"]["lotto"] and facts["versions"]["python"]
    spec = _spec().to_dict()
    out = results / "report.html"
    report.write_report(out, specs={"toy": spec}, figures=[fig_main, fig_cmp], tables=[table_html],
                        run_facts=facts)
    moved = tmp_path / "copied" / "results"
    shutil.copytree(results, moved)
    for base in (out.parent, moved):
        page = (base / "report.html").read_text()
        sources = re.findall(r'<img src="([^"]+)"', page)
        assert sorted(sources) == ["figures/comparison.png", "figures/toy/accuracy.png"]
        assert all(not s.startswith("/") and (base / s).is_file() for s in sources)
    page = out.read_text()
    assert str(tmp_path) not in page
    toy_section = page.split("<h2>toy</h2>")[1].split("<h2>")[0]
    assert "figures/toy/accuracy.png" in toy_section and "figures/comparison.png" not in toy_section
    assert "<table class=\"lotto-table\">" in toy_section and "a &lt;toy&gt; experiment" in toy_section
    spec_text = re.search(r'<pre class="spec">(.*?)</pre>', page, re.S).group(1)
    shown = json.loads(html.unescape(spec_text))
    # all the spec but its execution-only settings, which spec files hold at their defaults
    assert {"checkpoint_every", "device"} <= set(spec["training"]) and EXECUTION_ONLY
    assert not set(EXECUTION_ONLY) & set(shown["training"])
    results_part = {k: v for k, v in spec["training"].items() if k not in EXECUTION_ONLY}
    assert shown == {**spec, "training": results_part}
    assert "toy/seed0/round1" in page and "13.0" in page


def test_report_refuses_missing_figure_and_bad_benchmark(tmp_path):
    bad = tmp_path / "b.tsv"
    bad.write_text("seconds\n1\n")
    with pytest.raises(ValueError, match="'s' column"):
        report.collect_run_facts([bad], tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        report.write_report(tmp_path / "r.html", specs={}, figures=[tmp_path / "nope.png"], tables=[],
                            run_facts={})


def test_owner_prefers_longest_experiment_name(tmp_path):
    names = ["lth", "lth_lenet"]
    assert report.owner(tmp_path / "figures" / "lth_lenet_accuracy.png", names, tmp_path) == "lth_lenet"
    assert report.owner(tmp_path / "figures" / "lth" / "accuracy.png", names, tmp_path) == "lth"
    assert report.owner(tmp_path / "figures" / "all.png", names, tmp_path) is None


def _fake_results(tmp_path: Path) -> tuple[Path, dict]:
    """seed 0: round 0 and round 1 done, round 1's reinit in progress; the rest pending."""
    results = tmp_path / "results"
    spec = _spec()
    (results / "toy").mkdir(parents=True)
    (results / "toy" / "spec.json").write_text(json.dumps(spec.to_dict()))
    truth = build_metrics(tmp_path / "all.parquet")
    frame = metrics.read([tmp_path / "all.parquet"])
    for round_, directory in ((0, results / "dense" / spec.dense_key / "seed0"),
                              (1, results / "toy" / "seed0" / "round1")):
        rows = frame[(frame.seed == 0) & (frame["round"] == round_) & (frame.branch == "main")]
        metrics.write_frame(directory / "metrics.parquet", rows)
    (results / "toy" / "seed0" / "round1" / "reinit").mkdir()
    (results / "toy" / "seed0" / "round1" / "reinit" / "resume.pt").write_bytes(b"x")
    return results, truth


def _parse_status(text: str) -> dict[tuple[int, int, str], list[str]]:
    table = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0].isdigit():
            table[(int(cells[0]), int(cells[1]), cells[2])] = cells[3:]
    return table


def test_status_lists_done_in_progress_and_pending(tmp_path):
    results, truth = _fake_results(tmp_path)
    text = status.render(results)
    rows = _parse_status(text)
    expected_keys = {(s, 0, "main") for s in SEEDS} | {
        (s, r, b) for s in SEEDS for r in (1, 2) for b in ("main", "reinit")
    }
    assert set(rows) == expected_keys
    assert rows[(0, 0, "main")][0] == "done" and rows[(0, 1, "main")][0] == "done"
    assert rows[(0, 1, "reinit")][0] == "in progress"
    assert all(rows[k][0] == "pending" for k in expected_keys - {(0, 0, "main"), (0, 1, "main"), (0, 1, "reinit")})
    done = truth[(0, 1, "main")]
    assert rows[(0, 1, "main")][1:4] == [
        f"{100 * done['density']:.3g}%", f"{100 * done['acc_stop']:.2f}%", f"{100 * done['acc_final']:.2f}%"
    ]
    assert "2 done, 1 in progress, 7 pending of 10" in text


def test_status_does_not_import_torch(tmp_path):
    results, _ = _fake_results(tmp_path)
    code = ("import sys; from pathlib import Path; from lotto.outputs import status; "
            f"status.render(Path({str(results)!r})); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def _lotto(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lotto", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_verbs(toy, tmp_path):
    path, _, _ = toy
    out = tmp_path / "cli"
    for kind in ("accuracy", "early_stop"):  # in-process: the entry point is covered below
        assert cli.main(["figure", "--metrics", str(path), "--kind", kind, "--out", str(out / f"{kind}.png"),
                         "--which", "final"]) == 0
    run = _lotto("figure", "--metrics", str(path), "--kind", "curves", "--densities", "1", "0.5",
                 "--out", str(out / "curves.png"), "--title", "Curves")
    assert run.returncode == 0, run.stderr
    run = _lotto("tables", "--metrics", str(path), "--md", str(out / "t.md"), "--tex", str(out / "t.tex"),
                 "--html", str(out / "toy.html"))
    assert run.returncode == 0, run.stderr
    spec = out / "toy.json"
    spec.write_text(json.dumps(_spec().to_dict()))
    benchmarks = out / "benchmarks"
    for job in ("dense/seed0", "toy/seed0/round1"):
        (benchmarks / job).parent.mkdir(parents=True, exist_ok=True)
        (benchmarks / f"{job}.tsv").write_text("s\th:m:s\n2.0\t0:00:02\n")
    dense = str(benchmarks / "dense/seed0.tsv")
    run = _lotto("report", "--out", str(out / "report.html"), "--specs", str(spec),
                 "--figures", str(out / "accuracy.png"), str(out / "curves.png"), "--tables", str(out / "toy.html"),
                 "--benchmarks", dense, str(benchmarks / "toy/seed0/round1.tsv"), dense)
    assert run.returncode == 0, run.stderr
    page = (out / "report.html").read_text()
    assert 'src="curves.png"' in page
    assert "<td>dense/seed0</td>" in page and "<td>toy/seed0/round1</td>" in page
    assert "wall time in all: 4.0 s" in page  # the repeated dense file counts once
    for name in ("accuracy.png", "accuracy.pdf", "early_stop.png", "curves.pdf", "t.md", "t.tex", "toy.html"):
        assert (out / name).stat().st_size > 0
    results, _ = _fake_results(tmp_path / "fake")
    run = _lotto("status", "--results", str(results))
    assert run.returncode == 0 and "in progress" in run.stdout


def test_cli_missing_metrics_is_one_line_error(tmp_path):
    missing = tmp_path / "absent.parquet"
    for verb in (["figure", "--kind", "accuracy", "--out", str(tmp_path / "x.png")],
                 ["tables", "--md", str(tmp_path / "x.md"), "--tex", str(tmp_path / "x.tex")]):
        run = _lotto(verb[0], "--metrics", str(missing), *verb[1:])
        assert run.returncode == 2
        assert run.stderr.strip().splitlines() == [
            f"lotto {verb[0]}: error: {missing}: metrics file not found; run the workflow (or `collect`) first"
        ]
