"""Hostile inputs through the real entry points, and lotto used as a Snakemake module.

One file per category of tests/test_inputs_property.py goes through `python -m lotto validate`
and a Snakemake dry run (both slow to start, so few cases): every file's problem is reported at
once, one line each, no traceback, nothing written and no shell command run. Then a user's own
folder uses lotto as a module (`module lotto: snakefile: ...`, `use rule * from lotto`): a
shipped preset is found (dry run) and the user's tiny experiment really runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_inputs_property import BASE, BASE_TEXT, emit
from workflow_util import REPO, SNAKEFILE, job_env, job_stats

pytestmark = pytest.mark.workflow

NO_NAME = emit({k: v for k, v in BASE.items() if k != "name"}) + "\n"
BAD_FILES: dict[str, tuple[bytes | None, str]] = {  # file -> (content, what its line says)
    "x$(touch PWNED).yaml": (NO_NAME.encode(), "is not a safe name"),
    "dots.yaml": (emit({**BASE, "name": ".."}).encode(), "is not a safe name"),
    "newline.yaml": (emit({**BASE, "name": "foo\n"}).encode(), "is not a safe name"),
    "dup.yaml": ((BASE_TEXT + "training: {lr: 1}\n").encode(), "duplicate key training"),
    "seeds.yaml": (emit({**BASE, "seeds": [2**63]}).encode(), "seeds[0]"),
    "latin1.yaml": ((BASE_TEXT + "description: caf\xe9\n").encode("latin-1"), "not UTF-8"),
    "utf16.yaml": (BASE_TEXT.encode("utf-16"), "not UTF-8"),
    "deep.yaml": ((BASE_TEXT + "extra: " + "[" * 600 + "]" * 600 + "\n").encode(), "nested deeper"),
    "bomb.yaml": ((BASE_TEXT + "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{k}: &{k} [{', '.join([f'*{p}'] * 10)}]\n" for p, k in zip("abcdefgh", "bcdefghi", strict=True)
    ) + "extra: *i\n").encode(), "expands to more than"),
    "folder.yaml": (None, "is a directory"),
    "absent.yaml": (b"", "not found"),  # written, then removed
}


def write_bad_files(folder: Path) -> list[str]:
    for name, (content, _) in BAD_FILES.items():
        if content is None:
            (folder / name).mkdir()
        elif name != "absent.yaml":
            (folder / name).write_bytes(content)
    return list(BAD_FILES)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".snakemake" not in p.parts)


def assert_clean_refusal(output: str, folder: Path, before: list[str]) -> None:
    for name, (_, says) in BAD_FILES.items():
        lines = [line for line in output.splitlines() if name in line]
        assert lines, f"{name} not reported:\n{output}"
        assert any(says in line for line in lines), f"{name}: {says!r} not in {lines}"
    assert "Traceback" not in output and 'File "' not in output, output
    assert max(map(len, output.splitlines())) < 400
    assert listing(folder) == before, "something was written"
    assert not (folder / "PWNED").exists()


def test_validate_reports_every_bad_file_at_once(tmp_path):
    files = write_bad_files(tmp_path)
    (tmp_path / "good.yaml").write_text(BASE_TEXT)
    before = listing(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "lotto", "validate", "good.yaml", *files], cwd=tmp_path,
                          env=job_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.startswith("good.yaml: ok (tiny:")
    assert_clean_refusal(proc.stderr, tmp_path, before)


def test_dry_run_refuses_bad_files_and_config_before_any_job(tmp_path):
    files = write_bad_files(tmp_path)
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump({"experiments": files, "studies": [
            {"name": "../up", "kind": "accuracy", "experiments": ["x"]}]})
        + "plots: {curve_densities: [.nan]}\nthreads: 1\nthreads: 2\n")
    before = listing(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-n", "--cores", "1",
                           "--configfile", "config.yaml"], cwd=tmp_path, env=job_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode != 0
    assert "lotto: invalid configuration" in proc.stdout
    assert_clean_refusal(proc.stdout, tmp_path, before)
    config = str(tmp_path / "config.yaml")
    first = (tmp_path / "config.yaml").read_text().splitlines().index("threads: 1") + 1
    assert f"{config}: line {first + 1}: duplicate key threads (first on line {first})" in proc.stdout
    assert f"{config}: plots.curve_densities[0]: nan is not allowed" in proc.stdout
    assert f"{config}: studies[0].name: '../up' is not a safe name" in proc.stdout


USER_SNAKEFILE = """\
configfile: "config.yaml"


module lotto:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from lotto as lotto_*
"""


def test_lotto_as_a_module_runs_a_users_experiment_and_finds_shipped_presets(tmp_path):
    """A user's folder holds only its Snakefile, config and experiment; lotto's rules, schema
    and presets come from the checkout. Costs ~35 s (a dry run, then 8 tiny jobs)."""
    (tmp_path / "experiments").mkdir()
    mine = {**{k: v for k, v in BASE.items() if k not in ("name", "branches")},
            "training": {**BASE["training"], "duration": 20, "eval_every": 10},
            "pruning": {"rounds": 1, "rates": {"fc": 0.2}}}
    (tmp_path / "experiments/mine.yaml").write_text(emit(mine) + "\n")
    (tmp_path / "config.yaml").write_text("experiments: [experiments/mine.yaml, lth_lenet_fashion]\n"
                                          "use_gpu: false\n")
    (tmp_path / "Snakefile").write_text(USER_SNAKEFILE.format(snakefile=SNAKEFILE))
    env = {**job_env(), "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def snakemake(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-5000:]
        return proc.stdout

    stats = job_stats(snakemake("-n"))
    preset = yaml.safe_load((REPO / "config/experiments/lth_lenet_fashion.yaml").read_text())
    rounds, seeds = preset["pruning"]["rounds"], len(preset["seeds"])
    assert stats["lotto_prune_round"] == rounds * seeds + 1  # the preset's rounds and mine's one
    assert stats["lotto_experiment_spec"] == 2

    targets = ["results/tables/mine.md", "results/figures/mine/accuracy.png"]
    snakemake(*targets)
    for target in targets:
        assert (tmp_path / target).stat().st_size > 0
    assert (tmp_path / "results/mine/seed0/round1/mask.pt").exists()
    assert not (REPO / "results/mine").exists()
