"""Class conditioning and classifier-free guidance (Ho & Salimans 2022): the network, the guided
prediction, the samplers on a distribution whose optimal denoiser is known, training and the CLIs."""

import pytest
import torch
from tiny import TINY as SHARED_TINY

from ddpm_lib import sample as sample_cli
from ddpm_lib.checkpoints import load_checkpoint, load_ema_model
from ddpm_lib.config import TrainConfig
from ddpm_lib.diffusion import GaussianDiffusion, classifier_free
from ddpm_lib.sampling import generate, trajectory
from ddpm_lib.schedules import make_betas
from ddpm_lib.training import Trainer
from ddpm_lib.unet import build_model

TINY = dict(SHARED_TINY, num_sample_images=6, precision="fp32", class_cond=True)


def _conditional_unet(num_classes=6):
    torch.manual_seed(0)
    model = build_model("tiny", image_size=16, num_classes=num_classes).eval()
    # a trained-looking class embedding, so that labels change the output visibly
    with torch.no_grad():
        model.class_emb.weight.normal_(0, 3)
    return model


def test_unet_label_enters_the_time_embedding():
    model = _conditional_unet()
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([0, 10, 50, 99])
    with torch.no_grad():
        a = model(x, t, torch.tensor([0, 1, 2, 3]))
        b = model(x, t, torch.tensor([3, 1, 2, 0]))
        null = model(x, t, torch.full((4,), 6))
        none = model(x, t)
    assert a.shape == x.shape
    assert torch.equal(null, none), "no labels must mean the null label"
    assert torch.equal(a[1:3], b[1:3]) and not torch.allclose(a[0], b[0]), (
        "each image must see its own label"
    )
    assert model.class_emb.num_embeddings == 7  # six classes and the null label


@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.tensor([0, 7]), "lie in"),
        (torch.tensor([0.0, 1.0]), "integers"),
        (torch.tensor([0, 1, 2]), "shape"),
    ],
)
def test_unet_refuses_bad_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        _conditional_unet()(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), labels)


def test_unconditional_unet_refuses_labels():
    model = build_model("tiny", image_size=16)
    with pytest.raises(ValueError, match="without classes"):
        model(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class-conditional"):
        classifier_free(model, torch.tensor([0, 1]), 2.0)


class _Counting(torch.nn.Module):
    """Wraps a conditional network and records the batch size of every call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.num_classes, self.batches = net, net.num_classes, []

    def forward(self, x, t, y=None):
        self.batches.append(len(x))
        return self.net(x, t, y)


def test_guided_prediction_is_one_batched_pass_of_the_paper_formula():
    model = _Counting(_conditional_unet())
    x, t, y = torch.randn(3, 3, 16, 16), torch.tensor([5, 40, 90]), torch.tensor([0, 4, 5])
    with torch.no_grad():
        cond, uncond = model.net(x, t, y), model.net(x, t)
        model.batches.clear()
        guided = classifier_free(model, y, 2.5)(x, t)
        assert model.batches == [6], (
            "the conditional and unconditional predictions must come from one forward pass"
        )
        assert torch.allclose(guided, 3.5 * cond - 2.5 * uncond, atol=1e-5)
        model.batches.clear()
        plain = classifier_free(model, y, 0.0)(x, t)
        assert model.batches == [3] and torch.equal(plain, cond), (
            "w = 0 is the conditional model alone, exactly"
        )
        model.batches.clear()
        t_out, t_in = torch.full((3,), 20), torch.full((3,), 60)
        assert torch.equal(
            classifier_free(model, y, 2.5, interval=(50, 70))(x, t_out), model.net(x, t_out, y)
        )
        assert torch.allclose(
            classifier_free(model, y, 2.5, interval=(50, 70))(x, t_in),
            3.5 * model.net(x, t_in, y) - 2.5 * model.net(x, t_in),
            atol=1e-5,
        )
        assert model.batches[:2] == [3, 6], (
            "outside the interval one pass over B images, inside one over 2B"
        )


@pytest.mark.slow
def test_scale_zero_sampling_reproduces_the_conditional_model_exactly():
    model = _conditional_unet()
    d = GaussianDiffusion(make_betas("linear", 30))  # any T: the two runs must agree bit for bit
    y = torch.tensor([3, 3, 0, 5])

    def fixed(x, t):
        return model(x, t, y)

    for sampler, steps, eta in [("ddpm", None, 0.0), ("ddim", 10, 0.0), ("ddim", 10, 1.0)]:
        a = d.sample(
            model,
            (4, 3, 16, 16),
            sampler,
            steps,
            eta,
            generator=torch.Generator().manual_seed(1),
            labels=y,
        )
        b = d.sample(
            fixed, (4, 3, 16, 16), sampler, steps, eta, generator=torch.Generator().manual_seed(1)
        )
        assert torch.equal(a, b), sampler


class _TwoGaussians(torch.nn.Module):
    """The optimal eps for 1-pixel data: class 0 ~ N(-m, s^2), class 1 ~ N(+m, s^2), equally likely (label 2: null).

    m = s = 0.25 keeps the data inside [-1, 1] (the sampler clamps its output there) but for 0.1 %.

    q_t(x | y) = N(sqrt(ab) m_y, ab s^2 + 1 - ab); eps*(x, t, y) = -sqrt(1 - ab) * score; the null label gets the
    score of the mixture (the responsibilities times each class's score).
    """

    num_classes = 2

    def __init__(self, diffusion, m=0.25, s=0.25):
        super().__init__()
        self.ab, self.m, self.s = diffusion.alphas_cumprod.float(), m, s

    def forward(self, x, t, y=None):
        ab = self.ab[t].view(-1, 1, 1, 1)
        var = ab * self.s**2 + 1 - ab
        means = [-self.m * ab.sqrt(), self.m * ab.sqrt()]
        scores = torch.stack([-(x - mu) / var for mu in means])  # (2, B, 1, 1, 1)
        logp = torch.stack([-((x - mu) ** 2) / (2 * var) for mu in means])
        resp = torch.softmax(logp, dim=0)
        y = torch.full((len(x),), 2) if y is None else y
        pick = torch.stack([scores[0], scores[1], (resp * scores).sum(0)])  # class 0, class 1, null
        score = pick[y, torch.arange(len(x))]
        return -(1 - ab).sqrt() * score


def test_guidance_moves_samples_towards_their_class_on_an_analytic_model():
    d = GaussianDiffusion(make_betas("linear", 1000))  # bar-alpha_T ~ 4e-5: x_T ~ N(0, 1) is q_T
    model = _TwoGaussians(d)
    n = 4000
    y = torch.ones(n, dtype=torch.long)  # ask for class 1, N(0.25, 0.25^2)
    accuracy, means = [], []
    for w in (0.0, 1.0, 4.0):
        x = d.sample(
            model,
            (n, 1, 1, 1),
            "ddpm",
            generator=torch.Generator().manual_seed(0),
            labels=y,
            guidance_scale=w,
            clip_denoised=False,
        ).flatten()
        accuracy.append((x > 0).float().mean().item())
        means.append(x.mean().item())
    # w = 0 samples the class itself: P(x > 0) = Phi(1) = 0.841, mean 0.25
    assert accuracy[0] == pytest.approx(0.841, abs=0.02) and means[0] == pytest.approx(
        0.25, abs=0.015
    )
    # guidance sharpens towards the class: more samples on its side of the boundary, pushed away from the other class
    assert accuracy[2] > accuracy[1] > accuracy[0] + 0.03
    assert means[2] > means[1] > means[0]


def test_generate_checks_labels_and_guidance():
    model, d = _conditional_unet(), GaussianDiffusion(make_betas("linear", 100))
    with pytest.raises(ValueError, match="lie in"):
        generate(model, d, 2, 16, num_steps=2, labels=torch.tensor([0, 6]), precision="fp32")
    with pytest.raises(ValueError, match="one per sample"):
        generate(model, d, 2, 16, num_steps=2, labels=torch.tensor([0]), precision="fp32")
    with pytest.raises(ValueError, match="needs labels"):
        generate(model, d, 2, 16, num_steps=2, guidance_scale=2.0, precision="fp32")
    with pytest.raises(ValueError, match="guidance_scale"):
        generate(
            model,
            d,
            2,
            16,
            num_steps=2,
            labels=torch.tensor([0, 1]),
            guidance_scale=-1.0,
            precision="fp32",
        )
    out = generate(
        model,
        d,
        3,
        16,
        num_steps=3,
        labels=torch.tensor([0, 1, 2]),
        guidance_scale=2.0,
        batch_size=2,
        precision="fp32",
    )
    assert out.images.shape == (3, 3, 16, 16) and torch.isfinite(out.images).all()


@pytest.mark.slow
def test_class_conditional_training_resumes_exactly_and_samples_by_name(tmp_path, capsys):
    cfg = TrainConfig.cpu_demo(**{**TINY, "checkpoint_every": 3}, max_steps=6)
    full = Trainer(cfg, tmp_path / "full", progress=False)
    assert (full.config.num_classes, full.config.class_names[3]) == (6, "pickup")
    full.fit()
    part = Trainer(cfg, tmp_path / "part", progress=False)
    part.fit(max_steps=3)
    resumed = Trainer(cfg, tmp_path / "part", resume=True, progress=False)
    resumed.fit()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), (
        "the label dropout must resume exactly (it draws from the checkpointed RNG)"
    )

    ckpt = tmp_path / "full" / "checkpoint.pt"
    assert load_checkpoint(ckpt)["model_args"]["num_classes"] == 6
    model, _, config = load_ema_model(ckpt)
    assert model.num_classes == 6 and config.class_names[5] == "van"
    out = tmp_path / "s.npz"
    args = [
        "--checkpoint",
        str(ckpt),
        "--steps",
        "2",
        "--num-samples",
        "3",
        "--precision",
        "fp32",
        "--out",
        str(out),
    ]
    assert sample_cli.main([*args, "--class", "pickup", "0", "--guidance-scale", "3"]) == 0
    assert sample_cli.main([*args, "--class", "truck"]) == 2
    assert "unknown class 'truck'" in capsys.readouterr().err
    assert sample_cli.main([*args, "--class", "6"]) == 2


def test_label_dropout_rate(tmp_path, monkeypatch):
    trainer = Trainer(
        TrainConfig.cpu_demo(**{**TINY, "batch_size": 64, "num_images": 128}, p_uncond=0.25),
        None,
        progress=False,
    )
    seen = []

    def loss(model, x0, loss_type, labels, **options):
        seen.append(labels)
        return sum(p.sum() for p in model.parameters()) * 0

    monkeypatch.setattr(trainer.diffusion, "_training_loss", loss)
    for _ in range(20):
        trainer.train_step()
    null = torch.cat(seen) == 6
    assert null.float().mean().item() == pytest.approx(0.25, abs=0.05)


def test_class_cond_needs_labelled_data_and_a_unet(tmp_path):
    from PIL import Image

    for i in range(10):
        # a flat folder: one class
        Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(tmp_path / f"{i}.png")
    with pytest.raises(ValueError, match="at least two classes"):
        Trainer(
            TrainConfig.cpu_demo(
                **{**TINY, "num_images": None}, dataset="folder", data_root=str(tmp_path)
            ),
            None,
            progress=False,
        )
    with pytest.raises(ValueError, match="DDPM U-Net"):
        TrainConfig.cpu_demo(**{**TINY, "model": "simple"})
    # the shipped model is unconditional
    assert sample_cli.main(["--class", "pickup", "--out", str(tmp_path / "x.png")]) == 2


def test_class_cond_reads_the_classes_of_an_image_folder(tmp_path):
    from PIL import Image

    for name, colour in (("coupe", (200, 0, 0)), ("wagon", (0, 0, 200))):
        (tmp_path / name).mkdir()
        for i in range(8):
            Image.new("RGB", (16, 16), tuple(c // (i + 1) for c in colour)).save(
                tmp_path / name / f"{i}.png"
            )
    cfg = TrainConfig.cpu_demo(
        **{**TINY, "num_images": None}, dataset="folder", data_root=str(tmp_path), max_steps=2
    )
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert (trainer.config.num_classes, trainer.config.class_names) == (2, ("coupe", "wagon"))
    trainer.fit()
    model, _, config = load_ema_model(tmp_path / "run" / "checkpoint.pt")
    assert model.class_emb.num_embeddings == 3 and sample_cli.parse_classes(
        ["wagon", "0"], config.class_names, 2, 3
    ).tolist() == [1, 0, 1]


def test_trajectory_and_generate_pass_the_guidance_interval_on():
    model, d = _Counting(_conditional_unet()), GaussianDiffusion(make_betas("linear", 100))
    labels = torch.tensor([0, 1])
    trajectory(
        model,
        d,
        2,
        16,
        sampler="ddim",
        num_steps=4,
        labels=labels,
        guidance_scale=2.0,
        guidance_interval=(0, 40),
        precision="fp32",
    )
    visited = d.sampling_timesteps("ddim", 4)  # 99, 66, 33, 0: two steps inside [0, 40]
    assert sorted(model.batches) == sorted(4 if t <= 40 else 2 for t in visited)
    model.batches.clear()
    generate(
        model,
        d,
        2,
        16,
        num_steps=4,
        labels=labels,
        guidance_scale=2.0,
        guidance_interval=(50, 99),
        precision="fp32",
    )
    assert sorted(model.batches) == sorted(4 if t >= 50 else 2 for t in visited)
