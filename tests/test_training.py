"""Tests of the shared training layer on real (small) data and real on-disk data set formats."""
from __future__ import annotations

import math
import os
import pickle
import struct

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archs.errors import UserError
from training import (DATASETS, FitResult, Splits, TensorData, TrainConfig, TrainingDiverged, augment_batch,
                      distillation_loss, evaluate, fit, load_data, predict_logits, resolve_device, set_seed)


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits() -> Splits:
    return load_data("digits")


def small_cnn(in_chans: int = 1, num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_chans, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.LazyLinear(num_classes),
    )


def make_model(seed: int = 0, data: TensorData | None = None) -> nn.Module:
    torch.manual_seed(seed)
    m = small_cnn()
    m(torch.zeros(2, 1, 8, 8) if data is None else data.x[:2])  # materialize the lazy layer
    return m


def class_images(n_per_class: int, classes: int, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose brightness encodes the class, plus labels."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    x = rng.integers(0, 40, size=(len(y), *shape)).astype(np.uint8) + (y * 20).reshape(-1, *[1] * len(shape)).astype(np.uint8)
    return x, y


# --------------------------------------------------------------------------------------------------------------------
# digits: splits and normalization
# --------------------------------------------------------------------------------------------------------------------
def test_digits_splits_sizes_disjoint_stratified(digits):
    s = digits
    assert (s.num_classes, s.in_chans, s.resolution, s.name) == (10, 1, 8, "digits")
    assert s.augment in ("none", "crop", "crop_flip")
    n_test = math.ceil(0.2 * 1797)
    n_val = math.ceil(0.2 * (1797 - n_test))
    assert (len(s.test), len(s.val), len(s.train)) == (n_test, n_val, 1797 - n_test - n_val)
    for part in (s.train, s.val, s.test):
        assert part.x.dtype == torch.float32 and part.y.dtype == torch.int64
        assert part.x.shape[1:] == (1, 8, 8)
    # disjoint: undo the normalization and compare raw images row by row with the original data
    from sklearn.datasets import load_digits

    raw = load_digits()
    mean, std = s.mean[0], s.std[0]
    def keys(part):
        img = (part.x * std + mean).round().to(torch.int64).reshape(len(part), -1).numpy()
        return [(tuple(r), int(c)) for r, c in zip(img, part.y.numpy())]
    ktr, kva, kte = keys(s.train), keys(s.val), keys(s.test)
    all_keys = [(tuple(r.astype(np.int64)), int(c)) for r, c in zip(raw.images.reshape(1797, -1), raw.target)]
    from collections import Counter

    assert Counter(ktr) + Counter(kva) + Counter(kte) == Counter(all_keys)  # a partition of the data set
    # stratified: class counts of every split within two images of the overall proportions
    overall = np.bincount(raw.target, minlength=10) / 1797
    for part in (s.train, s.val, s.test):
        counts = np.bincount(part.y.numpy(), minlength=10)
        assert np.all(np.abs(counts - overall * len(part)) <= 2.0)


def test_digits_normalized_with_train_statistics(digits):
    s = digits
    assert abs(s.train.x.mean().item()) < 1e-4
    assert abs(s.train.x.std().item() - 1.0) < 1e-3
    assert abs(s.val.x.mean().item()) > 1e-4 or abs(s.test.x.mean().item()) > 1e-4  # not normalized on their own
    # the stored statistics are those of the raw train pixels (0..16)
    raw_train = s.train.x * s.std[0] + s.mean[0]
    assert 0 <= raw_train.min().item() + 1e-4 and raw_train.max().item() <= 16 + 1e-4
    assert 4 < s.mean[0] < 6 and 5 < s.std[0] < 7


def test_digits_seeded_and_limit():
    a, b, c = load_data(seed=3), load_data(seed=3), load_data(seed=4)
    assert torch.equal(a.train.y, b.train.y) and torch.equal(a.test.x, b.test.x)
    assert not torch.equal(a.test.x, c.test.x)
    small = load_data(limit=200)
    assert len(small.train) == 200
    assert np.bincount(small.train.y.numpy(), minlength=10).min() >= 19  # stratified
    assert len(small.val) == len(a.val)
    big = load_data(image_size=16)
    assert big.train.x.shape[1:] == (1, 16, 16) and big.resolution == 16


def test_trainval_and_tensordata_methods(digits):
    s = digits
    tv = s.trainval()
    assert len(tv) == len(s.train) + len(s.val)
    assert torch.equal(tv.x[: len(s.train)], s.train.x)
    up = s.train.resized(16)
    assert up.x.shape == (len(s.train), 1, 16, 16) and up.y is s.train.y
    down = up.resized(6)
    assert down.x.shape[-2:] == (6, 6)
    assert s.train.resized(8) is s.train
    sub = s.train.subset([0, 5, 7])
    assert len(sub) == 3 and torch.equal(sub.x[1], s.train.x[5])
    assert s.train.to("cpu") is s.train
    with pytest.raises(UserError):
        s.train.resized(0)


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="unknown dataset"):
        load_data("imagenet-21k")
    with pytest.raises(UserError):
        load_data(val_fraction=1.5)
    with pytest.raises(UserError):
        load_data(limit=0)
    with pytest.raises(UserError):
        TrainConfig(epochs=-1)
    with pytest.raises(UserError):
        TrainConfig(optimizer="lamb")
    with pytest.raises(UserError):
        TrainConfig(lr=float("nan"))
    with pytest.raises(UserError):
        TrainConfig(augment="mixup")
    assert set(DATASETS) >= {"digits", "mnist", "fashion-mnist", "cifar10", "svhn"}


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(UserError):
        resolve_device("gpu0")
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
        with pytest.raises(UserError):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(UserError):
            resolve_device("cuda:0")


# --------------------------------------------------------------------------------------------------------------------
# fit / evaluate
# --------------------------------------------------------------------------------------------------------------------
def test_fit_learns_digits(digits):
    model = make_model()
    calls = []
    res = fit(model, digits.train, digits.val, TrainConfig(epochs=6, batch_size=64), on_epoch=lambda e, a: calls.append((e, a)))
    assert isinstance(res, FitResult)
    assert res.val_acc > 0.9, res.history
    assert res.best_val_acc >= res.val_acc
    assert [c[0] for c in calls] == [1, 2, 3, 4, 5, 6]
    assert [h["val_acc"] for h in res.history] == [c[1] for c in calls]
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert set(res.history[0]) >= {"epoch", "train_loss", "val_acc", "seconds"}
    assert res.images_per_second > 0 and res.seconds > 0
    assert not model.training
    test_acc = evaluate(model, digits.test)
    assert 0.85 < test_acc <= 1.0
    logits = predict_logits(model, digits.test, batch_size=100)
    assert logits.shape == (len(digits.test), 10)
    assert (logits.argmax(1) == digits.test.y).float().mean().item() == pytest.approx(test_acc)


def test_same_seed_same_history(digits):
    cfg = TrainConfig(epochs=2, batch_size=128, augment="crop_flip", seed=7)
    r1 = fit(make_model(1), digits.train, digits.val, cfg)
    r2 = fit(make_model(1), digits.train, digits.val, cfg)
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]
    assert strip(r1.history) == strip(r2.history)
    r3 = fit(make_model(1), digits.train, digits.val, TrainConfig(epochs=2, batch_size=128, augment="crop_flip", seed=8))
    assert strip(r3.history) != strip(r1.history)


def test_sgd_label_smoothing_clip_no_val(digits):
    cfg = TrainConfig(epochs=2, optimizer="sgd", lr=0.05, schedule="none", label_smoothing=0.1, grad_clip=1.0,
                      warmup_epochs=0.5, augment="crop")
    res = fit(make_model(), digits.train, None, cfg)
    assert res.val_acc is None and res.best_val_acc is None
    assert len(res.history) == 2 and all(h["val_acc"] is None for h in res.history)
    assert math.isfinite(res.history[-1]["train_loss"])


def test_zero_epochs_only_evaluates(digits):
    model = make_model()
    before = [p.clone() for p in model.parameters()]
    res = fit(model, digits.train, digits.val, TrainConfig(epochs=0))
    assert res.history == [] and 0 <= res.val_acc <= 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_nan_loss_raises_training_diverged(digits):
    class Inf(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, 10)

        def forward(self, x):
            return self.lin(x.flatten(1)) * float("inf")

    with pytest.raises(TrainingDiverged) as ei:
        fit(Inf(), digits.train, digits.val, TrainConfig(epochs=3))
    assert (ei.value.epoch, ei.value.step) == (1, 1)
    assert isinstance(ei.value, RuntimeError) and "diverged" in str(ei.value)

    with pytest.raises(TrainingDiverged) as ei:  # a huge learning rate blows up within the first epoch
        fit(make_model(), digits.train, None, TrainConfig(epochs=3, lr=1e12, optimizer="sgd", schedule="none"))
    assert ei.value.epoch == 1 and ei.value.step > 1


def test_on_epoch_exception_propagates(digits):
    class Pruned(Exception):
        pass

    seen = []

    def on_epoch(epoch, acc):
        seen.append(epoch)
        if epoch == 2:
            raise Pruned()

    with pytest.raises(Pruned):
        fit(make_model(), digits.train, digits.val, TrainConfig(epochs=5), on_epoch=on_epoch)
    assert seen == [1, 2]


def test_fit_with_teacher_distills(digits):
    # a teacher trained on shifted labels (y -> y + 1): a distilled student must learn ITS answers, which a student
    # trained alone on the true labels never would
    shifted = TensorData(digits.train.x, (digits.train.y + 1) % 10)
    teacher = make_model(3)
    fit(teacher, shifted, None, TrainConfig(epochs=3, batch_size=64))
    teacher_pred = predict_logits(teacher, digits.val).argmax(1)
    student = make_model(4)
    res = fit(student, digits.train, digits.val, TrainConfig(epochs=3, batch_size=64), teacher=teacher,
              temperature=4.0, alpha=0.9)
    agree = (predict_logits(student, digits.val).argmax(1) == teacher_pred).float().mean().item()
    alone = make_model(4)
    alone_res = fit(alone, digits.train, digits.val, TrainConfig(epochs=3, batch_size=64))
    alone_agree = (predict_logits(alone, digits.val).argmax(1) == teacher_pred).float().mean().item()
    assert agree > 0.7 and alone_agree < 0.2, (agree, alone_agree)
    assert res.val_acc < 0.3 < alone_res.val_acc  # the soft targets (weight 0.9) outweigh the true labels
    assert not teacher.training


# --------------------------------------------------------------------------------------------------------------------
# distillation loss and augmentation
# --------------------------------------------------------------------------------------------------------------------
def test_distillation_loss_math():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(16, 10, generator=g)
    t = torch.randn(16, 10, generator=g) * 3
    y = torch.randint(0, 10, (16,), generator=g)
    ce = F.cross_entropy(s, y)
    assert torch.allclose(distillation_loss(s, t, y, 4.0, 0.0), ce)
    assert torch.allclose(distillation_loss(s, t, y, 4.0, 0.0, label_smoothing=0.1), F.cross_entropy(s, y, label_smoothing=0.1))
    for T in (1.0, 4.0, 20.0):
        p_t = F.softmax(t / T, 1)
        kl = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean()
        assert torch.allclose(distillation_loss(s, t, y, T, 1.0), T * T * kl, atol=1e-6)
        mixed = distillation_loss(s, t, y, T, 0.7)
        assert torch.allclose(mixed, 0.7 * T * T * kl + 0.3 * ce, atol=1e-6)
    assert distillation_loss(t, t, y, 4.0, 1.0).abs().item() < 1e-6  # identical logits: no KL
    # T² keeps the gradient scale roughly independent of T for large T
    grads = []
    for T in (10.0, 20.0):
        s2 = s.clone().requires_grad_()
        distillation_loss(s2, t, y, T, 1.0).backward()
        grads.append(s2.grad.norm().item())
    assert 0.5 < grads[0] / grads[1] < 2.0


def test_augment_batch_shapes_and_content():
    x = torch.arange(4 * 3 * 32 * 32, dtype=torch.float32).view(4, 3, 32, 32) + 1
    g = torch.Generator().manual_seed(0)
    for mode in ("crop", "crop_flip"):
        out = augment_batch(x, mode, g)
        assert out.shape == x.shape
        for i in range(4):  # every output image is a shift (maybe flipped) of its input, zeros outside
            found = False
            for img in (x[i], x[i].flip(-1)):
                for dy in range(-4, 5):
                    for dx in range(-4, 5):
                        shifted = F.pad(img, (4, 4, 4, 4))[:, 4 + dy: 36 + dy, 4 + dx: 36 + dx]
                        found |= torch.equal(shifted, out[i])
            assert found
    assert augment_batch(x, "none") is x


# --------------------------------------------------------------------------------------------------------------------
# torchvision formats on disk (tiny fake files, never downloaded)
# --------------------------------------------------------------------------------------------------------------------
def write_idx(path, arr: np.ndarray) -> None:
    """Big-endian IDX file as MNIST ships it: magic (0, 0, type 0x08 = uint8, ndim), dims, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, arr.ndim))
        f.write(struct.pack(f">{arr.ndim}I", *arr.shape))
        f.write(arr.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_formats(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    x, y = class_images(6, 10, (28, 28))
    xt, yt = class_images(2, 10, (28, 28), seed=1)
    write_idx(raw / "train-images-idx3-ubyte", x)
    write_idx(raw / "train-labels-idx1-ubyte", y)
    write_idx(raw / "t10k-images-idx3-ubyte", xt)
    write_idx(raw / "t10k-labels-idx1-ubyte", yt)
    s = load_data(name, data_dir=tmp_path, val_fraction=0.2)
    assert (s.num_classes, s.in_chans, s.resolution) == (10, 1, 28)
    assert (len(s.train), len(s.val), len(s.test)) == (48, 12, 20)
    assert set(s.val.y.tolist()) == set(range(10))  # stratified: every class in val
    assert torch.equal(s.test.y, torch.as_tensor(yt))
    # the pixels are the file's pixels, normalized with train statistics
    assert torch.allclose(s.test.x[:, 0] * s.std[0] + s.mean[0], torch.as_tensor(xt, dtype=torch.float32), atol=1e-3)
    assert len(s.classes) == 10
    s16 = load_data(name, data_dir=tmp_path, image_size=16, limit=20)
    assert s16.train.x.shape == (20, 1, 16, 16) and s16.test.x.shape == (20, 1, 16, 16)


def _no_md5(monkeypatch, module) -> None:
    """Fake files cannot match the published md5 sums: accept any existing file (tests only)."""
    monkeypatch.setattr(module, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def test_cifar10_format(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    _no_md5(monkeypatch, cifar)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for i in range(1, 6):
        x, y = class_images(1, 10, (3, 32, 32), seed=i)  # CHW rows, as in the real batches
        with open(base / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": x.reshape(len(x), -1), "labels": y.tolist(), "batch_label": f"batch {i}"}, f)
    xt, yt = class_images(1, 10, (3, 32, 32), seed=9)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({"data": xt.reshape(len(xt), -1), "labels": yt.tolist()}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_vis": 3072}, f)
    s = load_data("cifar10", data_dir=tmp_path)
    assert (s.num_classes, s.in_chans, s.resolution) == (10, 3, 32)
    assert (len(s.train), len(s.val), len(s.test)) == (40, 10, 10)
    assert s.classes == names
    assert torch.allclose(s.test.x * torch.tensor(s.std).view(1, 3, 1, 1) + torch.tensor(s.mean).view(1, 3, 1, 1),
                          torch.as_tensor(xt, dtype=torch.float32), atol=1e-3)


def test_svhn_format(tmp_path, monkeypatch):
    import scipy.io
    import torchvision.datasets.svhn as svhn

    _no_md5(monkeypatch, svhn)
    for split, n, seed in (("train", 5, 0), ("test", 3, 1)):
        x, y = class_images(n, 10, (32, 32, 3), seed=seed)               # N, H, W, C
        labels = np.where(y == 0, 10, y).reshape(-1, 1).astype(np.uint8)  # SVHN stores digit 0 as label 10
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x.transpose(1, 2, 3, 0), "y": labels})
    s = load_data("svhn", data_dir=tmp_path)
    assert (s.num_classes, s.in_chans, s.resolution) == (10, 3, 32)
    assert (len(s.train), len(s.val), len(s.test)) == (40, 10, 30)
    assert sorted(set(s.test.y.tolist())) == list(range(10))
    xt, _ = class_images(3, 10, (32, 32, 3), seed=1)
    restored = s.test.x * torch.tensor(s.std).view(1, 3, 1, 1) + torch.tensor(s.mean).view(1, 3, 1, 1)
    assert torch.allclose(restored, torch.as_tensor(xt, dtype=torch.float32).permute(0, 3, 1, 2), atol=1e-3)


def test_corrupt_torchvision_files_are_a_one_line_user_error(tmp_path):
    """Files of the right names whose md5 sums do not match the published ones (a truncated or damaged download):
    torchvision's own integrity check rejects them, and the user is told to delete them and download again."""
    import subprocess
    import sys

    (tmp_path / "cifar-10-batches-py").mkdir()
    for f in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
              "batches.meta"):
        (tmp_path / "cifar-10-batches-py" / f).write_bytes(b"truncated download")
    for f in ("train_32x32.mat", "test_32x32.mat"):
        (tmp_path / f).write_bytes(b"truncated download")
    for name in ("cifar10", "svhn"):
        with pytest.raises(UserError, match="corrupted") as ei:
            load_data(name, data_dir=tmp_path)
        assert str(tmp_path) in str(ei.value) and "--download" in str(ei.value)
    r = subprocess.run([sys.executable, "-m", "search.run", "--budget-mflops", "1", "--dataset", "cifar10",
                        "--data-dir", str(tmp_path), "--out", str(tmp_path / "results"), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "corrupted" in lines[0] and "Traceback" not in r.stderr


def test_missing_torchvision_data_is_user_error(tmp_path):
    missing = tmp_path / "nowhere"
    for name in ("mnist", "cifar10", "svhn"):
        with pytest.raises(UserError) as ei:
            load_data(name, data_dir=missing)
        assert str(missing) in str(ei.value) and "--download" in str(ei.value)
    assert not missing.exists()  # nothing created, nothing downloaded


# --------------------------------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------------------------------
def write_pngs(root, classes=("cat", "dog", "owl"), n=6, size=20, grey=False, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c_i, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = (rng.integers(0, 60, (size, size, 3)) + 60 * c_i).astype(np.uint8)
            img = Image.fromarray(arr[..., 0], "L") if grey else Image.fromarray(arr, "RGB")
            img.save(root / c / f"{i}.png")


def test_folder_with_train_val_test(tmp_path):
    write_pngs(tmp_path / "train", n=8)
    write_pngs(tmp_path / "val", n=2, seed=1)
    write_pngs(tmp_path / "test", classes=("cat", "owl"), n=3, seed=2)  # a class may be absent from test
    s = load_data(f"folder:{tmp_path}", image_size=16)
    assert (s.num_classes, s.in_chans, s.resolution) == (3, 3, 16)
    assert s.classes == ["cat", "dog", "owl"]
    assert (len(s.train), len(s.val), len(s.test)) == (24, 6, 6)
    assert sorted(set(s.test.y.tolist())) == [0, 2]
    assert s.train.x.shape == (24, 3, 16, 16)


def test_folder_flat_classes_default_size_and_grey(tmp_path):
    write_pngs(tmp_path, n=10, grey=True)
    s = load_data(f"folder:{tmp_path}")
    assert (s.num_classes, s.in_chans, s.resolution) == (3, 1, 32)
    assert len(s.train) + len(s.val) + len(s.test) == 30 and len(s.test) == 6
    torch.manual_seed(0)
    # the classes differ in brightness only: a model of the mean grey level separates them if the images were read
    res = fit(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 3)), s.train, s.val,
              TrainConfig(epochs=30, lr=0.1))
    assert res.val_acc == 1.0  # brightness tells the classes apart: the grey images were read as they are


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_data(f"folder:{tmp_path / 'missing'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no class folders"):
        load_data(f"folder:{empty}")
    (empty / "cat").mkdir()
    (empty / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match="no images"):
        load_data(f"folder:{empty}")


# --------------------------------------------------------------------------------------------------------------------
# optional: CUDA paths (run only where a GPU exists)
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_amp_and_nan_detection(digits):
    model = make_model()
    res = fit(model, digits.train, digits.val, TrainConfig(epochs=6, batch_size=64, device="cuda", amp=True))
    assert res.val_acc > 0.9
    assert next(model.parameters()).device.type == "cuda"
    assert 0.85 < evaluate(model, digits.test) <= 1.0

    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, 10)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            out = self.lin(x.flatten(1))
            return out * float("inf") if self.training and self.calls == 5 else out

    with pytest.raises(TrainingDiverged) as ei:
        fit(Boom(), digits.train, None, TrainConfig(epochs=2, batch_size=32, device="cuda"))
    assert (ei.value.epoch, ei.value.step) == (1, 5)
