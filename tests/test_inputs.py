"""Issue 13's smaller findings: readable layer names, val_size 0, the message details.

(The hostile-input categories are tests/test_inputs_property.py and tests/test_workflow_inputs.py.)
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny_doc, tiny_spec

from lotto import cli
from lotto.core import masks, metrics, models
from lotto.core.inputs import load_yaml, shorten
from lotto.core.spec import DatasetSpec, ModelSpec, SpecError, build_model, resolve
from lotto.outputs import figures, status, tables


@pytest.mark.parametrize("name", models.model_names())
def test_readable_layer_names_are_unambiguous(name):
    """Every prunable layer has one readable name, and none is another layer's module path."""
    net = build_model(ModelSpec(name), DatasetSpec("cifar10"), "meta")
    readable = masks.readable_names(net)
    paths = [path for path, _, _ in masks.prunable_layers(net)]
    assert sorted(readable.values()) == sorted(paths)
    assert all(alias == path or alias not in paths for alias, path in readable.items())
    assert list(readable)[-1] == "output"


def test_exclude_takes_readable_names_and_keeps_the_spec_of_module_paths():
    by_path = tiny_spec(pruning={"exclude": ["1", "5"]})
    by_name = tiny_spec(pruning={"exclude": ["fc1", "output"]})
    assert by_name.pruning.exclude == ("1", "5")
    assert by_name.recipe_key == by_path.recipe_key
    with pytest.raises(SpecError, match=r"pruning.exclude: 'fc9' is not a prunable layer; .*fc1 \(1\), "
                                        r"fc2 \(3\), output \(5\).*python -m lotto layers lenet_300_100"):
        tiny_spec(pruning={"exclude": ["fc9"]})


def test_layers_verb_prints_name_module_kind_shape_weights(capsys):
    assert cli.main(["layers", "lenet_300_100"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("lenet_300_100 on mnist (1x28x28): 3 prunable layers, 266,200 weights")
    assert [line.split() for line in lines[1:]] == [
        ["name", "module", "kind", "shape", "weights"],
        ["fc1", "1", "fc", "300x784", "235,200"],
        ["fc2", "3", "fc", "100x300", "30,000"],
        ["output", "5", "output", "10x100", "1,000"],
    ]
    assert cli.main(["layers", "resnet_20"]) == 2
    assert "lotto layers: error: unknown model 'resnet_20'" in capsys.readouterr().err


def test_rewinding_step_at_the_end_names_only_that_key():
    """The retrain default follows from the step; only the key the user wrote is reported."""
    with pytest.raises(SpecError) as info:
        resolve(tiny_doc(rewinding={"weights": "step", "step": 60}), source="x.yaml")
    assert str(info.value) == "x.yaml: rewinding.step: 60 (60 it) is not inside the schedule (< 60 it)"


def test_shorten_never_builds_a_huge_repr():
    bomb: list = ["lol"] * 10
    for _ in range(8):
        bomb = [bomb] * 10  # 10^9 leaves: repr() would not finish
    assert len(shorten(bomb)) <= 80 and len(shorten("x" * 10**6)) <= 80
    assert shorten({"b": 0, "a": 1}) == "{'b': 0, 'a': 1}"


def test_validate_reports_an_unexpected_exception_and_the_other_files(tmp_path, monkeypatch, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(_tiny_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\na: 2\n")
    real = cli._read_spec

    def crash_on_good(path):
        if path.endswith("good.yaml"):
            raise ZeroDivisionError("a bug")
        return real(path)

    monkeypatch.setattr(cli, "_read_spec", crash_on_good)
    assert cli.main(["validate", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{good}: unexpected ZeroDivisionError: a bug" in err
    assert f"{bad}: line 2: duplicate key a (first on line 1)" in err


def _tiny_text() -> str:
    import yaml

    return yaml.safe_dump(tiny_doc())


def test_config_files_are_read_by_the_same_strict_loader(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("experiments: [a]\nplots:\n  which: final\n  which: early_stop\n")
    with pytest.raises(ValueError, match=r"config.yaml: line 4: duplicate key plots.which \(first on line 3\)"):
        load_yaml(path, "config file")


# --- dataset.val_size: 0 -------------------------------------------------------------------


def no_validation_frame() -> pd.DataFrame:
    """Two rounds of one seed whose validation rows are NaN, as val_size 0 writes them."""
    rows = []
    for round_, density in ((0, 1.0), (1, 0.5)):
        for step in (0, 10, 20):
            common = {"experiment": "e", "seed": 0, "round": round_, "branch": "main",
                      "density": density, "step": step, "lr": 0.1, "status": "ok"}
            rows.append({**common, "split": "val", "loss": math.nan, "accuracy": math.nan})
            rows.append({**common, "split": "test", "loss": 1.0, "accuracy": 0.5 + step / 100})
    return pd.DataFrame(rows)


def test_without_validation_tables_say_there_is_no_early_stop(tmp_path):
    table = tables.write_tables(no_validation_frame(), tmp_path / "t.md", tmp_path / "t.tex")
    assert table.early_stop_mean.isna().all() and (table.final_accuracy_mean == 70.0).all()
    text = (tmp_path / "t.md").read_text()
    assert "no validation set (dataset.val_size: 0), so no early-stop iteration" in text
    main_row = next(line for line in text.splitlines() if line.startswith("| main") and "| 50" in line)
    assert [cell.strip() for cell in main_row.split("|")][3:6] == ["–", "–", "70.00"]


def test_without_validation_status_says_no_val_set(tmp_path):
    directory = tmp_path / "round1"
    frame = no_validation_frame()
    metrics.write_frame(directory / "metrics.parquet", frame[frame["round"] == 1])
    state = status.training_state(status.Training(0, 1, "main", directory))
    assert state["acc@stop"] == "no val set" and state["acc@final"] == "70.00%"


def test_without_validation_the_early_stop_figure_says_so(tmp_path):
    fig = figures.early_stop_vs_density(no_validation_frame(), tmp_path / "f.png")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("no validation set" in t for t in texts)
    assert Path(tmp_path / "f.png").stat().st_size > 0


def test_an_experiment_of_more_than_100000_jobs_is_refused():
    with pytest.raises(SpecError, match=r"pruning.rounds: 1000 rounds x 100 seeds x 2 trainings per round are "
                                        r"200100 jobs; allowed: at most 100000"):
        tiny_spec(pruning={"rounds": 1000}, seeds=list(range(100)), branches=["reinit"])


def test_outside_results_finds_paths_that_escape():
    from lotto.core.inputs import outside_results

    assert outside_results(["results/a/b.png", "results/../x", "results", "x/results/y", "/results/x",
                            "results/./a"]) == ["results/../x", "results", "x/results/y", "/results/x"]


def test_without_validation_the_box_plot_at_early_stop_says_so(tmp_path):
    fig = figures.accuracy_boxes(no_validation_frame(), tmp_path / "b.png", which="early_stop")
    assert any("no validation set" in t.get_text() for t in fig.axes[0].texts)
