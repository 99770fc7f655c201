"""The tiny training run the tests share: 16 px toy cars, T = 100, a 2-level U-Net, seconds on a CPU."""

TINY = dict(
    model="tiny",
    image_size=16,
    num_images=64,
    batch_size=8,
    lr=2e-3,
    warmup_steps=5,
    ema_decay=0.99,
    num_timesteps=100,
    num_sample_images=4,
    sample_steps=5,
    log_every=2,
    checkpoint_every=1000,
)
