"""The Snakemake workflow, run for real on tiny synthetic experiments in temp dirs.

Covers the issue "The Snakemake workflow": the job list of a dry run, a full run and its
outputs, caching (re-plotting without training, only affected jobs re-run), round 0 shared
between experiments, Snakemake's lock against a second invocation, `--lint`, and the HTML
report in headless Chromium. Resuming after SIGKILL (`--unlock`, then `--rerun-incomplete`
continues a round from its in-round checkpoint to the uninterrupted run's bytes) is
test_kill_resume.py, which kills the same experiment at that moment among others.
"""

from __future__ import annotations

import html
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from workflow_util import (
    ARTIFACTS,
    KILL_EXPERIMENT,
    KILL_NAME,
    TINY_EXPERIMENT,
    Result,
    Workdir,
    experiment,
    job_env,
    job_stats,
    kill_reference_run,
    mtimes,
    rule_counts,
)

pytestmark = pytest.mark.workflow

FIGURE_KINDS = ("accuracy", "early_stop", "curves")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """A finished run of the small kill/resume experiment (shared with test_kill_resume)."""
    return kill_reference_run(tmp_path_factory.mktemp("reference"))


# --- 1. the job list -------------------------------------------------------------------------


def test_dry_run_lists_one_job_per_seed_round_and_branch(tmp_path):
    """2 seeds x 3 rounds x 2 branches: round 0 per seed, a round per (seed, round), a branch
    per (seed, round, branch), and one of each per-experiment job."""
    work = Workdir(tmp_path)
    work.write_config([work.write_experiment("tiny", TINY_EXPERIMENT)])
    result = work.snakemake("-n").check()

    seeds, rounds, branches = [0, 1], [1, 2, 3], ["reinit", "random_mask"]
    expected = {
        "prepare_data": 1, "dense_spec": 1, "experiment_spec": 1,
        "dense_round": len(seeds),
        "prune_round": len(seeds) * len(rounds),
        "control_branch": len(seeds) * len(rounds) * len(branches),
        "collect": 1, "render_figure": len(FIGURE_KINDS), "render_tables": 1, "html_report": 1,
        "all": 1,
    }  # fmt: skip
    stats = job_stats(result.output)
    assert stats == {**expected, "total": sum(expected.values())}
    assert rule_counts(result.output) == Counter(expected)

    def keys(rule, *names):
        return sorted(
            tuple(job.wildcards[n] for n in names) for job in result.jobs if job.rule == rule
        )

    assert keys("dense_round", "seed") == [(str(s),) for s in seeds]
    assert keys("prune_round", "seed", "round") == sorted(
        (str(s), str(r)) for s in seeds for r in rounds
    )
    assert keys("control_branch", "seed", "round", "branch") == sorted(
        (str(s), str(r), b) for s in seeds for r in rounds for b in branches
    )
    assert keys("render_figure", "kind") == sorted((k,) for k in FIGURE_KINDS)


# --- 2. a full run and a rerun ---------------------------------------------------------------


def test_full_run_writes_every_declared_output(reference):
    """Every output, log and benchmark the rules declare exists after one run."""
    work, run = reference
    announced = [out for job in run.jobs for out in job.outputs]
    rounds = KILL_EXPERIMENT["pruning"]["rounds"]
    assert rule_counts(run.output) == Counter({
        "prepare_data": 1, "dense_spec": 1, "experiment_spec": 1, "dense_round": 1,
        "prune_round": rounds, "control_branch": rounds, "collect": 1,
        "render_figure": len(FIGURE_KINDS), "render_tables": 1, "html_report": 1, "all": 1,
    })  # fmt: skip
    missing = [out for out in announced if not (work.path / out).is_file()]
    assert not missing

    exp, chain = KILL_NAME, f"results/{KILL_NAME}/seed0"
    named = [
        f"results/figures/{exp}/{kind}.{ext}" for kind in FIGURE_KINDS for ext in ("png", "pdf")
    ]
    named += [f"results/tables/{exp}.{ext}" for ext in ("md", "tex", "html")]
    named += ["results/report.html", f"results/{exp}/metrics.parquet", f"results/{exp}/spec.json"]
    for r in range(1, rounds + 1):
        named += [
            f"{chain}/round{r}/metrics.parquet",
            f"{chain}/round{r}/random_mask/metrics.parquet",
        ]
    assert not [p for p in named if not (work.path / p).is_file()]
    png, pdf = (work.results / "figures" / exp / f"curves.{ext}" for ext in ("png", "pdf"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"

    training_jobs = [
        job for job in run.jobs if job.rule in ("dense_round", "prune_round", "control_branch")
    ]
    assert len(list((work.results / "benchmarks").rglob("*.tsv"))) == len(training_jobs)
    logs = sorted((work.results / "logs").rglob("*.log"))
    assert len(logs) == len([job for job in run.jobs if job.rule != "all"]), "one log per job"


def test_rerun_after_full_run_has_nothing_to_do(reference):
    """Everything is cached: a second run finds every output up to date."""
    work, _ = reference
    result = work.snakemake().check()
    assert "Nothing to be done" in result.output
    assert result.jobs == []


# Execution-only settings (lotto.core.spec_types.EXECUTION_ONLY), each changed alone from the reference
# experiment's: how its jobs run, not what they compute.
EXECUTION_CHANGES = {"checkpoint_every": 0, "device": "auto", "cuda_graph": False, "devices": 2}


@pytest.fixture(scope="module")
def reference_copy(reference, tmp_path_factory):
    """The finished reference run, copied (with its mtimes and Snakemake metadata) to edit."""
    source, _ = reference
    path = tmp_path_factory.mktemp("copy") / "work"
    shutil.copytree(source.path, path, symlinks=True)
    return Workdir(path)


def _plan_with(work: Workdir, **training) -> Result:
    """A dry run (default rerun triggers, commands printed) of the reference experiment with
    these training settings, the experiment file restored afterwards."""
    path = work.path / "experiments" / f"{KILL_NAME}.yaml"
    original = path.read_text()
    doc = yaml.safe_load(original)
    doc["training"].update(training)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        return work.snakemake("--dry-run", "--printshellcmds").check()
    finally:
        path.write_text(original)


@pytest.mark.parametrize("setting", sorted(EXECUTION_CHANGES))
def test_changing_an_execution_setting_reruns_nothing(reference_copy, setting):
    """Spec files hold execution-only settings at their defaults and jobs get them as
    `--execution`, which Snakemake does not count as a changed param: nothing re-runs."""
    result = _plan_with(reference_copy, **{setting: EXECUTION_CHANGES[setting]})
    assert result.jobs == [], rule_counts(result.output)
    assert "Nothing to be done" in result.output


def test_changing_a_hashed_setting_reruns_round_0_with_the_execution_settings(reference_copy):
    """The counterpart: a changed learning rate plans round 0 again, and its command carries
    the experiment's execution settings (checkpoint_every 10, device cpu)."""
    result = _plan_with(reference_copy, lr=0.001)
    assert rule_counts(result.output)["dense_round"] == 1
    command = next(line for line in result.output.splitlines() if "lotto round" in line)
    execution = json.loads(shlex.split(command.split("--execution", 1)[1])[0])
    assert execution == {"checkpoint_every": 10, "cuda_graph": True, "device": "cpu",
                         "vectorize_seeds": False, "devices": 1, "nodes": 1, "loader_workers": -1}


# --- 3. re-plotting without training ---------------------------------------------------------


def _training_outputs(work: Workdir) -> list[str]:
    return sorted(
        p.relative_to(work.path).as_posix()
        for pattern in ("checkpoint.pt", "mask.pt", "metrics.parquet")
        for p in work.results.rglob(pattern)
    )


def test_figures_target_and_plot_options_rerun_only_plot_jobs(reference, tmp_path):
    """A deleted figure comes back from the `figures` target by its plot job alone; a changed
    plot option re-plots (and re-renders the report that shows the figures), nothing else."""
    source, _ = reference
    shutil.copytree(source.path, tmp_path / "copy", symlinks=True)  # copy2: keeps mtimes
    work = Workdir(tmp_path / "copy")
    training = _training_outputs(work)
    before = mtimes(work.path, training)

    (work.results / "figures" / KILL_NAME / "curves.png").unlink()
    result = work.snakemake("figures").check()
    assert [(j.rule, j.wildcards.get("kind")) for j in result.jobs if j.rule != "figures"] == [
        ("render_figure", "curves")
    ]

    config = yaml.safe_load((work.path / "config.yaml").read_text())
    config["plots"] = {"which": "final"}
    (work.path / "config.yaml").write_text(yaml.safe_dump(config))
    result = work.snakemake().check()
    ran = rule_counts(result.output)
    assert ran["render_figure"] == len(FIGURE_KINDS)
    assert set(ran) <= {"render_figure", "html_report", "all"}, ran
    assert mtimes(work.path, training) == before


# --- 4. two experiments: shared round 0, separate caches, Snakemake's lock ---------------------


@pytest.fixture(scope="module")
def two_experiments(tmp_path_factory):
    """Experiments `a` and `b` that differ only in pruning rate, run once to their metrics;
    while that run holds its lock, a second identical invocation is started."""
    work = Workdir(tmp_path_factory.mktemp("two"))
    base = experiment(
        TINY_EXPERIMENT,
        training={"duration": 40, "eval_every": 20, "device": "cpu"},
        pruning={"rounds": 1, "rates": {"fc": 0.5}},
        branches=None,
    )
    work.write_config([
        work.write_experiment("a", base),
        work.write_experiment("b", experiment(base, pruning={"rates": {"fc": 0.3}})),
    ])  # fmt: skip
    targets = ("results/a/metrics.parquet", "results/b/metrics.parquet")

    first = work.start(work.path / "first.log", *targets)
    locks = work.path / ".snakemake" / "locks"
    while first.poll() is None and not any(locks.glob("*.lock")):
        time.sleep(0.05)
    # Snakemake checks for incomplete outputs before it takes the lock: without
    # --ignore-incomplete a job of the first run finishing at that moment is reported instead.
    second = work.snakemake(*targets, "--ignore-incomplete")
    first_running_when_second_ended = first.poll() is None
    first.wait(timeout=900)
    return {
        "work": work,
        "targets": targets,
        "first": (first.returncode, (work.path / "first.log").read_text()),
        "second": second,
        "overlapped": first_running_when_second_ended,
        "dense_listing": {
            p.name: sorted(c.name for c in p.iterdir()) for p in (work.results / "dense").iterdir()
        },
    }


def test_experiments_differing_in_pruning_share_round_0(two_experiments):
    """Round 0 depends on data, model and training only: trained once per seed for both."""
    returncode, log = two_experiments["first"]
    assert returncode == 0, log[-4000:]
    planned = job_stats(log)  # the table Snakemake prints before it starts
    assert (planned["dense_spec"], planned["dense_round"], planned["prune_round"]) == (1, 2, 4)
    assert rule_counts(log)["dense_round"] == 2
    listing = two_experiments["dense_listing"]
    assert len(listing) == 1, listing
    assert next(iter(listing.values())) == ["seed0", "seed1", "spec.json"]


def test_second_invocation_on_same_directory_is_refused_by_lock(two_experiments):
    """Two runs writing the same files would corrupt each other: Snakemake's lock refuses the
    second while the first runs, and the first finishes unharmed."""
    returncode, log = two_experiments["first"]
    assert returncode == 0, log[-4000:]
    assert two_experiments["overlapped"], "the first run ended before the second checked the lock"
    second = two_experiments["second"]
    assert second.returncode != 0
    assert "cannot be locked" in second.output
    assert second.jobs == []


def test_changing_one_learning_rate_reruns_only_that_experiment(two_experiments):
    """A training change re-runs that experiment's jobs (under a new round-0 key) and leaves the
    other experiment's files, the shared round 0 and the data untouched."""
    work = two_experiments["work"]
    untouched = sorted(
        p.relative_to(work.path).as_posix()
        for root in (work.results / "b", work.results / "dense", work.results / "data")
        for p in root.rglob("*")
        if p.is_file()
    )
    before = mtimes(work.path, untouched)
    a_rounds = [f"results/a/seed{s}/round1/metrics.parquet" for s in (0, 1)]
    a_before = mtimes(work.path, a_rounds)

    doc = yaml.safe_load((work.path / "experiments/a.yaml").read_text())
    doc["training"]["lr"] = 0.001
    (work.path / "experiments/a.yaml").write_text(yaml.safe_dump(doc))
    result = work.snakemake(*two_experiments["targets"]).check()

    assert rule_counts(result.output) == Counter(
        {"dense_spec": 1, "experiment_spec": 1, "dense_round": 2, "prune_round": 2, "collect": 1}
    )
    assert all(job.wildcards.get("experiment", "a") == "a" for job in result.jobs)
    (old_key,) = two_experiments["dense_listing"]
    assert all(job.wildcards.get("key") != old_key for job in result.jobs)
    assert mtimes(work.path, untouched) == before
    changed = mtimes(work.path, a_rounds)
    assert all(changed[p] != a_before[p] for p in a_rounds)


# --- 5. lint -----------------------------------------------------------------------------------


# A sitecustomize that writes where torch is first imported (the stack, one frame a line).
FIRST_TORCH_IMPORT = """
import os, sys, traceback

class _FirstTorchImport:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            with open(os.environ["LOTTO_TORCH_IMPORT_LOG"], "w") as out:
                out.write("\\n".join(f"{f.filename}:{f.name}" for f in traceback.extract_stack()))
        return None

sys.meta_path.insert(0, _FirstTorchImport())
"""


def test_planning_the_quickstart_imports_no_torch(tmp_path):
    """`snakemake -n` of the quickstart (use_gpu: auto) never imports torch: not through the
    rules, lotto.core.layout, lotto.round_plan or the GPU check of use_gpu: auto, nor through spec
    validation (it reads lotto/model_facts.json). Every snakemake start, and every cluster job's
    inner snakemake, would pay ~2.7 s for it. One dry run, ~3 s."""
    watch, log = tmp_path / "watch", tmp_path / "torch-import.txt"
    watch.mkdir()
    (watch / "sitecustomize.py").write_text(FIRST_TORCH_IMPORT)
    work = Workdir(tmp_path / "work")
    work.write_config(["quickstart"], use_gpu="auto")
    env = {**job_env(), "LOTTO_TORCH_IMPORT_LOG": str(log)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(watch), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(work.command("-n"), cwd=work.path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rule dense_round" in proc.stdout + proc.stderr
    assert not log.exists(), "torch imported at:\n" + log.read_text()


def test_lint_reports_nothing(tmp_path):
    """The workflow follows Snakemake's best practices (CI runs the same check)."""
    work = Workdir(tmp_path)
    work.write_config([work.write_experiment("tiny", TINY_EXPERIMENT)])
    result = work.snakemake("--lint")
    assert result.returncode == 0, result.output
    assert "Lints for" not in result.output, result.output
    assert "Congratulations, your workflow is in a good condition!" in result.output


# --- 6. the report in headless Chromium --------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]  # fmt: skip

# Appended to a copy of the report: once the page has loaded, list every image's load state.
IMAGE_PROBE = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "image-probe";
  out.textContent = JSON.stringify(Array.from(document.images, (img) => ({
    src: img.getAttribute("src"), complete: img.complete, width: img.naturalWidth})));
  document.body.appendChild(out);
});
</script>"""


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.ids: set[str] = set()
        self.images = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.images += tag == "img"
        if "id" in attrs:
            self.ids.add(attrs["id"])
        self.refs += [attrs[a] for a in ("src", "href") if attrs.get(a)]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("chromium not installed (apt-get install -y --no-install-recommends chromium)")
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)  # a fresh one per call
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip


def test_report_opens_in_headless_chromium_with_every_image_and_link(reference, tmp_path):
    """Every relative link and image of the report resolves; Chromium decodes every image."""
    source, _ = reference
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy2(source.results / "report.html", results)
    for folder in ("figures", "tables"):
        shutil.copytree(source.results / folder, results / folder)
    report = results / "report.html"
    text = report.read_text()

    links = _Links()
    links.feed(text)
    assert links.images == len(FIGURE_KINDS)
    broken = []
    for ref in links.refs:
        parts = urlsplit(ref)
        assert not parts.scheme and not parts.netloc, f"absolute link in the report: {ref}"
        if parts.path and not (results / unquote(parts.path)).is_file():
            broken.append(ref)
        elif not parts.path and parts.fragment not in links.ids:
            broken.append(ref)
    assert not broken

    probe = results / "report-probe.html"
    probe.write_text(text.replace("</body>", IMAGE_PROBE + "</body>"))
    dom = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    start = dom.index('<pre id="image-probe">') + len('<pre id="image-probe">')
    images = json.loads(html.unescape(dom[start : dom.index("</pre>", start)]))
    assert len(images) == links.images
    assert [img for img in images if not (img["complete"] and img["width"] > 0)] == []

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "report.png"
    screenshot.unlink(missing_ok=True)
    _chromium(tmp_path, "--window-size=1280,2400", f"--screenshot={screenshot}", report.as_uri())
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
