"""The streamed data source (lotto.core.stream, lotto.core.image_folder) on a tiny image folder of real JPEG
files written by the test: the index and its errors, the batch order and augmentation as
functions of (seed, step), a training resumed in the middle of an epoch, the transforms, top-5
metrics. Cost: ~15 s in all (CPU, 32-px images; the worker-process cases dominate)."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from fixtures import write_image_folder, write_kmnist

from lotto.core import data, image_folder, masks, metrics, models, startup, stream
from lotto.core.errors import UserError
from lotto.core.io import CorruptFileError, load_torch
from lotto.core.spec import SpecError, resolve
from lotto.core.spec_types import TrainingSpec
from lotto.core.train import TOP5_MIN_CLASSES, evaluate_streamed, train
from lotto.outputs import tables

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    classes = write_image_folder(root)
    return root, classes


@pytest.fixture(scope="module")
def index_file(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "data" / "imagefolder.pt"
    stream.prepare("imagefolder", folder[0], out)
    return out


def _load(index_file, workers=0, **options):
    settings = {"val_size": 20, "image_size": 32, "resize": 36, "augment": True, "device": CPU, "workers": workers}
    return stream.load(index_file, **{**settings, **options})


# --- the index ----------------------------------------------------------------------------------


def test_index_lists_every_image_sorted_with_its_class(folder, index_file):
    root, classes = folder
    index = stream.read_index(index_file)
    assert index["classes"] == classes
    expected = sorted(p.relative_to(root).as_posix() for p in (root / "train").rglob("*.JPEG"))
    assert index["train_files"] == expected
    assert index["train_labels"] == [classes.index(f.split("/")[1]) for f in expected]
    assert len(index["test_files"]) == 12 * 3
    assert index["skipped"] == []


def test_index_skips_files_that_are_not_jpegs_and_records_them(tmp_path, capsys):
    root = tmp_path / "images"
    write_image_folder(root, classes=3, train_per_class=4, test_per_class=1)
    (root / "train/n00000001/empty.JPEG").write_bytes(b"")
    (root / "train/n00000002/page.jpg").write_bytes(b"<html>not an image</html>")
    (root / "train/n00000002/notes.txt").write_text("not an image name: not read")
    index = stream.prepare("imagefolder", root, tmp_path / "index.pt")
    assert sorted(index["skipped"]) == [
        ["train/n00000001/empty.JPEG", "empty file"],
        ["train/n00000002/page.jpg", "not a JPEG (starts with 3c6874)"],
    ]
    assert len(index["train_files"]) == 12
    assert "2 file(s) skipped" in capsys.readouterr().err


@pytest.mark.parametrize("damage, message", [
    (lambda root: root / "nowhere", "no such folder"),
    (lambda root: (root / "val").rename(root / "valid") and root, "val: no such folder"),
    (lambda root: (root / "train/n00000009").mkdir() or root, "n00000009: no readable .jpg/.jpeg images"),
    (lambda root: [p.write_bytes(b"GIF89a") for p in (root / "train/n00000001").iterdir()] and root,
     "n00000001: no readable .jpg/.jpeg images"),
    (lambda root: [p.unlink() for p in (root / "val").rglob("*.JPEG")] and root, "val: no readable"),
])  # fmt: skip
def test_index_errors_name_the_folder(tmp_path, damage, message):
    root = tmp_path / "images"
    write_image_folder(root, classes=3, train_per_class=2, test_per_class=1)
    with pytest.raises(image_folder.FolderError, match=message):
        stream.prepare("imagefolder", damage(root), tmp_path / "index.pt")
    assert not (tmp_path / "index.pt").exists()


def test_a_jpeg_damaged_inside_fails_naming_the_file(tmp_path):
    root = tmp_path / "images"
    write_image_folder(root, classes=2, train_per_class=2, test_per_class=1)
    bad = root / "val/n00000001/n00000001_0.JPEG"
    bad.write_bytes(bad.read_bytes()[:40])  # a JPEG header, then nothing
    stream.prepare("imagefolder", root, tmp_path / "index.pt")
    streamed = _load(tmp_path / "index.pt", val_size=0)
    with pytest.raises(CorruptFileError, match="n00000001_0.JPEG: not a decodable JPEG"):
        streamed.test_x[:2]


# --- batch order and augmentation -----------------------------------------------------------------


def test_batch_of_a_step_is_the_same_whichever_step_comes_first_and_whoever_decodes(index_file):
    """A resume in the middle of an epoch (per epoch: 100 // 16 = 6 steps), worker processes or
    the decoder in the training process: the same images, augmented the same."""
    data = _load(index_file)
    run = data.batches(16, seed=3)
    straight = [run(step) for step in range(9)]
    resumed = data.batches(16, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(resumed(4), straight[4], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(resumed(5), straight[5], strict=True))
    in_workers = _load(index_file, workers=2).batches(16, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(in_workers(8), straight[8], strict=True))
    batched = _load(index_file, decode_on_device=True).batches(16, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(batched(7), straight[7], strict=True))
    other_seed = data.batches(16, seed=4)(4)
    assert not torch.equal(other_seed[0], straight[4][0])


def test_each_epoch_visits_every_training_image_once(index_file):
    data = _load(index_file, augment=False)
    steps = data.batches(20, seed=0).steps
    epoch1 = [key for step in range(5, 10) for key in steps.keys(step, stream.epoch_permutation(0, 1, 100))]
    assert sorted(i for _, _, i in epoch1) == list(range(100))


def test_training_resumed_mid_epoch_equals_an_uninterrupted_one(index_file, tmp_path):
    """Through the training loop: stopped at step 4 (progress saved at 3), resumed, finished at 10."""
    data = _load(index_file)
    spec = TrainingSpec(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=16, duration=10, eval_every=4,
                        checkpoint_every=3, device="cpu")

    def run(resume, on_eval=None):
        torch.manual_seed(0)
        model = models.create_model("conv2", input_shape=(3, 32, 32), num_classes=12)
        return train(model, data, spec, mask=masks.ones(model), seed=1, steps=10, resume_path=resume,
                     on_eval=on_eval)

    whole = run(None)
    run(tmp_path / "resume.pt", on_eval=lambda step, _: step == 4)
    assert (tmp_path / "resume.pt").exists()
    resumed = run(tmp_path / "resume.pt")
    assert resumed.rows == whole.rows
    assert all(torch.equal(resumed.state[k], whole.state[k]) for k in whole.state)
    tests = [r for r in whole.rows if r["split"] == "test"]
    assert [r["step"] for r in tests] == [0, 4, 8, 10]
    assert all(0 <= r["accuracy"] <= r["top5"] <= 1 for r in tests)


def test_crop_boxes_lie_inside_and_follow_the_scale_and_ratio():
    generator = torch.Generator().manual_seed(0)
    for h, w in [(375, 500), (500, 375), (33, 33), (20, 300)]:
        for _ in range(200):
            top, left, ch, cw = stream.crop_box(h, w, generator)
            assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
            if (h, w) != (20, 300):  # a strip: the fall-back centre crop
                assert 0.07 <= ch * cw / (h * w) <= 1.0
                rounding = (1 + 0.5 / cw) * (1 + 0.5 / ch)  # each side is rounded to a pixel
                assert 3 / 4 / rounding <= cw / ch <= 4 / 3 * rounding


def test_training_view_is_square_uint8_and_flips_half_the_time():
    image = torch.arange(3 * 40 * 60, dtype=torch.int64).remainder(256).to(torch.uint8).view(3, 40, 60)
    ramp = image.clone()
    ramp[:] = torch.linspace(0, 255, 60).to(torch.uint8)  # brightness grows to the right
    flips = 0
    for position in range(200):
        view = stream.train_view(ramp, stream.item_generator(7, 3, position), 32)
        assert view.shape == (3, 32, 32) and view.dtype == torch.uint8
        flips += bool(view[0, :, 0].float().mean() > view[0, :, -1].float().mean())
    assert 70 <= flips <= 130  # binomial(200, 1/2): 5.6 std either side
    again = stream.train_view(ramp, stream.item_generator(7, 3, 5), 32)
    assert torch.equal(again, stream.train_view(ramp, stream.item_generator(7, 3, 5), 32))


def test_evaluation_view_is_the_centre_of_the_resized_image():
    image = torch.zeros(3, 40, 80, dtype=torch.uint8)
    image[:, :, 30:50] = 200  # a bright band in the middle
    view = stream.eval_view(image, 16, 20)  # 40x80 -> 20x40, centre 16x16 = columns 12..27
    assert view.shape == (3, 16, 16)
    assert view[:, :, 4:12].float().mean() > 190 and view[:, :, :2].float().mean() < 10


def test_batches_are_normalised_with_imagenet_statistics(index_file):
    data = _load(index_file, augment=False)
    x, y = data.batches(50, seed=0)(0)
    assert x.shape == (50, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    raw = data.val_x.reader  # undo the normalisation: pixels back in [0, 255]
    pixels = x * torch.tensor(stream.IMAGENET_STD).view(1, 3, 1, 1) * 255 + \
        torch.tensor(stream.IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    assert pixels.min() > -0.5 and pixels.max() < 255.5
    assert raw.view.augment is False


def test_validation_hold_out_depends_on_nothing_but_its_size(index_file):
    a, b = _load(index_file), _load(index_file, augment=False, workers=1)
    assert a.val_x.reader.files == b.val_x.reader.files and len(a.val_x) == 20
    assert not set(a.val_x.reader.files) & set(a.train.files)
    assert len(a.train.files) == 100 and len(a.test_x) == 36


# --- top-5 in the metrics -----------------------------------------------------------------------------


def test_top5_only_for_many_classes_and_counts_the_label_among_the_five_best(index_file, tmp_path, folder):
    data = _load(index_file, augment=False)
    torch.manual_seed(0)
    model = models.create_model("conv2", input_shape=(3, 32, 32), num_classes=12).eval()
    loss, top1, top5 = evaluate_streamed(model, data.test_x)
    outs, labels = [], []
    for x, y in data.test_x.batches():
        outs.append(model(x).detach())
        labels.append(y)
    out, y = torch.cat(outs), torch.cat(labels)
    assert top5 == pytest.approx((out.topk(5).indices == y[:, None]).any(1).float().mean().item())
    assert top1 == pytest.approx((out.argmax(1) == y).float().mean().item())
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(out, y).item(), rel=1e-5)

    few = tmp_path / "few"
    write_image_folder(few, classes=TOP5_MIN_CLASSES, train_per_class=2, test_per_class=1)
    stream.prepare("imagefolder", few, tmp_path / "few.pt")
    small = models.create_model("conv2", input_shape=(3, 32, 32), num_classes=TOP5_MIN_CLASSES)
    assert len(evaluate_streamed(small, _load(tmp_path / "few.pt", val_size=0).test_x)) == 2


def test_metrics_files_gain_top5_only_when_measured_and_old_files_stay_readable(tmp_path):
    row = {"step": 0, "split": "test", "loss": 1.0, "accuracy": 0.5, "lr": 0.1, "status": "ok"}
    constants = {"experiment": "e", "seed": 0, "round": 0, "branch": "main", "density": 1.0}
    metrics.write(tmp_path / "old.parquet", [row], **constants)
    metrics.write(tmp_path / "new.parquet", [{**row, "top5": 0.75}], **constants)
    assert pq.read_schema(tmp_path / "old.parquet").equals(metrics.SCHEMA)  # unchanged files
    assert pq.read_schema(tmp_path / "new.parquet").names[-1] == "top5"
    frame = metrics.read([tmp_path / "old.parquet", tmp_path / "new.parquet"])
    assert math.isnan(frame.top5[0]) and frame.top5[1] == 0.75
    metrics.write_frame(tmp_path / "both.parquet", frame)
    assert metrics.read([tmp_path / "both.parquet"]).equals(frame)
    metrics.write_frame(tmp_path / "old_again.parquet", frame.iloc[:1])
    assert pq.read_schema(tmp_path / "old_again.parquet").names == metrics.SCHEMA.names  # no top5 column
    with_top5 = tables.summary_table(frame.assign(experiment=["a", "b"]))
    assert with_top5.final_top5_mean.tolist()[1] == 75.0 and math.isnan(with_top5.final_top5_mean[0])
    header, _ = tables._cells(with_top5, " ± ", str)
    assert "Final top-5 acc. (%)" in header
    header, _ = tables._cells(tables.summary_table(frame.iloc[:1]), " ± ", str)
    assert "Final top-5 acc. (%)" not in header


# --- the spec ------------------------------------------------------------------------------------------


def _doc(folder, **dataset):
    return {
        "dataset": {"name": "imagefolder", "root": str(folder), "val_size": 20, "image_size": 32, "resize": 36,
                    **dataset},
        "model": {"name": "conv2"},
        "training": {"optimizer": "sgd", "lr": 0.05, "batch_size": 16, "duration": "2ep"},
    }


def test_spec_of_an_image_folder_counts_its_classes_and_images(folder):
    spec = resolve(_doc(folder[0]))
    assert spec.dataset.num_classes == 12 and spec.dataset.input_shape == (3, 32, 32)
    assert spec.training.duration == 2 * (100 // 16)
    assert spec.dataset.augment is True and spec.data_key.startswith("imagefolder-")
    elsewhere = dataclasses.replace(spec, dataset=dataclasses.replace(spec.dataset, root="/elsewhere"))
    assert elsewhere.data_key != spec.data_key and elsewhere.dense_key != spec.dense_key
    assert elsewhere.recipe_key != spec.recipe_key


def test_resident_dataset_specs_keep_their_hashes_and_files():
    doc = {"dataset": {"name": "cifar10"}, "model": {"name": "conv2"},
           "training": {"optimizer": "adam", "lr": 2e-4, "batch_size": 60, "duration": 100}}
    spec = resolve(doc)
    plain = spec.to_dict()
    assert not {"image_size", "resize", "folder_classes"} & set(plain["dataset"])
    assert "loader_workers" not in plain["training"] and spec.data_key == "cifar10"


@pytest.mark.parametrize("change, message", [
    ({"root": "/no/such/folder"}, "dataset.root: dataset.root '/no/such/folder': no such folder"),
    ({"root": None}, "dataset.root: required for 'imagefolder'"),
    ({"labels": [1, 2]}, "dataset.labels: not available for the streamed dataset"),
    ({"resize": 30}, "dataset.resize: 30 is smaller than image_size 32"),
    ({"val_size": 120}, "dataset.val_size: 120 leaves no training data; allowed: < 120"),
    ({"name": "imagenet"}, "12 class folders, ImageNet has 1000"),
])  # fmt: skip
def test_spec_errors_for_image_folders(folder, change, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(_doc(folder[0], **change))


def test_an_unreadable_folder_reports_only_its_own_error():
    with pytest.raises(SpecError) as err:
        resolve(_doc("/no/such/folder"))
    assert str(err.value) == "<experiment>: dataset.root: dataset.root '/no/such/folder': no such folder"


def test_imagenet_absent_here_is_planned_from_its_published_facts_and_refused_by_its_index(tmp_path):
    """A dry run of an ImageNet preset works where ImageNet is not (CI, a login node); the prepare
    job, the first of the DAG, refuses the missing folder before any training."""
    missing = tmp_path / "imagenet"
    spec = resolve(_doc(missing, name="imagenet", image_size=224, resize=256, val_size=5000))
    assert spec.dataset.num_classes == image_folder.IMAGENET_CLASSES == 1000
    assert spec.training.duration == 2 * ((image_folder.IMAGENET_TRAIN_SIZE - 5000) // 16)
    with pytest.raises(image_folder.FolderError, match="no such folder"):
        image_folder.index(missing, "imagenet")


def test_spec_refuses_an_empty_class_folder_before_any_job(tmp_path):
    write_image_folder(tmp_path, classes=3, train_per_class=2, test_per_class=1)
    (tmp_path / "train" / "n00000003").mkdir()
    with pytest.raises(SpecError, match="n00000003: no .jpg/.jpeg images in this class folder"):
        resolve(_doc(tmp_path, val_size=1))


def test_spec_refuses_what_needs_resident_data(folder):
    doc = _doc(folder[0])
    doc["training"]["vectorize_seeds"] = True
    doc["pruning"] = {"criterion": "snip"}
    doc["branches"] = ["supermask"]
    with pytest.raises(SpecError) as err:
        resolve(doc)
    for key in ("training.vectorize_seeds", "pruning.criterion", "branches: 'supermask'"):
        assert key in str(err.value)


# --- a torchvision dataset class ------------------------------------------------------------------


def _kmnist_doc(root, **facts):
    return {
        "dataset": {"name": "torchvision:KMNIST", "root": str(root), "val_size": 5,
                    "torchvision": {"num_classes": 10, "shape": [1, 28, 28], "train_size": 30, **facts}},
        "model": {"name": "lenet_300_100"},
        "training": {"optimizer": "adam", "lr": 1e-3, "batch_size": 5, "duration": "1ep"},
    }


def test_a_torchvision_dataset_class_is_read_from_its_real_files(tmp_path):
    arrays = write_kmnist(tmp_path)
    spec = resolve(_kmnist_doc(tmp_path))
    assert spec.dataset.num_classes == 10 and spec.dataset.input_shape == (1, 28, 28)
    assert spec.training.duration == 5 and spec.data_key.startswith("torchvision-KMNIST-")
    out = tmp_path / "results" / "data" / f"{spec.data_key}.pt"
    data.prepare(spec.dataset.name, out, root=tmp_path, torchvision_options=spec.dataset.torchvision_options())
    splits = startup.load_splits(spec, out, CPU)
    assert len(splits.train_x) == 25 and len(splits.val_x) == 5 and len(splits.test_x) == 10
    cache = load_torch(out)
    assert np.array_equal(cache["train_x"][:, 0].numpy(), arrays["train_x"][:, 0])
    assert np.array_equal(cache["test_y"].numpy(), arrays["test_y"])


@pytest.mark.parametrize("name, facts, message", [
    ("torchvision:Kmnist", {}, "torchvision.datasets has no dataset class 'Kmnist'"),
    ("torchvision:KMNIST", {"shape": [3, 28, 28]}, "a torch.uint8 image of shape (1, 28, 28); "
     "dataset.torchvision.shape says uint8 [3, 28, 28]"),
    ("torchvision:KMNIST", {"train_size": 31}, "set dataset.torchvision.train_size: 30"),
    ("torchvision:EMNIST", {}, "**{'train': True}) failed"),
])  # fmt: skip
def test_torchvision_class_errors(tmp_path, name, facts, message):
    write_kmnist(tmp_path)
    options = {"num_classes": 10, "shape": [1, 28, 28], "train_size": 30, **facts}
    with pytest.raises(UserError, match=re.escape(message)):
        data.prepare(name, tmp_path / "out.pt", root=tmp_path, torchvision_options=options)
    assert not (tmp_path / "out.pt").exists()


def test_torchvision_spec_needs_its_facts(tmp_path):
    doc = _kmnist_doc(tmp_path)
    del doc["dataset"]["torchvision"]
    with pytest.raises(SpecError, match="dataset: missing required key 'torchvision'"):
        resolve(doc)
    doc = _kmnist_doc(tmp_path)
    doc["dataset"]["name"] = "torchvision:../../etc"
    with pytest.raises(SpecError, match="dataset.name"):
        resolve(doc)


def test_gpu_memory_estimate_counts_no_resident_images_for_a_folder(folder, tmp_path):
    from lotto import gpu_memory

    assert gpu_memory._examples(resolve(_doc(folder[0]))) == 0
    write_kmnist(tmp_path)
    assert gpu_memory._examples(resolve(_kmnist_doc(tmp_path))) == 2 * 30
