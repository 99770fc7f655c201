import io
import os
import pickle
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_lib import data, toy_cars
from ddpm_lib.data import (
    STANFORD_CARS_HANDLE,
    DatasetUnavailableError,
    ImageTensorDataset,
    from_uint8,
    load_dataset,
    to_uint8,
)

OFFLINE = {
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "",
    "no_proxy": "",
}


@pytest.fixture
def offline(monkeypatch):
    """Every HTTP(S) request goes to a closed local port: the network is unreachable."""
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)


def _jpeg(path, colour, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, quality=95)


# ---------------------------------------------------------------------------------- toy cars
def test_toy_cars_shapes_range_labels():
    for size in (32, 64):
        ds = load_dataset("toy_cars", image_size=size, num_images=200)
        x, y = ds[0]
        assert x.shape == (3, size, size) and x.dtype == torch.float32
        assert -1.0 <= x.min() and x.max() <= 1.0 and isinstance(y, int)
    ds = load_dataset("toy_cars", image_size=32, num_images=300)
    assert set(ds.labels.tolist()) == set(range(len(toy_cars.BODY_TYPES)))
    assert ds.classes == list(toy_cars.BODY_TYPES)


@pytest.mark.slow
def test_toy_cars_default_size_is_stanford_train(monkeypatch):
    drawn = []  # the cars asked for; the drawing itself (4 s for 8,144) is tested elsewhere

    def blank(params, image_size):
        drawn.append(len(params))
        return torch.zeros(len(params), 3, image_size, image_size, dtype=torch.uint8)

    monkeypatch.setattr(toy_cars, "render", blank)
    assert len(load_dataset("toy_cars", image_size=16)) == sum(drawn) == 8144


def test_toy_cars_deterministic_per_index():
    a = load_dataset("toy_cars", image_size=32, num_images=50, seed=3)
    b = load_dataset("toy_cars", image_size=32, num_images=80, seed=3)
    c = load_dataset("toy_cars", image_size=32, num_images=50, seed=4)
    assert torch.equal(a.images, b.images[:50])  # image i depends on (seed, split, i) only
    assert not torch.equal(a.images, c.images)
    # a fixed pixel statistic: catches any change of the generator on any machine
    assert a.images.float().mean().item() == pytest.approx(TOY_CARS_MEAN, abs=0.05)


TOY_CARS_MEAN = 129.5645


@pytest.mark.slow
def test_toy_cars_train_test_disjoint():
    train = load_dataset("toy_cars", image_size=16, num_images=1000)
    test = load_dataset("toy_cars", image_size=16, split="test", num_images=1000)
    hashes = {bytes(x.numpy()) for x in train.images}
    assert not any(bytes(x.numpy()) in hashes for x in test.images)


@pytest.mark.slow
def test_toy_cars_variety():
    ds = load_dataset("toy_cars", image_size=32, num_images=1000)
    assert len({bytes(x.numpy()) for x in ds.images}) == 1000  # no two identical
    params = np.stack([toy_cars.sample_params(0, "train", i) for i in range(1000)])
    rgb = params[:, 5:8]
    import colorsys

    hsv = np.array([colorsys.rgb_to_hsv(*c) for c in rgb])
    chromatic = hsv[hsv[:, 1] > 0.3]
    counts = np.histogram(chromatic[:, 0], bins=12, range=(0, 1))[0]
    assert counts.min() > 0.4 * counts.mean()  # body colours spread around the hue circle
    assert (params[:, 4] > 0).mean() == pytest.approx(0.5, abs=0.06)  # facing left and right
    assert params[:, 1].std() > 0.05 and params[:, 2].std() > 0.02  # scale and position vary


def test_toy_cars_looks_like_a_car():
    """Wheels are dark discs on the ground, the sky is above: check pixels where the geometry says they are."""
    p = toy_cars.sample_params(0, "train", 7)
    img = toy_cars.render(p[None], 128)[0].float() / 255  # (3, 128, 128)
    length, cx, ground, facing, wheel, xr = p[1], p[2], p[3], p[4], p[19], p[26]
    wx = cx + (xr - 0.5) * length * facing  # rear wheel centre in image coordinates
    wy = ground - wheel * length
    ring = img[:, int((wy - 0.8 * wheel * length) * 128), int(wx * 128)]  # on the tyre
    assert ring.max() < 0.2
    assert img[:, 2, :].mean() > 0.15  # the top row is sky, not black


# ---------------------------------------------------------------------------------- stanford cars via kagglehub
@pytest.fixture
def fake_kaggle_cache(tmp_path, monkeypatch):
    from kagglehub.cache import Cache
    from kagglehub.handle import parse_dataset_handle

    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    base = tmp_path / "kagglehub/datasets/jutrera/stanford-car-dataset-by-classes-folder/versions/2"
    for split in ("train", "test"):
        for k, cls in enumerate(
            ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "BMW M3 Coupe 2012"]
        ):
            for i in range(2):
                _jpeg(
                    base / f"car_data/car_data/{split}/{cls}/{k:05d}{i}.jpg",
                    (40 * k, 100, 200 - 50 * i),
                    size=(60 + 10 * k, 40),
                )
    (base / "names.csv").write_text(
        "AM General Hummer SUV 2000\nAcura RL Sedan 2012\nBMW M3 Coupe 2012\n"
    )
    (base / "anno_train.csv").write_text("00000.jpg,1,2,3,4,1\n")
    Cache().mark_as_complete(parse_dataset_handle(STANFORD_CARS_HANDLE))
    return base


def test_stanford_cars_from_kagglehub_cache(fake_kaggle_cache, offline):
    ds = load_dataset("stanford_cars", image_size=32)
    assert len(ds) == 6 and ds.classes[1] == "Acura RL Sedan 2012"
    x, y = ds[2]
    assert x.shape == (3, 32, 32) and y == 1
    # the colour survives resize + centre-crop
    assert torch.allclose(to_uint8(x).float().mean((1, 2)), torch.tensor([40.0, 100, 200]), atol=3)
    test = load_dataset("stanford_cars", image_size=16, split="test")
    assert len(test) == 6


def test_stanford_cars_root(fake_kaggle_cache):
    ds = load_dataset("stanford_cars", image_size=24, root=fake_kaggle_cache)
    assert ds.images.shape == (6, 3, 24, 24)
    with pytest.raises(DatasetUnavailableError, match="root="):
        load_dataset("stanford_cars", root=fake_kaggle_cache / "car_data/car_data/train")


def test_stanford_cars_offline_not_cached(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "empty"))
    t0 = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset("stanford_cars", image_size=32)
    assert time.perf_counter() - t0 < 30
    msg = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "kaggle" in msg.lower() and "root=" in msg and "toy_cars" in msg


class _FakeKagglehub:
    """Stands in for the kagglehub module: ``dataset_download`` runs ``behaviour(handle)``."""

    def __init__(self, behaviour):
        self.dataset_download = behaviour


def test_stanford_cars_download_that_never_answers_times_out(tmp_path, monkeypatch):
    """A client that waits forever (requests without a timeout) is given up on after NETWORK_TIMEOUT_S."""
    release = threading.Event()
    monkeypatch.setitem(sys.modules, "kagglehub", _FakeKagglehub(lambda handle: release.wait(30)))
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    monkeypatch.setattr(data, "NETWORK_TIMEOUT_S", 0.3)
    t0 = time.perf_counter()
    try:
        with pytest.raises(DatasetUnavailableError, match=r"did not answer within 0.3 s") as info:
            load_dataset("stanford_cars", image_size=16)
    finally:
        release.set()  # let the abandoned worker thread end
    assert time.perf_counter() - t0 < 3
    assert (
        "root=" in str(info.value)
        and "--data-root" in str(info.value)
        and "connect" in str(info.value)
    )


def test_stanford_cars_slow_download_that_progresses_is_not_cut(
    fake_kaggle_cache, tmp_path, monkeypatch
):
    """Each byte that reaches kagglehub's cache restarts the clock: a long download is not a hang."""
    partial = (
        tmp_path / "kagglehub/datasets/jutrera/stanford-car-dataset-by-classes-folder/2.archive"
    )

    def slow_download(handle):
        # 0.8 s in all, longer than the 0.3 s deadline, with data arriving every 0.1 s
        for _ in range(8):
            with open(partial, "ab") as f:
                f.write(b"x" * 100)
            time.sleep(0.1)
        partial.unlink()
        return str(fake_kaggle_cache)

    monkeypatch.setitem(sys.modules, "kagglehub", _FakeKagglehub(slow_download))
    monkeypatch.setattr(data, "NETWORK_TIMEOUT_S", 0.3)
    assert len(load_dataset("stanford_cars", image_size=16)) == 6


def test_stanford_cars_download_errors_are_reported(tmp_path, monkeypatch):
    def refuse(handle):
        raise ConnectionError("connection refused")

    monkeypatch.setitem(sys.modules, "kagglehub", _FakeKagglehub(refuse))
    with pytest.raises(DatasetUnavailableError, match="ConnectionError: connection refused"):
        load_dataset("stanford_cars", image_size=16)


# ---------------------------------------------------------------------------------- cifar-10
@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for n in names:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        data[0, :1024] = 255  # first image: pure red channel at 255
        batch = {"data": data, "labels": [0, 1, 2, 9]}
        with open(folder / n, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {
                "label_names": [
                    "airplane",
                    "automobile",
                    "bird",
                    "cat",
                    "deer",
                    "dog",
                    "frog",
                    "horse",
                    "ship",
                    "truck",
                ]
            },
            f,
        )
    # the fixture's files cannot have the real md5 sums: check that they exist instead
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath)
    )
    return tmp_path


def test_cifar10_fake_batches(fake_cifar):
    ds = load_dataset("cifar10", image_size=32, root=fake_cifar, download=False)
    assert len(ds) == 20 and ds.classes[1] == "automobile"
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y == 0 and torch.all(x[0] == 1.0)
    big = load_dataset("cifar10", image_size=64, root=fake_cifar, split="test", download=False)
    assert len(big) == 4 and big[0][0].shape == (3, 64, 64)


def test_cifar10_offline_absent(tmp_path, offline):
    for download in (False, True):
        with pytest.raises(DatasetUnavailableError, match="toy_cars") as info:
            load_dataset("cifar10", image_size=32, root=tmp_path / "nothing", download=download)
        assert "download=True" in str(info.value) or "cifar-10-batches-py" in str(info.value)


# ---------------------------------------------------------------------------------- folders
def test_folder_converts_modes_and_skips_corrupt(tmp_path):
    Image.new("L", (20, 20), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (20, 30), (255, 0, 0, 255)).save(tmp_path / "rgba.png")
    Image.new("P", (25, 20), 3).save(tmp_path / "palette.png")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 255, 0)).save(buf, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all")
    (tmp_path / "notes.txt").write_text("ignored")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset("folder", image_size=16, root=tmp_path)
    assert len(ds) == 3
    assert (
        len(caught) == 1
        and "truncated.jpg" in str(caught[0].message)
        and "garbage.jpg" in str(caught[0].message)
    )
    gray = to_uint8(ds[0][0])
    assert gray.shape == (3, 16, 16) and torch.all(gray == 128)
    red = to_uint8(ds[2][0])
    assert torch.all(red[0] == 255) and torch.all(red[1:] == 0)


def test_folder_scales_16bit_and_float_images(tmp_path):
    """16-bit and float images keep their brightness (Pillow alone would clip them to white or black)."""
    ramp = np.linspace(0, 1, 16 * 16).reshape(16, 16)
    # mode I;16
    Image.fromarray((ramp * 65535).round().astype(np.uint16)).save(tmp_path / "a_16bit.png")
    # mode I
    Image.fromarray((ramp * 65535).round().astype(np.int32)).save(tmp_path / "b_int32.tif")
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "c_float.tif")  # mode F
    # the reference
    Image.fromarray((ramp * 255).round().astype(np.uint8)).save(tmp_path / "d_8bit.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset("folder", image_size=16, root=tmp_path)
    assert [Image.open(p).mode for p in sorted(tmp_path.iterdir())] == ["I;16", "I", "F", "L"]
    reference = ds.images[3].int()
    for i in range(3):
        assert (ds.images[i].int() - reference).abs().max() <= 1, i


def test_folder_refuses_float_and_integer_images_it_cannot_scale(tmp_path):
    Image.fromarray(np.full((8, 8), 3.5, np.float32)).save(tmp_path / "hdr.tif")
    Image.fromarray(np.full((8, 8), -7, np.int32)).save(tmp_path / "signed.tif")
    with pytest.warns(
        UserWarning, match=r"hdr.tif \(mode F .*values in \[3.5, 3.5\]: only floats in \[0, 1\]"
    ) as caught:
        with pytest.raises(
            DatasetUnavailableError, match=r"no readable images .*the first: .*hdr.tif \(mode F"
        ):
            load_dataset("folder", image_size=8, root=tmp_path)
    assert "signed.tif (mode I (integer) with values in [-7, -7], outside 16-bit" in str(
        caught[0].message
    )


def test_folder_imagefolder_layout_labels(tmp_path):
    for cls in ("cats", "dogs"):
        for i in range(2):
            _jpeg(tmp_path / cls / f"{i}.jpg", (10, 20, 30))
    ds = load_dataset("folder", image_size=8, root=tmp_path)
    assert ds.classes == ["cats", "dogs"] and ds.labels.tolist() == [0, 0, 1, 1]


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="does not exist"):
        load_dataset("folder", root=tmp_path / "missing")
    with pytest.raises(DatasetUnavailableError, match="holds no image files"):
        load_dataset("folder", root=tmp_path)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with (
        pytest.warns(UserWarning, match="bad.png"),
        pytest.raises(DatasetUnavailableError, match="no readable images"),
    ):
        load_dataset("folder", root=tmp_path)
    with pytest.raises(ValueError, match="needs root="):
        load_dataset("folder")


def test_bad_arguments():
    with pytest.raises(ValueError, match="valid choices: toy_cars, stanford_cars, cifar10, folder"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="valid choices: train, test"):
        load_dataset("toy_cars", split="val")
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("toy_cars", image_size=4)
    with pytest.raises(ValueError, match="unknown option"):
        load_dataset("toy_cars", num_imgs=3)


# ---------------------------------------------------------------------------------- batches
def test_batch_scales_and_flips():
    images = torch.zeros(10, 3, 4, 4, dtype=torch.uint8)
    images[:, :, :, 0] = 255  # a bright left column
    ds = ImageTensorDataset(images, torch.zeros(10))
    torch.manual_seed(0)
    x = torch.cat([ds.batch(torch.arange(5 * k, 5 * k + 5), flip=True) for k in range(2)])
    left = (x[:, 0, 0, 0] == 1).sum().item()
    right = (x[:, 0, 0, -1] == 1).sum().item()
    assert left + right == 10 and left > 0 and right > 0  # some flipped, some not
    plain = ds.batch(torch.arange(10))
    assert (
        plain.dtype == torch.float32
        and torch.all(plain[:, 0, 0, 0] == 1)
        and torch.all(plain[:, 0, 0, 1] == -1)
    )
    torch.manual_seed(0)
    again = torch.cat([ds.batch(torch.arange(5 * k, 5 * k + 5), flip=True) for k in range(2)])
    # the flips come from the global RNG: a seed (or a checkpoint's RNG state) fixes them
    assert torch.equal(x, again)


def test_uint8_round_trip():
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    x = from_uint8(u)
    assert x.min() == -1 and x.max() == 1 and torch.equal(to_uint8(x), u)
    with pytest.raises(ValueError, match="expects a uint8"):
        from_uint8(x)


def test_preview_grid_one_row_per_type(tmp_path):
    images = toy_cars.preview(per_type=3, image_size=16)
    assert images.shape == (18, 3, 16, 16) and images.dtype == torch.uint8
    toy_cars.main(["--out", str(tmp_path / "p.png"), "--per-type", "2", "--image-size", "16"])
    with Image.open(tmp_path / "p.png") as img:
        assert img.size == (2 * 17 + 1, 6 * 17 + 1)  # 2 columns, 6 rows, 1-pixel padding
