"""from_diffusers: a tiny random UNet2DModel in σ-space; σ-space Euler on the DDIM σ grid must reproduce
diffusers' own DDIMScheduler loop (η = 0) to float64 round-off, for ε-, v- and sample-prediction."""
import diffusers
import pytest
import torch

import scorelab as sl
from scorelab.nets.diffusers import ddim_sigmas, from_diffusers


def _euler(denoiser, x, sigmas):
    try:
        from scorelab.samplers import euler
    except ImportError:  # samplers module not present: the same formula, inline
        def euler(denoiser, x, sigmas):
            for s, s_next in zip(sigmas[:-1], sigmas[1:]):
                x = x + (s_next - s) * (x - denoiser(x, s)) / s
            return x
    return euler(denoiser, x, sigmas)


def _tiny_unet(num_class_embeds=None):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                                 num_class_embeds=num_class_embeds)
    # perturb the weights so that the output depends strongly on (x, t)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet.double().eval()


def _ddim_loop(unet, scheduler, x_T, n, **kw):
    scheduler.set_timesteps(n)
    x = x_T
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(x, t, **kw).sample
            x = scheduler.step(out, t, x, eta=0.0).prev_sample
    return x


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing,set_alpha_to_one", [("leading", True), ("trailing", False)])
def test_ddim_equals_euler_in_sigma_space(prediction, spacing, set_alpha_to_one):
    unet = _tiny_unet()
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", clip_sample=False,
                                    prediction_type=prediction, timestep_spacing=spacing,
                                    set_alpha_to_one=set_alpha_to_one, steps_offset=1 if spacing == "leading" else 0)
    n = 10
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = _ddim_loop(unet, sched, x_T, n)

    sigmas = ddim_sigmas(sched, n)
    assert (sigmas[1:] < sigmas[:-1]).all()
    assert (sigmas[-1] == 0) == set_alpha_to_one
    den = from_diffusers(unet, sched)
    alpha_T = 1 / torch.sqrt(1 + sigmas[0] ** 2)
    x = _euler(den, x_T / alpha_T, sigmas)                   # σ-space x = x_t / sqrt(ᾱ)
    out = x / torch.sqrt(1 + sigmas[-1] ** 2)                # back to the VP scale of the last step
    assert ref.abs().max() > 0.1
    # diffusers keeps alphas_cumprod in float32 and takes its square roots in float32: agreement to that round-off
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_denoiser_matches_prediction_conversion():
    """D(x, σ_t) at a trained timestep equals x0 computed by the scheduler's own formula (DDIM's
    pred_original_sample), for a class-conditional UNet too."""
    unet = _tiny_unet(num_class_embeds=3)
    sched = diffusers.DDPMScheduler(num_train_timesteps=100, prediction_type="v_prediction")
    den = from_diffusers(unet, sched)
    assert den.shape_ == (1, 8, 8)
    t = 37
    ac = sched.alphas_cumprod.double()[t]
    x_t = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 2])
    v = unet(x_t, torch.tensor(t), class_labels=y).sample
    x0 = ac.sqrt() * x_t - (1 - ac).sqrt() * v
    sigma = float(((1 - ac) / ac).sqrt())
    torch.testing.assert_close(den(x_t / ac.sqrt(), sigma, class_labels=y), x0, rtol=1e-9, atol=1e-9)


def test_bad_scheduler_and_inconsistent_grid():
    unet = _tiny_unet()
    with pytest.raises(TypeError, match="scheduler"):
        from_diffusers(unet, object())
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="linspace")
    with pytest.raises(ValueError, match="timestep_spacing"):
        ddim_sigmas(sched, 7)
    assert callable(sl.from_diffusers)
