"""Tests for kexue_lib.diffusion and kexue_lib.denoisers (DDPM, https://kexue.fm/archives/9119)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue_lib.denoisers import (ExactMixtureDenoiser, MLPDenoiser, SinusoidalTimeEmbedding, UNetDenoiser, eight_gaussian_centres,
                                eight_gaussians, mixture_eps, sinusoidal_embedding)
from kexue_lib.diffusion import DDPMSchedule, ddpm_loss, ddpm_loss_two_noise, ddpm_sample, ddpm_step, mmd2, train_ddpm


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: on a shared CPU, a second thread's synchronisation costs more than it brings."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


class Affine(torch.nn.Module):
    """A fixed, cheap eps-model: eps = tanh(x W + t/T)."""

    def __init__(self, d, T):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(d, d, generator=gen(1), dtype=torch.float64) / d)
        self.T = T

    def forward(self, x, t):
        return torch.tanh(x @ self.w.to(x.dtype) + t.to(x.dtype)[:, None] / self.T)


# ---- the schedule against plain float64 loops -------------------------------------------
def loop_schedule(betas):
    """alpha-bar, posterior variance and mean coefficients, one Python float at a time."""
    abar, out, prod = [], [], 1.0
    for b in betas:
        prev = prod
        prod *= 1 - b
        abar.append(prod)
        out.append(((1 - prev) / (1 - prod) * b, math.sqrt(prev) * b / (1 - prod), math.sqrt(1 - b) * (1 - prev) / (1 - prod)))
    return abar, out


@pytest.mark.parametrize("schedule", ["linear", "cosine", "blog"])
def test_schedule_matches_loop(schedule):
    s = DDPMSchedule(T=200, schedule=schedule)
    abar, post = loop_schedule(s.betas.tolist())
    torch.testing.assert_close(s.alphas_cumprod, torch.tensor(abar, dtype=torch.float64), rtol=1e-12, atol=0)
    ref = torch.tensor(post, dtype=torch.float64)
    torch.testing.assert_close(s.posterior_variance, ref[:, 0], rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(s.posterior_mean_coef1, ref[:, 1], rtol=1e-12, atol=0)
    torch.testing.assert_close(s.posterior_mean_coef2, ref[:, 2], rtol=1e-12, atol=0)
    assert s.betas.dtype == torch.float64 and s.betas.shape == (200,)


def test_linear_and_blog_endpoints():
    s = DDPMSchedule()
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-4)
    b = DDPMSchedule(schedule="blog")
    torch.testing.assert_close(b.betas, 0.02 * torch.arange(1, 1001, dtype=torch.float64) / 1000)
    # the article: log of its alpha-bar_T (a square root of ours) is -5.0387, below the bound -0.005 (T + 1)
    assert 0.5 * math.log(b.alphas_cumprod[-1].item()) == pytest.approx(-5.0387, abs=1e-4)
    assert 0.5 * math.log(b.alphas_cumprod[-1].item()) < -0.005 * 1001


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 300), st.floats(1e-5, 0.05), st.floats(1e-3, 0.5), st.sampled_from(["linear", "cosine", "blog"]))
def test_schedule_invariants(T, b0, b1, schedule):
    s = DDPMSchedule(T=T, beta_start=b0, beta_end=b1, schedule=schedule)
    assert torch.all(s.alphas_cumprod > 0) and torch.all(s.alphas_cumprod < 1)
    assert torch.all(s.alphas_cumprod.diff() < 0)
    assert torch.all(s.posterior_variance <= s.betas * (1 + 1e-12)) and s.posterior_variance[0] == 0
    # posterior mean of q(x_{t-1}|x_t,x_0) is exact for x_t = q-chain without noise: coefficients sum properly
    lhs = s.posterior_mean_coef1 + s.posterior_mean_coef2 * s.alphas_cumprod.sqrt()
    torch.testing.assert_close(lhs, s.alphas_cumprod_prev.sqrt(), rtol=1e-9, atol=1e-12)


# ---- forward process --------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 998), st.integers(0, 10_000))
def test_two_steps_merge_into_one(t, seed):
    """q_step twice == q_sample once with the merged noise (the article's superposition of Gaussians)."""
    s = DDPMSchedule()
    g = gen(seed)
    x0, e1, e2 = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    xa = s.q_sample(x0, t, e1)                               # x_t
    xb = s.q_step(xa, t + 1, e2)                             # x_{t+1}
    a, ab_prev, ab = s.alphas[t + 1], s.alphas_cumprod[t], s.alphas_cumprod[t + 1]
    merged = (a.sqrt() * (1 - ab_prev).sqrt() * e1 + (1 - a).sqrt() * e2) / (1 - ab).sqrt()
    torch.testing.assert_close(xb, s.q_sample(x0, t + 1, merged), rtol=1e-12, atol=1e-12)


def test_q_sample_moments_and_dtype():
    s = DDPMSchedule()
    x0 = torch.full((200_000, 1), 1.5, dtype=torch.float64)
    xt = s.q_sample(x0, 300, generator=gen())
    assert xt.dtype == torch.float64
    ab = s.alphas_cumprod[300].item()
    assert xt.mean().item() == pytest.approx(1.5 * math.sqrt(ab), abs=4 * math.sqrt((1 - ab) / 200_000))
    assert xt.var().item() == pytest.approx(1 - ab, rel=0.01)
    assert s.q_sample(x0[:4].float(), 3).dtype == torch.float32


def test_posterior_is_bayes_rule():
    s = DDPMSchedule(T=50, schedule="cosine")
    g = gen(3)
    x0, xt = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 2, 10, 20, 40, 49])
    mean, var = s.q_posterior(x0, xt, t)
    a, b, abp = s.alphas[t][:, None], s.betas[t][:, None], s.alphas_cumprod_prev[t][:, None]
    prec = a / b + 1 / (1 - abp)                              # product of two Gaussians in x_{t-1}
    torch.testing.assert_close(var, 1 / prec, rtol=1e-12, atol=0)
    torch.testing.assert_close(mean, (a.sqrt() * xt / b + abp.sqrt() * x0 / (1 - abp)) / prec, rtol=1e-10, atol=1e-12)
    mean0, var0 = s.q_posterior(x0, xt, 0)                   # at t = 0 the posterior is the point x_0
    torch.testing.assert_close(mean0, x0)
    torch.testing.assert_close(var0, torch.zeros_like(var0))


# ---- losses ---------------------------------------------------------------------------------
def test_simple_loss_zero_for_oracle():
    s = DDPMSchedule(T=100)
    c = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    oracle = lambda x, t: (x - s.gather("sqrt_alphas_cumprod", t, x) * c) / s.gather("sqrt_one_minus_alphas_cumprod", t, x)  # noqa: E731
    loss = ddpm_loss(oracle, c.expand(64, 2), s, generator=gen())
    assert loss.item() < 1e-20
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    noise = torch.randn(64, 2, generator=gen(1), dtype=torch.float64)
    assert ddpm_loss(zero, c.expand(64, 2), s, noise=noise, generator=gen()).item() == pytest.approx(noise.square().mean().item())


def test_two_noise_loss_averages_to_simple_loss_exactly():
    """Given eps, the two-noise loss is quadratic in omega; omega = +-1 averages to its expectation exactly."""
    s, model = DDPMSchedule(T=100), Affine(3, 100)
    g = gen(5)
    x0, eps = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)
    t = torch.randint(0, 100, (8,), generator=g)
    t[0] = 0
    a, ab, abp = (s.gather(n, t, x0) for n in ("alphas", "alphas_cumprod", "alphas_cumprod_prev"))
    sb, sbp, sbt = (1 - ab).sqrt(), (1 - abp).sqrt(), (1 - a).sqrt()
    losses = []
    for omega in (torch.ones_like(x0), -torch.ones_like(x0)):
        e_prev = (a.sqrt() * sbp * eps + sbt * omega) / sb   # invert (eps, omega) -> (eps', eps_t)
        e_t = (sbt * eps - a.sqrt() * sbp * omega) / sb
        losses.append(ddpm_loss_two_noise(model, x0, s, t=t, noise_prev=e_prev, noise_t=e_t, reduction="none"))
    simple = ddpm_loss(model, x0, s, t=t, noise=eps, reduction="none")
    torch.testing.assert_close((losses[0] + losses[1]) / 2, simple, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(losses[0], simple)  # a single draw differs: the extra noise is real


# ---- sampler: reference loop, regression and peer equivalence ----------------------------
def plain_step(s, eps, t, xt, noise, variance):
    """Posterior mean at the predicted x0, float64 Python scalars; noise only for t > 0."""
    ab, abp, b = s.alphas_cumprod[t].item(), s.alphas_cumprod_prev[t].item(), s.betas[t].item()
    x0 = (xt - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    mean = math.sqrt(abp) * b / (1 - ab) * x0 + math.sqrt(1 - b) * (1 - abp) / (1 - ab) * xt
    var = {"small": (1 - abp) / (1 - ab) * b, "large": b, "zero": 0.0}[variance]
    return mean + (math.sqrt(var) * noise if t > 0 else 0)


@pytest.mark.parametrize("variance", ["small", "large", "zero"])
@pytest.mark.parametrize("t", [0, 1, 17, 499, 999])
def test_step_matches_plain_reference(variance, t):
    s = DDPMSchedule()
    g = gen(t)
    xt, eps, z = (torch.randn(4, 2, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(ddpm_step(s, eps, t, xt, z, variance=variance), plain_step(s, eps, t, xt, z, variance),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variance", ["small", "large", "zero"])
def test_last_step_adds_no_noise(variance):
    """Regression: a popular sampler adds sigma_1 z at the final step; ours returns the mean there."""
    s = DDPMSchedule()
    assert s.sampler_coefficients(variance)[0, 2].item() == 0.0
    xt, eps = torch.randn(3, 2, generator=gen(1)), torch.randn(3, 2, generator=gen(2))
    a = ddpm_step(s, eps, 0, xt, torch.randn(3, 2, generator=gen(3)), variance=variance)
    b = ddpm_step(s, eps, 0, xt, torch.randn(3, 2, generator=gen(4)), variance=variance)
    assert torch.equal(a, b)
    one = DDPMSchedule(T=1)                                   # a one-step sampler is deterministic given x_T
    model = Affine(2, 1)
    x_T = torch.randn(5, 2, generator=gen(7), dtype=torch.float64)
    out1 = ddpm_sample(model, None, one, variance=variance, x_T=x_T, generator=gen(8))
    out2 = ddpm_sample(model, None, one, variance=variance, x_T=x_T, generator=gen(9))
    assert torch.equal(out1, out2)


def test_sampler_fast_path_equals_step_loop():
    s, model = DDPMSchedule(T=60, schedule="cosine"), Affine(2, 60)
    fast, snaps = ddpm_sample(model, (7, 2), s, generator=gen(11), dtype=torch.float64, keep=(60, 30, 0))
    g = gen(11)
    x = torch.randn(7, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(snaps[60], x)
    for t in reversed(range(60)):
        x = ddpm_step(s, model(x, torch.full((7,), t)), t, x, generator=g)
        if t == 30:
            torch.testing.assert_close(snaps[30], x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast, x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(snaps[0], fast)


@pytest.mark.parametrize("kind", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_schedule_matches_diffusers(kind):
    diffusers = pytest.importorskip("diffusers")
    ours, theirs = DDPMSchedule(schedule=kind[0]), diffusers.DDPMScheduler(beta_schedule=kind[1])
    torch.testing.assert_close(ours.betas.float(), theirs.betas, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(ours.alphas_cumprod.float(), theirs.alphas_cumprod, rtol=2e-4, atol=1e-7)
    steps = list(range(1, 1000, 9))
    post = torch.stack([theirs._get_variance(t) for t in steps])
    # diffusers recovers beta_t as 1 - abar_t / abar_{t-1} in float32: a few 1e-4 relative error at small t
    torch.testing.assert_close(ours.posterior_variance[steps].float(), post, rtol=1e-3, atol=1e-9)
    x0, noise = torch.randn(6, 1, 8, 8, generator=gen(0)), torch.randn(6, 1, 8, 8, generator=gen(1))
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    torch.testing.assert_close(ours.q_sample(x0, t, noise), theirs.add_noise(x0, noise, t), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variance,peer", [("small", "fixed_small"), ("large", "fixed_large")])
@pytest.mark.parametrize("t", [999, 600, 100, 1, 0])
def test_one_step_matches_diffusers(variance, peer, t):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(variance_type=peer, clip_sample=False)
    ours = DDPMSchedule()
    xt, eps = torch.randn(4, 1, 8, 8, generator=gen(2)), torch.randn(4, 1, 8, 8, generator=gen(3))
    theirs = sched.step(eps, t, xt, generator=gen(99)).prev_sample
    mine = ddpm_step(ours, eps, t, xt, variance=variance, generator=gen(99))  # same generator, same noise draw
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=2e-5)


def test_whole_chain_matches_diffusers():
    """The whole ancestral chain, x_T -> x_0, equals diffusers' loop given the same x_T, model and generator."""
    diffusers = pytest.importorskip("diffusers")
    T = 40
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_start=1e-3, beta_end=0.2, clip_sample=False)
    model = Affine(3, T)
    x_T = torch.randn(5, 3, generator=gen(21))
    x, g = x_T, gen(22)
    for t in sched.timesteps:
        x = sched.step(model(x, torch.full((5,), int(t))), t, x, generator=g).prev_sample
    mine = ddpm_sample(model, None, DDPMSchedule(T=T, beta_start=1e-3, beta_end=0.2), x_T=x_T, generator=gen(22))
    torch.testing.assert_close(mine, x, rtol=1e-4, atol=1e-4)


# ---- networks, metric, training ---------------------------------------------------------------
def test_sinusoidal_embedding_values():
    e = sinusoidal_embedding(torch.tensor([0, 3]), 8)
    torch.testing.assert_close(e[0], torch.tensor([0.0, 1.0] * 4))
    torch.testing.assert_close(e[1, :2], torch.tensor([math.sin(3.0), math.cos(3.0)]))
    torch.testing.assert_close(e[1, 6:], torch.tensor([math.sin(3e-3), math.cos(3e-3)]))
    assert SinusoidalTimeEmbedding(8, hidden=16)(torch.tensor([1, 2, 3])).shape == (3, 16)


def test_networks_shapes_and_gradients():
    mlp, unet = MLPDenoiser(3, hidden=16, depth=2), UNetDenoiser(1, channels=(8, 16), time_dim=8)
    assert mlp(torch.randn(5, 3), torch.arange(5)).shape == (5, 3)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    y = unet(x, torch.tensor([0, 999]))
    assert y.shape == x.shape
    y.square().sum().backward()
    assert all(p.grad is not None for p in unet.parameters())
    assert UNetDenoiser(3, channels=(8, 16, 16))(torch.randn(1, 3, 16, 12), torch.tensor([4])).shape == (1, 3, 16, 12)
    assert mlp.double()(torch.randn(2, 3, dtype=torch.float64), torch.tensor([1, 2])).dtype == torch.float64


def test_mmd_matches_loop_and_separates():
    g = gen(0)
    x, y = torch.randn(20, 2, generator=g, dtype=torch.float64), torch.randn(15, 2, generator=g, dtype=torch.float64) + 1
    k = lambda a, b: sum(math.exp(-((a - b) ** 2).sum().item() / (2 * h * h)) for h in (0.5, 1.0))  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(20) for j in range(20) if i != j) / (20 * 19)
    yy = sum(k(y[i], y[j]) for i in range(15) for j in range(15) if i != j) / (15 * 14)
    xy = sum(k(x[i], y[j]) for i in range(20) for j in range(15)) / (20 * 15)
    assert mmd2(x, y, bandwidths=(0.5, 1.0)).item() == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    a, b = eight_gaussians(800, generator=gen(1))[0], eight_gaussians(800, generator=gen(2))[0]
    assert abs(mmd2(a, b).item()) < 0.01 < mmd2(a, 0.5 * b).item()


def test_training_reduces_loss_and_improves_samples():
    torch.manual_seed(0)
    s, model = DDPMSchedule(T=100, beta_start=1e-3, beta_end=0.15), MLPDenoiser(hidden=32, depth=1)
    data, _ = eight_gaussians(2048, generator=gen(0))
    before = ddpm_sample(model, (500, 2), s, generator=gen(1))
    losses = train_ddpm(model, data, s, steps=200, batch_size=128, lr=5e-3, generator=gen(2))
    assert sum(losses[-50:]) / 50 < 0.8 * sum(losses[:50]) / 50
    after = ddpm_sample(model, (500, 2), s, generator=gen(1))
    ref = eight_gaussians(500, generator=gen(3))[0]
    assert mmd2(after, ref).item() < 0.5 * mmd2(before, ref).item()


def test_mlp_without_time_input_ignores_t():
    torch.manual_seed(0)
    with_t, without_t = MLPDenoiser(2, hidden=16, depth=1), MLPDenoiser(2, hidden=16, depth=1, time_input=False)
    x = torch.randn(6, 2)
    assert not torch.allclose(with_t(x, torch.zeros(6, dtype=torch.long)), with_t(x, torch.full((6,), 500)))
    torch.testing.assert_close(without_t(x, torch.zeros(6, dtype=torch.long)), without_t(x, torch.full((6,), 500)), rtol=0, atol=0)
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n_params(with_t) - n_params(without_t) == 32 * 16 + 16      # only the time projection is missing
    with pytest.raises(ValueError):
        MLPDenoiser(2, time_input=1)


def test_eight_gaussian_centres_match_the_sampler():
    x, k = eight_gaussians(4000, std=1e-6, generator=gen(0), dtype=torch.float64)
    torch.testing.assert_close(x, eight_gaussian_centres()[k], atol=1e-4, rtol=0)


def test_mixture_eps_matches_quadrature_1d():
    # E[eps | x_t] = int eps(x0) p(x0) N(x_t; sqrt(ab) x0, 1 - ab) dx0 / int p(x0) N(...) dx0, by the trapezoid rule
    centres, w, std = torch.tensor([[-2.0], [0.5], [3.0]], dtype=torch.float64), torch.tensor([0.2, 0.5, 0.3]), 0.4
    x0 = torch.linspace(-8.0, 9.0, 200_001, dtype=torch.float64)
    prior = sum(wk * torch.exp(-(x0 - ck) ** 2 / (2 * std**2)) for wk, ck in zip(w.tolist(), centres[:, 0].tolist()))
    for ab in (0.9, 0.3, 0.02):
        xt = torch.linspace(-3.0, 3.0, 13, dtype=torch.float64)
        lik = torch.exp(-(xt[:, None] - math.sqrt(ab) * x0) ** 2 / (2 * (1 - ab)))          # (13, grid)
        eps = (xt[:, None] - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        ref = torch.trapezoid(eps * prior * lik, x0, dim=1) / torch.trapezoid(prior * lik, x0, dim=1)
        got = mixture_eps(xt[:, None], ab, centres, std, weights=w)[:, 0]
        torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-9)


def test_exact_mixture_denoiser_is_the_regression_of_eps():
    # Monte Carlo in 2-D: the residual eps - E[eps | x_t] has mean 0 and is uncorrelated with x_t; the exact
    # predictor's loss is below that of the same predictor scaled by 0.9
    s = DDPMSchedule()
    model = ExactMixtureDenoiser(s, eight_gaussian_centres(), 0.1)
    g = gen(3)
    x0, _ = eight_gaussians(200_000, generator=g, dtype=torch.float64)
    t = torch.randint(0, s.T, (x0.shape[0],), generator=g)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    xt = s.q_sample(x0, t, eps)
    r = eps - model(xt, t)
    for stat in (r, r * xt, r * xt.flip(1)):
        se = stat.std(0) / math.sqrt(stat.shape[0])
        assert (stat.mean(0).abs() < 4 * se).all()
    assert r.square().mean() < (eps - 0.9 * model(xt, t)).square().mean()
    per_t = model(xt[:5], t[:5])
    one_by_one = torch.cat([model(xt[i:i + 1], t[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(per_t, one_by_one, rtol=0, atol=1e-15)
    for bad in (lambda: model(xt[:4], t[:3]), lambda: model(xt[:4], torch.full((4,), s.T)),
                lambda: mixture_eps(xt[:4], 0.0, eight_gaussian_centres(), 0.1),
                lambda: mixture_eps(xt[:4], 0.5, eight_gaussian_centres()[:, :1], 0.1),
                lambda: mixture_eps(xt[:4], 0.5, eight_gaussian_centres(), 0.1, weights=torch.ones(3)),
                lambda: ExactMixtureDenoiser(object(), eight_gaussian_centres(), 0.1),
                lambda: eight_gaussian_centres(0.0)):
        with pytest.raises(ValueError):
            bad()


# ---- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [dict(T=0), dict(T=2.5), dict(beta_start=0.0), dict(beta_end=1.0), dict(beta_end=-1),
                                    dict(schedule="quadratic"), dict(schedule="cosine", max_beta=1.5),
                                    dict(schedule="cosine", cosine_s=-1.0), dict(T=True)])
def test_bad_schedule(kwargs):
    with pytest.raises(ValueError):
        DDPMSchedule(**kwargs)


def test_bad_inputs():
    s, model = DDPMSchedule(T=10), Affine(2, 10)
    x = torch.randn(4, 2)
    bad = [
        lambda: s.q_sample(x, 10),                             # t out of range
        lambda: s.q_sample(x, -1),
        lambda: s.q_sample(x, torch.tensor([0.5] * 4)),        # non-integer t
        lambda: s.q_sample(x, torch.tensor([1, 2])),           # wrong number of timesteps
        lambda: s.q_sample(x, 1, torch.randn(4, 3)),           # noise shape
        lambda: s.q_sample(torch.randn(4), 1),                 # unbatched
        lambda: s.q_sample(torch.ones(4, 2, dtype=torch.long), 1),
        lambda: s.q_sample(x.numpy(), 1),
        lambda: s.q_posterior(x, torch.randn(4, 3), 1),
        lambda: s.sampler_coefficients("medium"),
        lambda: ddpm_loss(model, x, s, reduction="sum"),
        lambda: ddpm_step(s, torch.randn(4, 3), 1, x),
        lambda: ddpm_step(s, x, 10, x),
        lambda: ddpm_sample(model, (0, 2), s),
        lambda: ddpm_sample(model, None, s),
        lambda: ddpm_sample(model, (4, 2), s, variance="huge"),
        lambda: mmd2(x, torch.randn(4, 3)),
        lambda: mmd2(x[:1], x),
        lambda: mmd2(x, x, bandwidths=(0.0,)),
        lambda: train_ddpm(model, x, s, steps=0),
        lambda: train_ddpm(model, x, s, steps=1, lr=-1.0),
        lambda: MLPDenoiser(2)(torch.randn(4, 3), torch.arange(4)),
        lambda: MLPDenoiser(2)(x, torch.arange(3)),
        lambda: MLPDenoiser(0),
        lambda: UNetDenoiser(1)(torch.randn(2, 1, 7, 8), torch.arange(2)),
        lambda: UNetDenoiser(1)(torch.randn(2, 2, 8, 8), torch.arange(2)),
        lambda: UNetDenoiser(1, channels=(12, 16)),
        lambda: sinusoidal_embedding(torch.arange(3), 7),
        lambda: sinusoidal_embedding(torch.zeros(3, 1), 8),
        lambda: eight_gaussians(0),
        lambda: eight_gaussians(5, std=0.0),
    ]
    for i, f in enumerate(bad):
        with pytest.raises(ValueError):
            f()
            pytest.fail(f"case {i} did not raise")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_follows_input():
    s, dev = DDPMSchedule(), torch.device("cuda")
    model = MLPDenoiser(hidden=16, depth=1).to(dev)
    out = ddpm_sample(model, (8, 2), s, device=dev, generator=gen())
    assert out.device.type == "cuda"
    assert ddpm_loss(model, torch.randn(8, 2, device=dev), s, generator=gen()).device.type == "cuda"
