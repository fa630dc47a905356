"""Mixture-of-experts MLPs: routing, sparse execution, MoLE merging, size-consistent configuration routing,
the balance loss and the force discontinuity of per-atom routing (float64)."""

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.config import MoEConfig, load_config
from pipeline.data import keys as K
from pipeline.models import build_model
from pipeline.models.mlp import ScalarMLP, make_mlp
from pipeline.models.moe import MergedMoLE, MoEMLP, RoutingContext, merge_moe, moe_modules, parameter_counts
from pipeline.models.testing import (
    SPECIES,
    co_gas,
    evaluate,
    pt_bulk,
    pt_co_slab,
    small_config,
    small_moe_config,
)

torch.set_num_threads(1)


def _layer(**moe) -> MoEMLP:
    torch.manual_seed(0)
    cfg = MoEConfig(enabled=True, **{"num_experts": 4, "top_k": 2, "num_shared": 1, **moe})
    return MoEMLP(6, 3, hidden=(8,), activation="silu", num_species=3, moe=cfg).double()


def _dense_reference(layer: MoEMLP, x: torch.Tensor, species: torch.Tensor,
                     ctx: RoutingContext | None = None) -> torch.Tensor:
    """Every expert on every row, weighted by the (renormalised top-k) gates: the mathematical definition.

    Non-linear experts: gated sum of expert outputs. MoLE: per row, the gated sum of the experts' weights.
    """
    logits, _, _, row_group = layer.router(x, species, ctx)
    _, index, gate = layer.gates(logits)
    dense_gate = torch.zeros(logits.shape[0], layer.num_experts, dtype=x.dtype).scatter(1, index, gate)[row_group]
    out = torch.zeros(x.shape[0], layer.out_dim, dtype=x.dtype)
    last = len(layer.experts) - 1
    if layer.moe.expert_type == "linear":
        h = x
        for i, w in enumerate(layer.experts):
            h = torch.einsum("ne,eoi,ni->no", dense_gate, w, h)
            h = layer.act(h) if i < last else h
        out = h
    for e in range(layer.num_experts if layer.moe.expert_type == "mlp" else 0):
        h = x
        for i, w in enumerate(layer.experts):
            h = torch.nn.functional.linear(h, w[e])
            h = layer.act(h) if i < last else h
        out = out + dense_gate[:, e : e + 1] * h
    for expert in layer.shared:
        out = out + expert(x)
    return out * layer.out_scale


@pytest.mark.parametrize("expert_type", ["mlp", "linear"])
def test_sparse_and_mixed_execution_equal_the_dense_definition(expert_type):
    layer = _layer(expert_type=expert_type)
    x = torch.randn(20, 6, dtype=torch.float64)
    species = torch.randint(0, 3, (20,))
    torch.testing.assert_close(layer(x, species), _dense_reference(layer, x, species), atol=1e-12, rtol=0)


def _context(n_rows: int, seed: int = 0) -> tuple[RoutingContext, torch.Tensor]:
    """Rows of 6 centre atoms (sorted by centre) in 2 structures, and the rows' centre species."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.sort(torch.randint(0, 6, (n_rows,), generator=g)).values
    centre_species = torch.tensor([0, 1, 2, 0, 0, 1])
    composition = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [2 / 3, 1 / 3, 0.0]], dtype=torch.float64)
    ctx = RoutingContext(centre=centre, n_centres=6, centre_species=centre_species,
                         centre_structure=torch.tensor([0, 0, 0, 1, 1, 1]), composition=composition, edge_norm=0.5)
    return ctx, centre_species[centre]


@pytest.mark.parametrize("router", ["configuration", "global", "atom"])
@pytest.mark.parametrize("expert_type", ["mlp", "linear"])
def test_sparse_execution_equals_the_dense_masked_definition_for_context_routers(router, expert_type):
    """Routing by structure (composition or global features) or by atom: the sparse (grouped) execution gives
    the gate-masked sum over all experts, row by row."""
    layer = _layer(router=router, expert_type=expert_type)
    x = torch.randn(40, 6, dtype=torch.float64)
    ctx, species = _context(40)
    reference = _dense_reference(layer, x, species, ctx)
    torch.testing.assert_close(layer(x, species, ctx), reference, atol=1e-12, rtol=0)


def test_global_routing_is_one_choice_per_structure():
    layer = _layer(router="global", num_shared=0)
    x = torch.randn(40, 6, dtype=torch.float64)
    ctx, species = _context(40)
    logits, token_group, _, row_group = layer.router(x, species, ctx)
    assert logits.shape == (2, layer.num_experts)  # one routing per structure
    assert torch.equal(token_group, ctx.centre_structure) and torch.equal(row_group, ctx.centre_structure[ctx.centre])
    x2 = x.clone()
    x2[ctx.centre == 0] += 1.0  # another atom of structure 0 changes: every atom of structure 0 may reroute
    assert not torch.equal(layer.router(x2, species, ctx)[0][0], logits[0])
    torch.testing.assert_close(layer.router(x2, species, ctx)[0][1], logits[1], atol=0, rtol=0)


def test_gates_are_renormalised_top_k_and_experts_see_only_their_rows(monkeypatch):
    layer = _layer(num_experts=5, top_k=2)
    probs, index, gate = layer.gates(torch.randn(7, 5, dtype=torch.float64))
    torch.testing.assert_close(gate.sum(1), torch.ones(7, dtype=torch.float64))
    assert torch.equal(index, torch.topk(probs, 2).indices)
    rows_seen = []
    linear = torch.nn.functional.linear

    def counting(h, w, *args):
        if w._base is layer.experts[0]:  # first layer of a routed expert (not a shared one)
            rows_seen.append(h.shape[0])
        return linear(h, w, *args)

    monkeypatch.setattr(torch.nn.functional, "linear", counting)
    layer(torch.randn(30, 6, dtype=torch.float64), torch.randint(0, 3, (30,)))
    assert sum(rows_seen) == 30 * 2, "each row runs through exactly top_k routed experts"


def test_make_mlp_routes_only_the_named_layers():
    moe = MoEConfig(enabled=True, layers=("readout",))
    assert isinstance(make_mlp(4, 1, num_species=2, moe=moe, role="readout"), MoEMLP)
    assert isinstance(make_mlp(4, 4, num_species=2, moe=moe, role="latent"), ScalarMLP)
    assert isinstance(make_mlp(4, 1, num_species=2, moe=dataclasses.replace(moe, enabled=False), role="readout"),
                      ScalarMLP)
    default = load_config(check_files=False)
    for preset in (default.models.hf, default.models.lf):
        assert not moe_modules(build_model(preset, SPECIES)), "the default models are dense"


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="top_k"):
        _layer(num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="router"):
        _layer(router="nearest")
    layer = _layer(router="configuration")
    with pytest.raises(ValueError, match="RoutingContext"):
        layer(torch.randn(3, 6, dtype=torch.float64), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("variant", ["mole_element"])
def test_merged_mole_equals_unmerged(variant):
    model = build_model(small_moe_config(variant), SPECIES, dtype=torch.float64, seed=4).eval()
    merged = merge_moe(model)
    assert not moe_modules(merged)
    frames = [pt_co_slab(), pt_bulk(), co_gas()]
    a = evaluate(model, frames, r_max=model.r_max, compute_stress=True)
    b = evaluate(merged, frames, r_max=model.r_max, compute_stress=True)
    for key in (K.ENERGY, K.FORCES):
        torch.testing.assert_close(a[key], b[key], atol=1e-12, rtol=0)
    active, total = parameter_counts(merged)
    assert active == total < parameter_counts(model)[1]


def test_merged_mole_layer_equals_the_unmerged_layer_for_every_element():
    layer = _layer(expert_type="linear", num_shared=1)
    merged = MergedMoLE(layer)
    x = torch.randn(12, 6, dtype=torch.float64)
    for element in range(3):
        species = torch.full((12,), element)
        torch.testing.assert_close(merged(x, species), layer(x, species), atol=1e-12, rtol=0)


def test_configuration_routing_is_size_consistent():
    """A supercell has its unit cell's composition: same routing, so per-atom energies repeat exactly."""
    model = build_model(small_moe_config("moe_configuration"), SPECIES, dtype=torch.float64, seed=2).eval()
    cell = pt_co_slab(size=(2, 2, 2))
    out1 = evaluate(model, [cell], r_max=model.r_max)
    out2 = evaluate(model, [cell.repeat((2, 1, 1))], r_max=model.r_max)
    torch.testing.assert_close(out2[K.MOE_LOAD], 2 * out1[K.MOE_LOAD], atol=0, rtol=0)
    torch.testing.assert_close(out2[K.ENERGY], 2 * out1[K.ENERGY], atol=1e-10, rtol=0)
    torch.testing.assert_close(out2[K.PER_ATOM_ENERGY][: len(cell)], out1[K.PER_ATOM_ENERGY], atol=1e-11, rtol=0)


def test_configuration_routing_depends_on_composition():
    model = build_model(small_moe_config("moe_configuration"), SPECIES, dtype=torch.float64, seed=2).eval()
    slab = pt_co_slab(size=(2, 2, 2))
    alone = evaluate(model, [slab[:-2]], r_max=model.r_max)[K.PER_ATOM_ENERGY]
    with_co = evaluate(model, [slab], r_max=model.r_max)[K.PER_ATOM_ENERGY][:-2]
    far = slab.positions[:-2, 2] < slab.positions[:-2, 2].min() + 0.5  # bottom layer: CO beyond r_max
    assert float((alone[far] - with_co[far]).detach().abs().max()) > 1e-8, "CO changes the structure's routing"


def test_balance_loss_reaches_the_router_and_is_reported():
    model = build_model(small_moe_config("moe_element"), SPECIES, dtype=torch.float64, seed=1)
    out = evaluate(model, [pt_co_slab()], r_max=model.r_max)
    assert out[K.MOE_BALANCE_LOSS].ndim == 0 and float(out[K.MOE_BALANCE_LOSS].detach()) >= len(moe_modules(model)) - 1e-9
    out[K.MOE_BALANCE_LOSS].backward()
    router = model.readout.router
    assert router.proj.weight.grad is not None and float(router.proj.weight.grad.abs().sum()) > 0
    n_layers = len(moe_modules(model))
    assert out[K.MOE_LOAD].shape == (n_layers, len(SPECIES), 3)
    slab = pt_co_slab()
    counts = torch.tensor([sum(s == sym for s in slab.get_chemical_symbols()) for sym in SPECIES], dtype=torch.float64)
    torch.testing.assert_close(out[K.MOE_LOAD].sum(-1), (2 * counts).expand(n_layers, -1))  # top_k = 2


def test_active_parameters_grow_with_k_not_n():
    def counts(**moe):
        return parameter_counts(build_model(small_config(moe=MoEConfig(enabled=True, **moe)), SPECIES))

    a4, t4 = counts(num_experts=4, top_k=1)
    a8, t8 = counts(num_experts=8, top_k=1)
    a8k2, _ = counts(num_experts=8, top_k=2)
    assert t8 > t4 and a8 - a4 < 0.1 * (t8 - t4) and a8k2 > a8  # only the router grows with N


def _routing_switch(model, atoms, path):
    """Bisect the first change of expert assignment along ``path(t)``: (t_lo, t_hi, E_lo, E_hi) or None."""
    def state(t):
        out = evaluate(model, [path(t)], r_max=model.r_max, compute_forces=False)
        return float(out[K.ENERGY][0].detach()), out[K.MOE_LOAD].numpy()

    ts = np.linspace(0.9, 3.5, 53)
    prev = state(ts[0])
    for t0, t1 in zip(ts[:-1], ts[1:]):
        if not np.array_equal(state(t1)[1], prev[1]):
            lo, hi = t0, t1
            for _ in range(40):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if np.array_equal(state(mid)[1], prev[1]) else (lo, mid)
            return lo, hi, state(lo)[0], state(hi)[0]
        prev = state(t1)
    return None


def test_atom_routing_makes_the_energy_jump_element_routing_does_not():
    """Measured: stretching CO, per-atom (top-1) routing switches experts and the energy jumps by a finite
    amount over a 1e-13 A step (so forces are not the gradient of a continuous energy there)."""
    atoms = co_gas()
    axis = (atoms.positions[1] - atoms.positions[0]) / np.linalg.norm(atoms.positions[1] - atoms.positions[0])

    def path(t):
        a = atoms.copy()
        a.positions[1] = a.positions[0] + axis * t
        return a

    model = build_model(small_moe_config("moe_atom"), SPECIES, dtype=torch.float64, seed=0).eval()
    switch = _routing_switch(model, atoms, path)
    assert switch is not None, "no routing switch found along the path"
    lo, hi, e_lo, e_hi = switch
    assert hi - lo < 1e-10 and abs(e_hi - e_lo) > 1e-4
    element = build_model(small_moe_config("moe_element"), SPECIES, dtype=torch.float64, seed=0).eval()
    assert _routing_switch(element, atoms, path) is None, "element routing never switches"
    e = [float(evaluate(element, [path(t)], r_max=element.r_max, compute_forces=False)[K.ENERGY][0]) for t in (lo, hi)]
    assert abs(e[1] - e[0]) < 1e-9
