"""The channel-wise tensor product against e3nn's "uuu" TensorProduct, its equivariance, and the
irreps plan of the tensor track."""

import math

import pytest
import torch
from e3nn import o3

from pipeline.models import ChannelwiseTensorProduct, plan_tensor_track
from pipeline.models.radial import BesselBasis, PolynomialEnvelope

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def float64_default():
    """e3nn builds Wigner symbols and D matrices in the default dtype: make it float64 here."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _e3nn_reference(tp: ChannelwiseTensorProduct) -> o3.TensorProduct:
    """The same product written with e3nn: mul = U, one "uuu" instruction per path."""
    u = tp.num_channels
    fan_in = {c: sum(1 for _, _, cc in tp.paths if cc == c) for _, _, c in tp.paths}
    instructions = [(a, b, c, "uuu", True, 1.0 / fan_in[c]) for a, b, c in tp.paths]
    return o3.TensorProduct(
        o3.Irreps([(u, ir) for _, ir in tp.irreps_in1]),
        o3.Irreps([(u, ir) for _, ir in tp.irreps_in2]),
        o3.Irreps([(u, ir) for _, ir in tp.irreps_out]),
        instructions,
        irrep_normalization="component",
        path_normalization="none",
        internal_weights=False,
        shared_weights=True,
    )


def _to_e3nn_layout(x: torch.Tensor, irreps: o3.Irreps) -> torch.Tensor:
    """(n, U, dim) strided -> (n, sum_irreps U * (2l+1)) e3nn layout (channel-major per irrep)."""
    blocks = [x[:, :, s].reshape(x.shape[0], -1) for s in irreps.slices()]
    return torch.cat(blocks, dim=1)


@pytest.mark.parametrize(
    "irreps_in1, irreps_out",
    [("0e+1o+2e", "0e+1o+2e"), ("0e+1o+2e", "0e"), ("0e+0o+1e+1o+2e+2o", "0e+0o+1e+1o+2e+2o"), ("0e+1o", "0e+1o+1e")],
)
def test_matches_e3nn_uuu_tensor_product(irreps_in1, irreps_out):
    torch.manual_seed(0)
    irreps_in2 = o3.Irreps.spherical_harmonics(2 if "2" in irreps_in1 else 1)
    tp = ChannelwiseTensorProduct(
        irreps_in1=o3.Irreps(irreps_in1), irreps_in2=irreps_in2, irreps_out=o3.Irreps(irreps_out), num_channels=3
    ).double()
    ref = _e3nn_reference(tp)
    n, k = 4, 5
    x1 = torch.randn(n, 3, k, tp.irreps_in1.dim, dtype=torch.float64)
    x2 = torch.randn(n, 3, tp.irreps_in2.dim, dtype=torch.float64)
    ours = tp(x1, x2)  # [n, U, K, dim_out]
    weights = torch.cat([tp.weight[:, p] for p in range(len(tp.paths))])  # e3nn: instruction-major, then channel
    flat1 = _to_e3nn_layout(x1.permute(0, 2, 1, 3).reshape(n * k, 3, -1), tp.irreps_in1)
    flat2 = _to_e3nn_layout(x2.unsqueeze(1).expand(n, k, 3, -1).reshape(n * k, 3, -1), tp.irreps_in2)
    expected = ref(flat1, flat2, weights)
    got = _to_e3nn_layout(ours.permute(0, 2, 1, 3).reshape(n * k, 3, -1), tp.irreps_out)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("parity", [True, False])
def test_tensor_product_equivariance(parity):
    torch.manual_seed(1)
    sh, plan = plan_tensor_track(l_max=2, parity=parity, num_layers=3)
    irreps_in, irreps_out = plan[1]
    tp = ChannelwiseTensorProduct(irreps_in1=irreps_in, irreps_in2=sh, irreps_out=irreps_out, num_channels=2).double()
    x1 = torch.randn(3, 2, 4, irreps_in.dim, dtype=torch.float64)
    x2 = torch.randn(3, 2, sh.dim, dtype=torch.float64)
    rotation = -o3.rand_matrix(dtype=torch.float64)  # improper: a rotation times the inversion
    d_in, d_env, d_out = (irreps.D_from_matrix(rotation) for irreps in (irreps_in, sh, irreps_out))
    rotated = tp(x1 @ d_in.T, x2 @ d_env.T)
    torch.testing.assert_close(rotated, tp(x1, x2) @ d_out.T, atol=1e-12, rtol=1e-10)


def test_plan_tensor_track():
    sh, plan = plan_tensor_track(l_max=2, parity=True, num_layers=3)
    assert sh == o3.Irreps("0e+1o+2e")
    assert plan[0][0] == sh
    assert plan[-1][1] == o3.Irreps("0e")
    # odd-parity irreps are carried; 0o is pruned (0o x {0e, 1o, 2e} cannot reach 0e, 1o or 2e)
    assert {str(ir) for _, ir in plan[1][0]} == {"0e", "1e", "1o", "2e", "2o"}
    _, plan_np = plan_tensor_track(l_max=2, parity=False, num_layers=3)
    assert plan_np[1][0] == o3.Irreps("0e+1o+2e")
    _, two = plan_tensor_track(l_max=2, parity=True, num_layers=2)
    assert two[0][1] == o3.Irreps("0e+1o+2e")  # pruned: only irreps that can still reach 0e
    with pytest.raises(ValueError, match="l_max"):
        plan_tensor_track(l_max=0, parity=True, num_layers=1)


def test_envelope_and_basis():
    env = PolynomialEnvelope(r_max=5.0, p=6).double()
    r = torch.tensor([4.999, 5.0, 5.001], dtype=torch.float64, requires_grad=True)
    u = env(r)
    (du,) = torch.autograd.grad(u.sum(), r, create_graph=True)
    (d2u,) = torch.autograd.grad(du.sum(), r)
    u, du = u.detach(), du.detach()
    assert float(u[1]) == 0 and float(du[1]) == 0 and abs(float(d2u[1])) < 1e-12
    assert abs(float(u[0])) < 1e-7 and float(u[2]) == 0
    basis = BesselBasis(r_max=5.0, num_basis=8).double()(torch.tensor([1.0, 5.0], dtype=torch.float64))
    assert basis.shape == (2, 8)
    torch.testing.assert_close(basis[0, 0], torch.tensor(math.sin(math.pi / 5) * 5, dtype=torch.float64))
    assert basis[1].abs().max() < 1e-12


def test_fused_track_equals_explicit_tensor_products():
    """The model contracts per-centre operator products with the factorised first tensor; this must
    equal materialising the edge tensors and applying each layer's tensor product in turn."""
    from pipeline.models import build_model
    from pipeline.models.layout import EdgeLayout
    from pipeline.models.testing import SPECIES, small_config

    torch.manual_seed(0)
    model = build_model(small_config(num_layers=3, parity=True), SPECIES, dtype=torch.float64, seed=1)
    embedding = model.tensor_embedding
    centre = torch.tensor([0, 0, 0, 1, 2, 2])  # 3 centres with 3, 1 and 2 edges
    layout = EdgeLayout(centre, n_centres=3)
    n_edges, u = centre.numel(), model.config.num_tensor_features
    vectors = torch.randn(n_edges, 3)
    sh, first, env_weights = embedding(
        vectors, torch.randn(n_edges, 8), torch.rand(n_edges, 1), torch.zeros(n_edges, dtype=torch.long), layout
    )
    x = first.materialise()  # [3, U, K, first_dim], explicit
    torch.testing.assert_close(first.contract(torch.ones(3, u, x.shape[-1])), x.sum(-1).transpose(1, 2))
    operator = None
    for layer in model.layers:
        env = layer.environment(env_weights, sh, layout)
        x = layer.tp(x, env)  # explicit channel-wise tensor product on every edge
        step = layer.tp.centre_operator(env)
        operator = step if operator is None else operator @ step
        fused = first.contract(operator[..., 0])  # [3, K, U]
        torch.testing.assert_close(fused, x[..., 0].transpose(1, 2), atol=1e-12, rtol=1e-10)
        env_weights = torch.randn(n_edges, u * len(layer.irreps_env))
