"""The evaluation stage: closed forms for FID, KID, precision/recall and class TV; the shipped feature network; the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.image.fid import FrechetInceptionDistance

from ddpm_lib import evaluate, features, metrics, toy_cars
from ddpm_lib.data import load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is faster


@pytest.fixture(scope="module")
def net():
    return features.load_feature_extractor()


def _random_cov(f: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(f, f, generator=g, dtype=torch.float64)
    return a @ a.T / f + 0.1 * torch.eye(f, dtype=torch.float64)


def _sym_sqrt(s: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(s)
    return v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T


def _frechet_closed_form(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), with Tr (S1 S2)^1/2 = Tr (S1^1/2 S2 S1^1/2)^1/2 (both symmetric PSD)."""
    r = _sym_sqrt(s1)
    return float((mu1 - mu2).square().sum() + torch.trace(s1 + s2 - 2 * _sym_sqrt(r @ s2 @ r)))


# ---------------------------------------------------------------------------------- FID and KID
def test_frechet_distance_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    f, n = 6, 4000
    mu1, mu2 = (
        torch.randn(f, generator=g, dtype=torch.float64),
        torch.randn(f, generator=g, dtype=torch.float64),
    )
    s1, s2 = _random_cov(f, g), _random_cov(f, g)
    x = mu1 + torch.randn(n, f, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s1).T
    y = mu2 + torch.randn(n, f, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s2).T
    fid = metrics.frechet_distance(x, y)
    # exactly the closed form of the sample statistics (unbiased covariances, as torchmetrics)
    assert fid == pytest.approx(
        _frechet_closed_form(x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T)), rel=1e-8
    )
    # and close to the population value of the two Gaussians
    assert fid == pytest.approx(_frechet_closed_form(mu1, s1, mu2, s2), rel=0.05)
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_kid_is_zero_for_one_distribution_and_positive_for_shifted_sets():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 400, 16, generator=g, dtype=torch.float64)
    shifted, _ = metrics.kernel_distance(x, y + 0.5, subsets=10, subset_size=200)
    same_distribution, _ = metrics.kernel_distance(x, y, subsets=10, subset_size=200)
    assert shifted > 0.5 and abs(same_distribution) < 0.02 * shifted
    # the very same set: the unbiased MMD^2 leaves out k(x_i, x_i) within a set but not across the two sets, so
    # KID(x, x) = 2 S / (m (m - 1)) - 2 (S + Tr K) / m^2 < 0, with S the sum of K's off-diagonal entries
    k = (x @ x.T / 16 + 1) ** 3
    m, off = len(x), k.sum() - k.trace()
    identical, std = metrics.kernel_distance(x, x.clone(), subsets=3, subset_size=400)
    assert (
        identical
        == pytest.approx(float(2 * off / (m * (m - 1)) - 2 * (off + k.trace()) / m**2), rel=1e-9)
        and std < 1e-12
    )
    # seeded subsets
    assert metrics.kernel_distance(x, y, 10, 200, seed=3) == metrics.kernel_distance(
        x, y, 10, 200, seed=3
    )


@pytest.mark.slow
def test_the_feature_network_is_a_torchmetrics_feature_and_matches_the_precomputed_path(net):
    real = load_dataset("toy_cars", 32, "train", num_images=64).images
    fake = load_dataset("toy_cars", 32, "test", num_images=64).images
    # uint8 images straight in, as torchmetrics' default normalize=False
    fid = FrechetInceptionDistance(feature=net)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    fid.train()  # torchmetrics may switch its modules to training mode; BatchNorm must stay frozen
    assert not net.training
    expected = metrics.frechet_distance(
        metrics.compute_features(real, net).features, metrics.compute_features(fake, net).features
    )
    assert float(fid.compute()) == pytest.approx(expected, rel=1e-5)
    # uint8, float [-1, 1] and NHWC numpy forms give the same features
    as_float = real.float() / 127.5 - 1
    assert torch.allclose(net(real), net(as_float))
    nhwc = real.permute(0, 2, 3, 1).numpy()
    assert torch.equal(
        metrics.compute_features(nhwc, net).features,
        metrics.compute_features(as_float, net).features,
    )


# ---------------------------------------------------------------------------------- precision, recall, class TV
def test_knn_radii_and_membership_on_a_line():
    pts = torch.tensor([[0.0], [1.0], [3.0], [6.0]], dtype=torch.float64)
    assert metrics.knn_radii(pts, k=1).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert metrics.knn_radii(pts, k=2).tolist() == [3.0, 2.0, 3.0, 5.0]
    inside = metrics.in_manifold(
        torch.tensor([[0.5], [4.9], [9.5], [-2.0]], dtype=torch.float64),
        pts,
        metrics.knn_radii(pts, k=1),
    )
    assert inside.tolist() == [True, True, False, False]


def test_precision_recall_known_answers():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(200, 8, generator=g, dtype=torch.float64)
    b = torch.randn(200, 8, generator=g, dtype=torch.float64) + 100.0
    assert metrics.precision_recall(a, a.clone()) == (1.0, 1.0)  # identical sets
    assert metrics.precision_recall(a, b) == (0.0, 0.0)  # disjoint far clusters
    p, r = metrics.precision_recall(torch.cat([a, b]), a)  # samples cover one of the two real modes
    assert p == 1.0 and r == 0.5


def test_class_tv_of_known_histograms():
    ref = torch.tensor([0, 1, 2, 3])
    assert metrics.class_tv(torch.tensor([0, 1, 2, 3]), ref, 4) == 0.0
    assert metrics.class_tv(torch.tensor([0, 0, 1, 1]), ref, 4) == pytest.approx(0.5)
    assert metrics.class_tv(torch.tensor([5, 5]), ref, 6) == 1.0


# ---------------------------------------------------------------------------------- on real images
@pytest.mark.slow
def test_real_cars_score_far_better_than_blurred_ones_than_noise(net):
    ref = metrics.compute_features(  # 200 a set: real FID ~3 (blur ~45), real class TV ~0.07
        load_dataset("toy_cars", 32, "train", num_images=200).images, net
    )
    real = load_dataset("toy_cars", 32, "test", num_images=200).images
    blurred = F.avg_pool2d(real.float(), 3, 1, 1, count_include_pad=False).round().to(torch.uint8)
    noise = (torch.randn(real.shape, generator=torch.Generator().manual_seed(0)) * 0.5).clamp(-1, 1)
    sets = {"real": real, "blur": blurred, "noise": noise}
    s = {
        name: metrics.evaluate_samples(x, ref, net, bootstrap=0, kid_subsets=10)
        for name, x in sets.items()
    }
    assert 5 * s["real"]["fid"] < s["blur"]["fid"] and 5 * s["blur"]["fid"] < s["noise"]["fid"]
    assert (
        s["real"]["kid_mean"] < 0.1 < s["blur"]["kid_mean"]
        and 10 * s["blur"]["kid_mean"] < s["noise"]["kid_mean"]
    )
    assert s["real"]["precision"] > 0.8 > 0.4 > s["blur"]["precision"] >= s["noise"]["precision"]
    assert s["real"]["class_tv"] < 0.1 < s["blur"]["class_tv"] < s["noise"]["class_tv"]


@pytest.mark.slow
def test_evaluate_samples_reports_spread_and_baseline(net):
    ref = metrics.reference_features("toy_cars", 32, 200, net)
    assert metrics.reference_features("toy_cars", 32, 200, net) is ref  # cached
    base = metrics.reference_features("toy_cars", 32, 100, net, split="test")
    samples = (
        load_dataset("toy_cars", 32, "test", num_images=100, seed=7).images.float() / 127.5 - 1
    )
    r = metrics.evaluate_samples(samples, ref, net, baseline=base, bootstrap=4, kid_subsets=10)
    assert {"fid", "kid_mean", "kid_std", "precision", "recall", "class_tv", "num_samples"} <= set(
        r
    ) and r["num_samples"] == 100
    assert set(r["spread"]) == {"fid", "precision", "recall", "class_tv"} and all(
        v > 0 for v in r["spread"].values()
    )
    # real held-out samples: baseline level
    assert r["baseline"]["num_samples"] == 100 and r["fid"] < 5 * r["baseline"]["fid"] + 1


# ---------------------------------------------------------------------------------- the feature network
def test_shipped_feature_network_file():
    path = features.default_weights_path()
    saved = torch.load(path, weights_only=True)
    assert path.stat().st_size < 1_000_000 and saved["test_accuracy"] > 0.97
    assert saved["command"].startswith("python -m ddpm_lib.features") and saved["classes"] == list(
        toy_cars.BODY_TYPES
    )


@pytest.mark.slow
def test_feature_network_training_is_deterministic_and_round_trips(tmp_path):
    kw = dict(num_train=64, num_test=16, epochs=1, batch_size=32, log=lambda s: None)
    (a, acc_a), (b, acc_b) = features.train_feature_net(**kw), features.train_feature_net(**kw)
    assert acc_a == acc_b and all(
        torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items()
    )
    features.save_feature_net(
        a, tmp_path / "f.pt", acc_a, "python -m ddpm_lib.features --num-train 64"
    )
    loaded = features.load_feature_extractor(tmp_path / "f.pt")
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert loaded(x).shape == (4, loaded.num_features) and loaded.classify(x).shape == (4,)
    with pytest.raises(FileNotFoundError, match="python -m ddpm_lib.features"):
        features.load_feature_extractor(tmp_path / "missing.pt")


def test_inception_without_weights_says_where_to_put_them(tmp_path):
    with pytest.raises(metrics.InceptionUnavailableError, match="--inception-weights"):
        metrics.inception_feature_extractor(tmp_path / "missing.pth")


# ---------------------------------------------------------------------------------- the command line
def _npz(tmp_path, images, name="s.npz", key="arr_0"):
    path = tmp_path / name
    np.savez(path, **{key: images})
    return path


def _text_file(path):
    path.write_text("not a zip archive")
    return path


def test_cli_scores_an_npz_end_to_end(tmp_path, capsys):
    images = (
        load_dataset("toy_cars", 32, "test", num_images=60, seed=3)
        .images.permute(0, 2, 3, 1)
        .numpy()
    )
    out = tmp_path / "r.json"
    options = "--num-reference 120 --bootstrap 3 --kid-subsets 5".split()
    assert (
        evaluate.main(["--samples", str(_npz(tmp_path, images)), *options, "--json", str(out)]) == 0
    )
    r = json.loads(out.read_text())
    assert {
        "fid",
        "kid_mean",
        "kid_std",
        "precision",
        "recall",
        "class_tv",
        "num_samples",
        "baseline",
        "spread",
    } <= set(r)
    assert (
        r["num_samples"] == 60 and r["num_reference"] == 120 and r["baseline"]["num_samples"] == 60
    )
    assert all(math.isfinite(r[k]) for k in ("fid", "kid_mean", "precision", "recall", "class_tv"))
    assert "real-vs-real" in capsys.readouterr().out


def test_cli_samples_from_a_checkpoint_and_measures_bits_per_dim(tmp_path):
    out = tmp_path / "r.json"
    argv = [
        "--checkpoint",
        "--num-samples",
        "12",
        "--steps",
        "2",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--num-reference",
        "24",
        "--bootstrap",
        "2",
        "--kid-subsets",
        "3",
        "--bpd-images",
        "2",
        "--bpd-timesteps",
        "3",
        "--save-samples",
        str(tmp_path / "s.npz"),
        "--json",
        str(out),
    ]
    assert evaluate.main(argv) == 0
    r = json.loads(out.read_text())
    assert r["num_samples"] == 12 and r["bits_per_dim"] > 0 and r["bpd_exact"] is False
    assert np.load(tmp_path / "s.npz")["arr_0"].shape == (12, 32, 32, 3)


BAD_INPUTS = {
    "missing file": (lambda tmp: tmp / "nope.npz", [], "no samples file"),
    "no arr_0": (
        lambda tmp: _npz(tmp, np.zeros((12, 32, 32, 3), np.uint8), key="images"),
        [],
        "has no arr_0",
    ),
    "not an npz": (lambda tmp: _text_file(tmp / "t.npz"), [], "not a readable .npz"),
    "float dtype": (
        lambda tmp: _npz(tmp, np.zeros((12, 32, 32, 3), np.float32)),
        [],
        "must be uint8",
    ),
    "NCHW": (lambda tmp: _npz(tmp, np.zeros((12, 3, 32, 32), np.uint8)), [], "channels last"),
    "not square": (lambda tmp: _npz(tmp, np.zeros((12, 32, 16, 3), np.uint8)), [], "square"),
    "too few": (lambda tmp: _npz(tmp, np.zeros((3, 32, 32, 3), np.uint8)), [], "at least"),
    "size mismatch": (
        lambda tmp: _npz(tmp, np.zeros((12, 32, 32, 3), np.uint8)),
        ["--image-size", "64"],
        "reference is 64x64",
    ),
    "unknown dataset": (
        lambda tmp: _npz(tmp, np.zeros((12, 32, 32, 3), np.uint8)),
        ["--dataset", "mnist"],
        "unknown dataset",
    ),
    "no inception": (
        lambda tmp: _npz(tmp, np.zeros((12, 32, 32, 3), np.uint8)),
        ["--dataset", "cifar10"],
        "--inception-weights",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_cli_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys, case):
    make, extra, message = BAD_INPUTS[case]
    assert evaluate.main(["--samples", str(make(tmp_path)), *extra]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ")
        and err.count("\n") == 1
        and message in err
        and "Traceback" not in err
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--checkpoint", "missing.pt"], "no checkpoint"),
        (["--checkpoint", "--dataset", "mnist"], "unknown dataset"),  # refused before any sampling
        (["--checkpoint", "--num-samples", "0"], "--num-samples must be >= 1"),
    ],
)
def test_cli_bad_checkpoint_options(tmp_path, capsys, argv, message):
    assert evaluate.main([str(tmp_path / a) if a.endswith(".pt") else a for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


@pytest.mark.slow
def test_write_card_adds_the_scores_to_the_checkpoints_card_and_nothing_else(tmp_path, capsys):
    from ddpm_lib.checkpoints import PRETRAINED, load_checkpoint
    from ddpm_lib.model_card import describe_file

    path = tmp_path / "model.pt"
    path.write_bytes(PRETRAINED.read_bytes())
    before = load_checkpoint(path)
    argv = "--num-samples 12 --steps 2 --precision fp32 --device cpu --num-reference 24".split()
    argv += ["--bootstrap", "2", "--kid-subsets", "3", "--bpd-images", "0"]
    argv += ["--checkpoint", str(path), "--json", str(tmp_path / "r.json"), "--write-card"]
    for _ in range(2):  # a second evaluation replaces the first one's scores
        assert evaluate.main(argv) == 0
    after = load_checkpoint(path)
    new = [m for m in after["model_card"]["metrics"] if "r.json" in m["source"]]
    assert [m["name"] for m in new] == [
        "FID",
        "KID",
        "precision (k = 3)",
        "recall (k = 3)",
        "class TV (body types)",
    ]
    result = json.loads((tmp_path / "r.json").read_text())
    assert new[0]["value"] == result["fid"] and new[0]["baseline"] == result["baseline"]["fid"]
    assert "12 DDIM-2 eta 1 samples" in new[0]["protocol"]
    assert (
        after["model_card"]["metrics"][: len(before["model_card"]["metrics"])]
        == (before["model_card"]["metrics"])
    )
    assert all(torch.equal(after["ema"][k], v) for k, v in before["ema"].items())
    assert "12 DDIM-2 eta 1 samples" in describe_file(path)
    # no checkpoint, no card to write into
    capsys.readouterr()
    assert evaluate.main(["--samples", str(tmp_path / "x.npz"), "--write-card"]) == 2
    assert "--write-card" in capsys.readouterr().err
