"""A study on an image folder through Snakemake's default target: the folder indexed by the
prepare job (never copied), round 0 and a pruned round of torchvision's ResNet-18 (the ImageNet
network, here on 32-px crops) read from JPEG files, each trained in 2 gloo processes
(training.devices: 2; that they equal 1 process: test_stream_distributed), metrics
with top-5 accuracy, and the figures, table and report. The folder's name holds a space and a
quote, which reach the job only quoted. Cost: ~45 s on an idle 2-core machine (9 jobs), ~75 s
under load; the refusal test ~10 s."""

from __future__ import annotations

import pyarrow.parquet as pq
from fixtures import write_image_folder
from workflow_util import Workdir, rule_counts

from lotto.core import masks, metrics

EXPERIMENT = {
    "dataset": {"name": "imagefolder", "val_size": 20, "image_size": 32, "resize": 36},
    "model": {"name": "torchvision:resnet18"},
    "training": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 16, "duration": 6,
                 "eval_every": 3, "device": "cpu", "loader_workers": 1},
    "pruning": {"rounds": 1, "rates": {"conv": 0.2, "output": 0.1}},
}


def test_image_folder_study_through_the_default_target(tmp_path):
    folder = tmp_path / "image folder's"
    write_image_folder(folder)
    work = Workdir(tmp_path / "work")
    doc = {**EXPERIMENT, "dataset": {**EXPERIMENT["dataset"], "root": str(folder)},
           "training": {**EXPERIMENT["training"], "devices": 2}}
    work.write_config([work.write_experiment("folder", doc)])
    run = work.snakemake().check()
    logs = [path.read_text() for path in (work.results / "logs").rglob("*.log")]
    assert sum("2 processes (gloo), 8-8 examples of each batch each" in log for log in logs) == 2, logs

    counts = rule_counts(run.output)
    assert counts["prepare_data"] == 1 and counts["dense_round"] == 1 and counts["prune_round"] == 1
    (index,) = (work.results / "data").glob("imagefolder-*.pt")
    assert index.stat().st_size < 20_000  # a list of names, not the images (~160 kB of JPEGs)
    assert not [p for p in work.path.rglob("*.JPEG")]  # nothing copied

    frame = metrics.read([work.results / "folder" / "metrics.parquet"])
    assert pq.read_schema(work.results / "folder" / "metrics.parquet").names[-1] == "top5"
    evaluated = frame[frame.split != "train"]
    assert sorted(evaluated["round"].unique()) == [0, 1] and evaluated.top5.notna().all()
    assert (evaluated.top5 >= evaluated.accuracy).all() and frame[frame.split == "train"].top5.isna().all()
    mask = masks.load(work.results / "folder" / "seed0" / "round1" / "mask.pt")
    assert len(mask) == 21 and mask["fc"].shape == (12, 512), "ResNet-18's 20 convs and fc, 12 classes"
    table = (work.results / "tables" / "folder.md").read_text()
    assert "Final top-5 acc. (%)" in table
    for kind in ("accuracy", "early_stop", "curves"):
        assert (work.results / "figures" / "folder" / f"{kind}.png").read_bytes()[:4] == b"\x89PNG"
    assert (work.results / "report.html").is_file()


def test_an_empty_class_folder_is_refused_before_any_job(tmp_path):
    """Planning reads the folder's classes: an empty class folder stops Snakemake with the key and
    the folder named, and nothing under results/ is written (a missing folder: test_stream). ~10 s."""
    folder = tmp_path / "images"
    write_image_folder(folder, classes=3, train_per_class=2, test_per_class=1)
    (folder / "train" / "n00000007").mkdir()
    work = Workdir(tmp_path / "work")
    doc = {**EXPERIMENT, "dataset": {**EXPERIMENT["dataset"], "root": str(folder), "val_size": 1}}
    work.write_config([work.write_experiment("folder", doc)])
    run = work.snakemake("-n")
    assert run.returncode != 0
    assert "folder.yaml: dataset.root: " in run.output and "n00000007: no .jpg/.jpeg images in this class folder" \
        in run.output
    assert not work.results.exists()
