"""ELS / LS, PSPC and Wiener: vectorised models against slow loop references in float64 on tiny data,
exact limits (full-image patch = empirical denoiser, σ → ∞ = patch mean), exact translation equivariance."""
import argparse
import math

import pytest
import torch

import scorelab as sl
from scorelab.models import load as load_model
from scorelab.models import local_reference as ref
from scorelab.models.local import ELS, PSPC, PatchSchedule, Wiener, patch_index, position_classes

F64 = torch.float64


@pytest.fixture(scope="module")
def tiny():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(20, 2, 6, 6, generator=g, dtype=F64)
    x = torch.randn(3, 2, 6, 6, generator=g, dtype=F64)
    return data, x


def empirical(data, x, sigma):
    """The project's streamed exact empirical denoiser, itself checked against the float64 brute force."""
    out = sl.Empirical(data)(x, sigma)
    torch.testing.assert_close(out, ref.empirical_brute(data, x, sigma), rtol=0, atol=1e-10)
    return out


SIGMAS = torch.tensor([0.3, 1.0, 2.5], dtype=F64)


@pytest.mark.parametrize("border", ["circular", "zero"])
@pytest.mark.parametrize("equivariant", [True, False])
@pytest.mark.parametrize("p", [1, 3, 5])
def test_els_equals_loop_reference(tiny, border, equivariant, p):
    data, x = tiny
    model = ELS(data, p, equivariant=equivariant, border=border, chunk_size=4000)  # several chunks and row blocks
    want = ref.els_loop(data, x, SIGMAS, p, equivariant=equivariant, border=border)
    torch.testing.assert_close(model(x, SIGMAS), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("border", ["circular", "zero", "valid"])
@pytest.mark.parametrize("equivariant", [True, False])
@pytest.mark.parametrize("p", [3, 5])
def test_pspc_equals_loop_reference(tiny, border, equivariant, p):
    data, x = tiny
    model = PSPC(data, p, equivariant=equivariant, border=border, chunk_size=4000)
    want = ref.pspc_loop(data, x, SIGMAS, p, equivariant=equivariant, border=border)
    torch.testing.assert_close(model(x, SIGMAS), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls,loop", [(ELS, ref.els_loop), (PSPC, ref.pspc_loop)])
@pytest.mark.parametrize("equivariant", [True, False])
def test_streamed_without_a_bank_equals_loop_reference(tiny, cls, loop, equivariant):
    """dedup=False: no cached bank, every chunk is unfolded from the data (the memory-lean path)."""
    data, x = tiny
    for border in cls.borders:
        model = cls(data, 3, equivariant=equivariant, border=border, dedup=False, chunk_size=4000)
        want = loop(data, x, SIGMAS, 3, equivariant=equivariant, border=border)
        torch.testing.assert_close(model(x, SIGMAS), want, rtol=0, atol=1e-12)
        assert not any(k[0] in ("bank", "locations") for k in model._cache if isinstance(k, tuple))


def test_chunking_does_not_change_the_result(tiny):
    data, x = tiny
    a = ELS(data, 3, chunk_size=37)(x, 0.7)          # tiny blocks: many row blocks and chunks
    b = ELS(data, 3, chunk_size=10 ** 9)(x, 0.7)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


@pytest.mark.parametrize("cls,loop", [(ELS, ref.els_loop), (PSPC, ref.pspc_loop)])
def test_deduplicated_bank_counts_repeated_patches(tiny, cls, loop):
    data, x = tiny
    # repeated images and a constant image: many identical patches, entered once with weight = multiplicity
    rep = torch.cat([data[:4], data[:4], data[:4], torch.full((3, 2, 6, 6), -1.0, dtype=F64)])
    for border in ("circular", "zero"):
        want = loop(rep, x, SIGMAS, 3, border=border)
        dedup = cls(rep, 3, border=border)
        torch.testing.assert_close(dedup(x, SIGMAS), want, rtol=0, atol=1e-12)
        bank = [v for k, v in dedup._cache.items() if k[0] == "bank"]
        assert bank and sum(b[0].shape[1] for b in bank) < rep.shape[0] * 36   # duplicates were merged
        for kw in (dict(dedup=False), dict(bank_limit=1)):                      # streamed without a bank
            torch.testing.assert_close(cls(rep, 3, border=border, **kw)(x, SIGMAS), want, rtol=0, atol=1e-12)


def test_unshifted_and_running_max_paths_equal_brute_force(monkeypatch):
    """stream_posterior_mean skips the running max when |logits| ≤ 600 is guaranteed (moderate σ) and keeps it
    otherwise; both equal the float64 softmax brute force, with multiplicities and several chunks."""
    from scorelab.models import local
    g = torch.Generator().manual_seed(3)
    phi, q = torch.randn(1, 500, 9, generator=g, dtype=F64), torch.randn(1, 40, 9, generator=g, dtype=F64)
    v, log_c = torch.randn(1, 500, 3, generator=g, dtype=F64), torch.randint(1, 5, (1, 500), generator=g).log().to(F64)
    bound = (float(phi.norm(dim=-1).max()), float(log_c.max()))
    taken = []
    monkeypatch.setattr(local, "_unshifted", lambda *a, _f=local._unshifted: taken.append("unshifted") or _f(*a))
    monkeypatch.setattr(local, "_running_max", lambda *a, _f=local._running_max: taken.append("max") or _f(*a))
    for sigma, path in [(0.5, "unshifted"), (3.0, "unshifted"), (0.05, "max")]:
        chunks = [(local.augment(phi[:, a:a + 64], log_c[:, a:a + 64]), v[:, a:a + 64]) for a in range(0, 500, 64)]
        d2 = ((q[0, :, None] - phi[0, None]) ** 2).sum(-1)
        want = torch.softmax(-d2 / (2 * sigma ** 2) + log_c, dim=-1) @ v[0]
        inv_var = torch.full((1, 40), sigma ** -2, dtype=F64)
        taken.clear()
        got = local.stream_posterior_mean(q, inv_var, chunks, phi_bound=bound)
        assert taken == [path]
        torch.testing.assert_close(got[0], want, rtol=0, atol=1e-12)
        torch.testing.assert_close(local.stream_posterior_mean(q, inv_var, chunks)[0], want, rtol=0, atol=1e-12)
        assert taken == [path, "max"]


@pytest.mark.parametrize("make", [
    lambda d: ELS(d, 1 + 2 * (d.shape[-1] - 1), equivariant=False, border="zero"),   # LS, patch ⊇ image
    lambda d: ELS(d, 1 + 2 * (d.shape[-1] - 1), equivariant=True, border="zero"),    # ELS, zero border
    lambda d: ELS(d, d.shape[-1], equivariant=False, border="circular"),             # LS, patch = image
    lambda d: PSPC(d, d.shape[-1], border="valid"),                                   # one patch = image
    lambda d: PSPC(d, 1 + 2 * (d.shape[-1] - 1), border="zero"),
], ids=["LS-zero", "ELS-zero", "LS-circular", "PSPC-valid", "PSPC-zero"])
def test_full_image_patch_is_the_empirical_denoiser(make):
    g = torch.Generator().manual_seed(1)
    data = torch.randn(20, 1, 5, 5, generator=g, dtype=F64)
    x = data[:4] + 0.8 * torch.randn(4, 1, 5, 5, generator=g, dtype=F64)
    for sigma in (0.2, 1.0, 5.0):
        torch.testing.assert_close(make(data)(x, sigma), empirical(data, x, sigma), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [ELS, PSPC])
def test_circular_models_are_translation_equivariant(tiny, cls):
    data, x = tiny
    model = cls(data, 3, border="circular")
    for shift in [(1, 0), (2, 3), (-1, 4)]:
        rolled = torch.roll(x, shifts=shift, dims=(2, 3))
        torch.testing.assert_close(model(rolled, 0.6), torch.roll(model(x, 0.6), shifts=shift, dims=(2, 3)),
                                   rtol=0, atol=1e-12)


def test_zero_border_interior_is_equivariant_but_the_border_is_not(tiny):
    data, x = tiny
    classes = position_classes(6, 6, 3, "zero")
    assert len(classes) == 9 and sorted(len(c) for c in classes) == [1, 1, 1, 1, 4, 4, 4, 4, 16]
    assert sum(len(c) for c in classes) == 36


def test_large_sigma_limit_is_the_mean_patch_centre(tiny):
    data, x = tiny
    # σ → ∞: uniform weights, so circular ELS returns the mean over all training pixels of each channel
    out = ELS(data, 3)(x, 1e7)
    torch.testing.assert_close(out, data.mean((0, 2, 3))[None, :, None, None].expand_as(out), rtol=0, atol=1e-9)
    # LS: the per-pixel mean image
    out = ELS(data, 3, equivariant=False)(x, 1e7)
    torch.testing.assert_close(out, data.mean(0, keepdim=True).expand_as(out), rtol=0, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("cls", [ELS, PSPC])
def test_small_sigma_returns_training_images_and_never_nan(cls, dtype):
    g = torch.Generator().manual_seed(2)
    data = torch.rand(30, 1, 8, 8, generator=g).mul(2).sub(1).to(dtype)
    model = cls(data, 5, border="zero")
    out = model(data[:5], 1e-4)
    torch.testing.assert_close(out, data[:5], rtol=0, atol=1e-6)
    noisy = data[:5] + 0.5 * torch.randn(5, 1, 8, 8, generator=g).to(dtype)
    for sigma in (1e-4, 1e-3, 1e3, 1e6):
        assert torch.isfinite(model(noisy, sigma)).all()
    assert torch.equal(model(noisy, 0.0), noisy)   # σ = 0: the observation itself


def test_per_sample_sigma_equals_separate_calls(tiny):
    data, x = tiny
    model = ELS(data, {0.0: 3, 1.0: 5})
    out = model(x, SIGMAS)
    for k, s in enumerate(SIGMAS.tolist()):
        torch.testing.assert_close(out[k:k + 1], model(x[k:k + 1], s), rtol=0, atol=1e-13)


def test_patch_schedule_forms():
    steps = PatchSchedule([(0.5, 5), (0.0, 3), (2.0, 9)])
    assert [steps(s) for s in (0.01, 0.5, 1.9, 2.0, 50.0)] == [3, 5, 5, 9, 9]
    assert PatchSchedule({1.0: 7, 3.0: 11})(0.1) == 7                 # below the first threshold
    assert PatchSchedule(lambda s: 3 if s < 1 else 5)(2.0) == 5
    assert PatchSchedule.parse("0:3,0.5:5").spec == [(0.0, 3), (0.5, 5)]
    assert PatchSchedule.parse("7").spec == 7
    with pytest.raises(ValueError, match="patch_size must be odd"):
        PatchSchedule(4)
    with pytest.raises(ValueError, match="patch_size must be odd"):
        PatchSchedule(lambda s: 2)(1.0)
    with pytest.raises(TypeError, match="patch_size"):
        PatchSchedule([("x", 3)])
    with pytest.raises(ValueError, match="patch_size"):
        PatchSchedule.parse("three")


def test_schedule_selects_the_fixed_size_model(tiny):
    data, x = tiny
    sched = ELS(data, [(0.0, 3), (1.0, 5)])
    torch.testing.assert_close(sched(x, 0.5), ELS(data, 3)(x, 0.5), rtol=0, atol=0)
    torch.testing.assert_close(sched(x, 1.5), ELS(data, 5)(x, 1.5), rtol=0, atol=0)


def test_bad_arguments_name_the_argument(tiny):
    data, x = tiny
    with pytest.raises(ValueError, match="border"):
        ELS(data, 3, border="valid")
    with pytest.raises(ValueError, match="border"):
        PSPC(data, 3, border="reflect")
    with pytest.raises(ValueError, match="patch_size 7 is larger"):
        PSPC(data, 7, border="valid")
    with pytest.raises(ValueError, match="data must be images"):
        ELS(torch.randn(5, 10), 3)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 2, 6, 6\]"):
        ELS(data, 3)(torch.randn(2, 1, 6, 6, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        ELS(data, 3)(x, -1.0)
    with pytest.raises(TypeError, match="equivariant"):
        ELS(data, 3, equivariant="yes")
    with pytest.raises(ValueError, match="n_data"):
        ELS(data, 3, n_data=0)
    with pytest.raises(ValueError, match="mode"):
        Wiener(data, mode="sparse")


def test_n_data_subset_is_seeded(tiny):
    data, _ = tiny
    a, b = ELS(data, 3, n_data=7, seed=3), ELS(data, 3, n_data=7, seed=3)
    assert a.data_.shape[0] == 7 and torch.equal(a.data_, b.data_)
    assert all(any(torch.equal(row, d) for d in data) for row in a.data_)


def test_patch_index_geometry():
    idx = patch_index(4, 5, 3, "circular")
    assert idx.shape == (20, 9) and int(idx[0, 0]) == 3 * 5 + 4       # (−1, −1) wraps to (3, 4)
    assert int(patch_index(4, 5, 3, "zero")[0, 0]) == 20               # outside → the padding index
    assert patch_index(4, 5, 3, "valid").shape == (2 * 3, 9)


@pytest.mark.parametrize("cls,kw", [(ELS, dict(patch_size=[(0.0, 3), (1.0, 5)], border="zero")),
                                    (PSPC, dict(patch_size=3, equivariant=False, border="valid"))])
def test_save_load_roundtrip(tmp_path, tiny, cls, kw):
    data, x = tiny
    model = cls(data, **kw)
    model.save(tmp_path / "m.safetensors")
    back = load_model(tmp_path / "m.safetensors")
    assert type(back) is cls and back.border == model.border and back.equivariant == model.equivariant
    torch.testing.assert_close(back(x, SIGMAS), model(x, SIGMAS), rtol=0, atol=0)


def test_callable_schedule_cannot_be_saved(tmp_path, tiny):
    with pytest.raises(ValueError, match="callable patch_size cannot be saved"):
        ELS(tiny[0], lambda s: 3).save(tmp_path / "m.safetensors")


def test_to_dtype_and_public_names(tiny):
    data, x = tiny
    model = sl.ELS(data, 3)
    m32 = model.to(dtype=torch.float32)
    assert m32.data_.dtype == torch.float32 and model.data_.dtype == F64
    torch.testing.assert_close(m32(x.float(), 0.5).double(), model(x, 0.5), rtol=0, atol=1e-5)
    assert sl.PSPC is PSPC and sl.Wiener is Wiener


# ---------------------------------------------------------------------------------------------- Wiener

def test_wiener_linear_is_the_covariance_solve(tiny):
    data, x = tiny
    w = Wiener(data, mode="linear")
    flat = data.reshape(20, -1)
    mu, cov = flat.mean(0), torch.cov(flat.T, correction=0)
    for sigma in (0.1, 1.0, 3.0):
        want = mu + torch.linalg.solve(cov + sigma ** 2 * torch.eye(72, dtype=F64), cov @ (x.reshape(3, -1) - mu).T).T
        torch.testing.assert_close(w(x, sigma), want.reshape(x.shape), rtol=0, atol=1e-10)


def test_wiener_linear_matches_the_gaussian_model(tiny):
    data, x = tiny
    gauss = sl.Gaussian.fit(data)
    for sigma in (0.05, 0.7, 20.0):
        torch.testing.assert_close(Wiener(data, mode="linear")(x, sigma), gauss(x, sigma), rtol=0, atol=1e-10)


def test_wiener_masks_keep_the_pixel_and_the_energy_fraction(tiny):
    data, _ = tiny
    w = Wiener(data, energy=0.6)
    m, filt = w.masks(0.5), w.filter(0.5)
    assert m.diagonal().all()
    kept = (filt ** 2 * m).sum(1) / (filt ** 2).sum(1)
    assert (kept >= 0.6 - 1e-12).all()
    # minimal: dropping the smallest kept off-diagonal weight falls below the fraction
    for p in range(0, 72, 7):
        off = [q for q in torch.nonzero(m[p]).flatten().tolist() if q != p]
        if off:
            q = min(off, key=lambda q: float(filt[p, q] ** 2))
            assert float(kept[p] - filt[p, q] ** 2 / (filt[p] ** 2).sum()) < 0.6
    assert Wiener(data, energy=1.0).masks(0.5).all()


def test_wiener_masked_equals_loop_reference(tiny):
    data, x = tiny
    w = Wiener(data, energy=0.5, chunk_size=300)
    for sigma in (0.3, 2.0):
        want = ref.masked_empirical_loop(data, x, sigma, w.masks(sigma))
        torch.testing.assert_close(w(x, sigma), want, rtol=0, atol=1e-12)


def test_wiener_full_masks_give_the_empirical_denoiser(tiny):
    data, x = tiny
    for sigma in (0.3, 2.0):
        torch.testing.assert_close(Wiener(data, energy=1.0)(x, sigma), empirical(data, x, sigma), rtol=0, atol=1e-12)


def test_wiener_save_load_and_no_nan(tmp_path, tiny):
    data, x = tiny
    w = Wiener(data, energy=0.7, n_data=10)
    w.save(tmp_path / "w.safetensors")
    back = load_model(tmp_path / "w.safetensors")
    torch.testing.assert_close(back(x, 0.4), w(x, 0.4), rtol=0, atol=0)
    assert torch.isfinite(w(x, 1e-4)).all() and torch.isfinite(w(x, 1e5)).all()


# ---------------------------------------------------------------------------------------------- CLI options

@pytest.mark.parametrize("cls,argv", [
    (ELS, ["--patch-size", "0:3,1:5", "--border", "zero", "--n-data", "12"]),
    (PSPC, ["--patch-size", "3", "--no-equivariant", "--border", "valid"]),
    (Wiener, ["--mode", "linear", "--energy", "0.8"]),
])
def test_cli_options_build_the_same_model(tiny, cls, argv):
    from scorelab.commands.fit import add_model_arguments, build_model

    data, x = tiny
    parser = argparse.ArgumentParser()
    add_model_arguments(cls.kind, parser)
    model = build_model(cls.kind, data, parser.parse_args(argv))
    assert isinstance(model, cls) and cls.kind in ("els", "pspc", "wiener")
    if cls is ELS:
        assert model.schedule.spec == [(0.0, 3), (1.0, 5)] and model.data_.shape[0] == 12
        torch.testing.assert_close(model(x, 0.5), ELS(data, 3, border="zero", n_data=12)(x, 0.5), rtol=0, atol=0)
    elif cls is PSPC:
        assert not model.equivariant and model.border == "valid"
    else:
        assert model.mode == "linear" and math.isclose(model.energy, 0.8)


def test_cli_patch_size_reads_a_calibration_file(tmp_path, tiny):
    (tmp_path / "cal.json").write_text('{"schedule": [[0.0, 3], [0.7, 5]]}')
    from scorelab.commands.fit import add_model_arguments, build_model

    parser = argparse.ArgumentParser()
    add_model_arguments("els", parser)
    model = build_model("els", tiny[0], parser.parse_args(["--patch-size", str(tmp_path / "cal.json")]))
    assert model.schedule.spec == [(0.0, 3), (0.7, 5)]
