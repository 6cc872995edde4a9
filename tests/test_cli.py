"""`python -m lotto`: every verb has help, a round runs end to end from the command line, and
bad input ends in one `lotto <verb>: error:` line, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import tiny_doc, tiny_spec

from lotto import cli
from lotto.core import io, masks, metrics
from lotto.core.errors import CannotRun, InvalidValue
from lotto.core.spec import SpecError

VERBS = next(
    action.choices for action in cli.build_parser()._actions
    if isinstance(action, argparse._SubParsersAction)
)


def lotto(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    """Run `python -m lotto` as the workflow rules do: a fresh process, one thread."""
    env = {**os.environ, "LOTTO_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lotto", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(process: subprocess.CompletedProcess, verb: str, *mentions: str) -> None:
    assert process.returncode == 2, process.stderr
    assert "Traceback" not in process.stderr, process.stderr
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lotto {verb}: error: "), process.stderr
    for text in mentions:
        assert text in lines[0], (text, lines[0])


def write_spec(path: Path, **overrides) -> Path:
    io.write_json(path, tiny_spec(**overrides).to_dict())
    return path


def write_yaml(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


# ---------------------------------------------------------------------------- help


def test_the_core_verbs_exist():
    assert {"validate", "write-spec", "prepare-data", "round", "replay", "branch",
            "collect"} <= set(VERBS)


@pytest.mark.parametrize("verb", VERBS)
def test_help_of_every_verb_exits_0(verb, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([verb, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m lotto {verb}")


def test_help_from_the_command_line(tmp_path):
    process = lotto("round", "--help", cwd=tmp_path)
    assert process.returncode == 0 and "--rewind-from" in process.stdout


# ---------------------------------------------------------------------------- rounds


def test_round_from_the_command_line(synthetic_data, tmp_path):
    """Round 0 in a fresh process, then round 1 through the same entry point."""
    spec = write_spec(tmp_path / "spec.json")
    round0, round1 = tmp_path / "seed0" / "round0", tmp_path / "seed0" / "round1"
    process = lotto("round", "--spec", spec, "--data", synthetic_data, "--seed", 0, "--round", 0,
                    "--out", round0, cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    assert "final test acc" in process.stderr and "status ok" in process.stderr
    for name in ("init.pt", "checkpoint.pt", "mask.pt", "metrics.parquet"):
        assert (round0 / name).is_file(), name
    assert pq.read_table(round0 / "metrics.parquet").schema.equals(metrics.SCHEMA)

    code = cli.main(["round", "--spec", str(spec), "--data", str(synthetic_data), "--seed", "0",
                     "--round", "1", "--dense", str(round0), "--prev", str(round0),
                     "--out", str(round1)])
    assert code == 0
    assert masks.density(masks.load(round1 / "mask.pt")) < 1.0
    frame = metrics.read([round0 / "metrics.parquet", round1 / "metrics.parquet"])
    assert sorted(set(frame["round"])) == [0, 1]


def test_replay_branch_and_collect_verbs(synthetic_data, tmp_path):
    spec = str(write_spec(tmp_path / "spec.json", training={"duration": 20, "eval_every": 10}))
    data, r0, r1 = str(synthetic_data), tmp_path / "round0", tmp_path / "round1"
    common = ["--spec", spec, "--data", data, "--seed", "0"]
    assert cli.main(["round", *common, "--round", "0", "--out", str(r0)]) == 0
    assert cli.main(["round", *common, "--round", "1", "--dense", str(r0), "--prev", str(r0),
                     "--out", str(r1)]) == 0
    assert cli.main(["replay", *common, "--step", "5", "--dense", str(r0),
                     "--out", str(tmp_path / "replay5.pt")]) == 0
    assert set(io.load_torch(tmp_path / "replay5.pt")) == set(io.load_torch(r0 / "init.pt"))
    assert cli.main(["branch", *common, "--round", "1", "--kind", "reinit", "--round-dir", str(r1),
                     "--dense", str(r0), "--out", str(tmp_path / "reinit")]) == 0
    table = tmp_path / "all.parquet"
    parts = [str(p / "metrics.parquet") for p in (r1, tmp_path / "reinit", r0)]
    assert cli.main(["collect", "--experiment", "renamed", "--out", str(table), *parts]) == 0
    frame = metrics.read([table])
    assert set(frame.experiment) == {"renamed"}
    assert list(frame["round"]) == sorted(frame["round"])
    assert set(frame.branch) == {"main", "reinit"}


def test_validate_and_write_spec(tmp_path, capsys):
    experiment = write_yaml(tmp_path / "tiny.yaml", tiny_doc())
    assert cli.main(["validate", str(experiment)]) == 0
    assert tiny_spec().dense_key in capsys.readouterr().out
    out = tmp_path / "spec.json"
    assert cli.main(["write-spec", "--experiment", str(experiment), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == tiny_spec().to_dict()


def test_prepare_data_writes_a_cache_and_refuses_unknown_options(tmp_path, capsys):
    out = tmp_path / "syn.pt"
    assert cli.main(["prepare-data", "--dataset", "synthetic", "--synthetic",
                     '{"n_train": 50, "n_test": 20}', "--out", str(out)]) == 0
    assert len(io.load_torch(out)["train_y"]) == 50
    assert cli.main(["prepare-data", "--dataset", "synthetic", "--synthetic", '{"n_trian": 5}',
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "lotto prepare-data: error: unknown synthetic option(s) n_trian" in err


# ---------------------------------------------------------------------------- bad input


def test_missing_experiment_file(tmp_path):
    assert_one_line_error(lotto("validate", "absent.yaml", cwd=tmp_path), "validate",
                          "absent.yaml", "not found")


def test_experiment_with_a_misspelt_key(tmp_path):
    doc = tiny_doc(training={"lrr": 0.1})
    path = write_yaml(tmp_path / "typo.yaml", doc)
    assert_one_line_error(lotto("validate", path, cwd=tmp_path), "validate",
                          str(path), "training.lrr", "did you mean 'lr'")


def test_experiment_that_is_not_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("training: [unclosed\n")
    for verb in ("validate", "write-spec"):
        args = [path] if verb == "validate" else ["--experiment", path, "--out", "spec.json"]
        process = lotto(verb, *args, cwd=tmp_path)
        assert process.returncode == 2 and "Traceback" not in process.stderr, process.stderr
        assert process.stderr.startswith(f"lotto {verb}: error: {path}"), process.stderr


def test_corrupt_checkpoint(synthetic_data, tmp_path):
    spec = write_spec(tmp_path / "spec.json")
    previous = tmp_path / "round0"
    io.save_torch(previous / "checkpoint.pt", {"w": io.load_torch(synthetic_data)["test_y"]})
    checkpoint = previous / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-50])
    process = lotto("round", "--spec", spec, "--data", synthetic_data, "--seed", 0, "--round", 1,
                    "--dense", previous, "--prev", previous, "--out", tmp_path / "round1",
                    cwd=tmp_path)
    assert_one_line_error(process, "round", str(checkpoint), "truncated or altered", "rebuild")
    assert not (tmp_path / "round1" / "checkpoint.pt").exists()


def test_missing_inputs_of_a_round(synthetic_data, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.json")
    common = ["--seed", "0", "--round", "0", "--out", str(tmp_path / "out")]
    assert cli.main(["round", "--spec", "absent.json", "--data", str(synthetic_data), *common]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lotto round: error: absent.json: spec file not found")
    assert cli.main(["round", "--spec", str(spec), "--data", "absent.pt", *common]) == 2
    assert capsys.readouterr().err.startswith("lotto round: error: absent.pt: file not found")


@pytest.mark.parametrize(
    "content",
    ['{"name": "tiny", "dataset"', "[1, 2]", "DROP_KEY"],
    ids=["truncated JSON", "not a mapping", "missing a key"],
)
def test_damaged_spec_json_names_the_file(synthetic_data, tmp_path, capsys, content):
    """A spec.json damaged or written by another version is refused, naming the file."""
    path = tmp_path / "spec.json"
    if content == "DROP_KEY":
        plain = tiny_spec().to_dict()
        del plain["training"]
        content = json.dumps(plain)
    path.write_text(content)
    code = cli.main(["round", "--spec", str(path), "--data", str(synthetic_data), "--seed", "0",
                     "--round", "0", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"lotto round: error: {path}"), err


def test_execution_replaces_the_execution_settings_of_the_spec_file(tmp_path):
    """The workflow's spec files hold execution-only settings at their defaults (older ones may
    hold other values): --execution sets them all, unnamed ones to their defaults."""
    spec = str(write_spec(tmp_path / "spec.json", training={"checkpoint_every": 20, "device": "cpu"}))
    args = ["round", "--spec", spec, "--data", "d", "--seed", "0", "--round", "0", "--out", "o"]
    as_read = cli._training_spec(cli.build_parser().parse_args(args)).training
    assert (as_read.checkpoint_every, as_read.device) == (20, "cpu")
    given = cli.build_parser().parse_args([*args, "--execution", '{"checkpoint_every": 5, "cuda_graph": false}'])
    training = cli._training_spec(given).training
    assert (training.checkpoint_every, training.device, training.cuda_graph) == (5, "auto", False)
    assert training.lr == as_read.lr


@pytest.mark.parametrize("execution, mention", [
    ('{"lr": 0.1}', "'lr' is not an execution setting"),
    ('{"checkpoint_every": "10"}', "checkpoint_every: '10' is not a int"),
    ('{"device": "cpu"', "Expecting"),
    ('["device"]', "JSON object"),
])  # fmt: skip
def test_bad_execution_settings_are_one_line_errors(synthetic_data, tmp_path, capsys, execution, mention):
    spec = write_spec(tmp_path / "spec.json")
    code = cli.main(["round", "--spec", str(spec), "--data", str(synthetic_data), "--seed", "0",
                     "--round", "0", "--execution", execution, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("lotto round: error: --execution "), err
    assert mention in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- bugs


@pytest.mark.parametrize("bug", [KeyError("epoch"), RuntimeError("shape mismatch"), ValueError("math domain")])
def test_a_bug_in_lotto_keeps_its_traceback(monkeypatch, tmp_path, bug):
    """Only lotto's user-facing errors (lotto.core.errors.UserError) and OSError become a one-line
    message; anything else, a plain ValueError from a library included, is a bug and propagates."""

    def broken(args):
        raise bug

    monkeypatch.setattr(cli, "cmd_validate", broken)
    with pytest.raises(type(bug)):
        cli.main(["validate", str(tmp_path / "x.yaml")])


@pytest.mark.parametrize("error", [InvalidValue("bad value"), CannotRun("no CUDA device"),
                                   io.CorruptFileError("x.pt: checksum"), SpecError("x.yaml: bad key")])
def test_user_errors_are_one_line(monkeypatch, tmp_path, capsys, error):
    def refuse(args):
        raise error

    monkeypatch.setattr(cli, "cmd_validate", refuse)
    assert cli.main(["validate", str(tmp_path / "x.yaml")]) == 2
    assert capsys.readouterr().err == f"lotto validate: error: {error}\n"
