"""lotto/model_facts.json, the model facts spec validation reads without torch, equals what the
real models give, and validating the presets imports no torch. ~2 s (22 models built on the meta
device, one subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lotto.core import model_facts
from lotto.core.masks import layer_table
from lotto.core.spec import DatasetSpec, ModelSpec, build_model, load_experiment

ROOT = Path(__file__).resolve().parent.parent
PRESETS = sorted((ROOT / "config" / "experiments").glob("*.yaml"))


def test_committed_table_is_the_one_the_models_give():
    """Regenerating the table from the real models gives the committed file byte for byte;
    if not: `python -m lotto model-facts config/experiments/*.yaml`."""
    options = [model_facts.model_options(spec.model, spec.dataset) for spec in map(load_experiment, PRESETS)]
    assert model_facts.table_text(options) == model_facts.TABLE.read_text(encoding="utf-8")


def test_an_option_the_table_lacks_is_measured():
    """A combination outside the table (here dropout 0.25) gets the facts the built model gives."""
    model, dataset = ModelSpec("conv2", dropout=0.25), DatasetSpec("mnist")
    options = model_facts.model_options(model, dataset)
    assert model_facts._key(options) not in model_facts._table()["facts"]
    measured = model_facts.facts(options)
    rows = layer_table(build_model(model, dataset, "meta"))
    assert measured.layers == tuple((r["name"], r["module"], r["kind"]) for r in rows)
    assert measured.build_error is None
    assert measured.not_vectorisable is None  # nn.Dropout: drawn per seed (lotto.core.vmap.SeedDropout)
    assert "not ConvNet" in measured.not_channel_prunable


def test_validating_every_preset_imports_no_torch():
    code = ("import sys\nfrom lotto.core.spec import load_experiment\n"
            f"for path in {[str(p) for p in PRESETS]!r}:\n    load_experiment(path)\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
