import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _private_precision_cache(tmp_path_factory):
    """Precision measurements made by the tests go to a cache of their own, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
    mp.delenv("DDPM_PRECISION", raising=False)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def one_thread():
    """For modules of small tensors (``pytestmark = pytest.mark.usefixtures("one_thread")``): with shared
    cores, one thread beats two waiting on each other at every op (often 10x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


class GaussianOracle:
    """The optimal noise predictor when every pixel of x_0 is independent N(mu, s^2).

    Then x_t ~ N(sqrt(ab) mu, ab s^2 + 1 - ab) and E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab).
    """

    def __init__(self, diffusion, mu: float, s: float):
        self.ab = diffusion.alphas_cumprod
        self.mu, self.s = mu, s
        self.calls: list[int] = []

    def __call__(self, x_t, t):
        self.calls.append(int(t[0]))
        ab = self.ab.to(x_t.dtype)[t].view(-1, *([1] * (x_t.dim() - 1)))
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * self.mu) / (ab * self.s**2 + 1 - ab)


@pytest.fixture
def oracle_cls():
    return GaussianOracle
