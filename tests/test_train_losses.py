"""Loss terms of co-training: values against hand computations, agreement term zero and its gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from pipeline.config import ExpertConfig
from pipeline.data import keys as K
from pipeline.models import build_model
from pipeline.train.data import make_batch, prepare_samples
from pipeline.train.losses import (
    LossWeights,
    agreement_terms,
    data_terms,
    merge_terms,
    robust_square,
    weighted_total,
)
from pipeline.train.pair import Experts, batch_terms
from train_support import TINY_EXPERT, tiny_config

torch.set_num_threads(1)
SPECIES = ("Pt", "C", "O")


def _expert(seed: int, dtype=torch.float64, **changes):
    return build_model(ExpertConfig(**{**{k: tuple(v) if isinstance(v, list) else v for k, v in TINY_EXPERT.items()},
                                      **changes}), SPECIES, dtype=dtype, seed=seed)


def _bulk_batch(dtype=torch.float64):
    frames = []
    for seed in range(2):
        atoms = bulk("Pt", "fcc", a=3.95, cubic=True)
        atoms.rattle(0.08, seed=seed)
        frames.append(atoms)
    samples = prepare_samples(frames, species=SPECIES, r_maxes=[TINY_EXPERT["r_max"]], dtype=dtype, labelled=False)
    return make_batch(samples)


def _mean_agreement(hf, lf, batch, *, detach_hf=False, detach_lf=False, create_graph=True):
    graph = batch.graph(hf.r_max)
    terms = agreement_terms(hf(graph, create_graph=create_graph), lf(graph, create_graph=create_graph),
                            batch.bulk, detach_hf=detach_hf, detach_lf=detach_lf)
    return {name: s / c for name, (s, c) in terms.items()}


def test_data_terms_match_a_hand_computation():
    pred = {K.ENERGY: torch.tensor([1.0, 4.0]), K.FORCES: torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]])}
    graph = {K.ENERGY: torch.tensor([0.0, 0.0]), K.FORCES: torch.zeros(3, 3), K.NUM_ATOMS: torch.tensor([1, 2])}
    terms = data_terms(pred, graph, atom_mask=torch.tensor([True, False, True]), frame_mask=torch.tensor([True, True]))
    (e_sum, e_n), (f_sum, f_n) = terms["energy"], terms["forces"]
    assert float(e_sum) == pytest.approx(1.0**2 + (4.0 / 2) ** 2) and int(e_n) == 2
    assert float(f_sum) == pytest.approx(1.0 + 9.0) and int(f_n) == 2


def test_weighted_total_uses_global_counts_and_weights():
    terms = {"hf_energy": (torch.tensor(2.0), torch.tensor(1.0, dtype=torch.float64)),
             "agree_forces": (torch.tensor(3.0), torch.tensor(3.0, dtype=torch.float64))}
    loss, values = weighted_total(terms, LossWeights(energy=10.0, agree_forces=2.0))
    assert float(loss) == pytest.approx(10 * 2.0 + 2 * 1.0)
    # as if another process held as many values: counts double, the loss is multiplied by the 2 processes
    loss2, values2 = weighted_total(terms, LossWeights(energy=10.0, agree_forces=2.0),
                                    global_counts=lambda c: 2 * c, world_size=2)
    assert float(loss2) == pytest.approx(float(loss)) and values2["hf_energy"] == pytest.approx(1.0)
    merged = merge_terms(terms, terms)
    assert float(merged["hf_energy"][0]) == 4.0 and float(merged["hf_energy"][1]) == 2.0


def test_agreement_is_zero_for_identical_experts():
    batch = _bulk_batch()
    hf, twin = _expert(3), _expert(3)
    assert all(torch.equal(a, b) for a, b in zip(hf.state_dict().values(), twin.state_dict().values()))
    means = _mean_agreement(hf, twin, batch)
    assert float(means["energy"].detach()) == 0.0 and float(means["forces"].detach()) == 0.0
    loss = means["energy"] + means["forces"]
    loss.backward()
    grads = [p.grad for p in twin.parameters() if p.grad is not None]
    assert grads and max(float(g.abs().max()) for g in grads) == 0.0
    # and clearly non-zero for different experts
    assert float(_mean_agreement(hf, _expert(4), batch)["forces"].detach()) > 1e-6


@pytest.mark.parametrize("detach_hf, detach_lf", [(False, False), (True, False), (False, True)])
def test_agreement_gradient_matches_finite_differences(detach_hf, detach_lf):
    batch = _bulk_batch()
    hf, lf = _expert(1), _expert(2, num_scalar_features=4)
    weights = {"energy": 0.7, "forces": 1.3}

    def loss_value():
        means = _mean_agreement(hf, lf, batch, detach_hf=detach_hf, detach_lf=detach_lf)
        return sum(weights[k] * v for k, v in means.items())

    loss = loss_value()
    loss.backward()
    for model in (lf, hf):
        param = next(p for p in model.parameters() if p.requires_grad and p.numel() > 4)
        analytic = torch.zeros_like(param) if param.grad is None else param.grad.clone()
        flat = param.data.view(-1)
        for index in (0, flat.numel() // 2, flat.numel() - 1):
            h = 1e-6
            old = float(flat[index])
            flat[index] = old + h
            plus = float(loss_value().detach())
            flat[index] = old - h
            minus = float(loss_value().detach())
            flat[index] = old
            numeric = (plus - minus) / (2 * h)
            frozen = (model is hf and detach_hf) or (model is lf and detach_lf)
            expected = 0.0 if frozen else numeric
            assert float(analytic.view(-1)[index]) == pytest.approx(expected, rel=1e-5, abs=1e-9)
        if not ((model is hf and detach_hf) or (model is lf and detach_lf)):
            assert float(analytic.abs().max()) > 0


def test_batch_terms_follow_the_lf_assignment():
    cfg = tiny_config()
    slab = fcc111("Pt", (2, 2, 3), a=3.92, vacuum=5.0, periodic=True)
    slab.arrays["region"] = np.array(["complex"] * 4 + ["bulk"] * 4 + ["complex"] * 4)
    cell = bulk("Pt", "fcc", a=3.95, cubic=True)
    cell.arrays["region"] = np.array(["bulk"] * 4)
    for atoms in (slab, cell):
        atoms.rattle(0.05, seed=1)
        atoms.calc = EMT()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        atoms.calc = SinglePointCalculator(atoms, **results)
    samples = prepare_samples([slab, cell], species=SPECIES, r_maxes=[4.0], dtype=torch.float64)
    batch = make_batch(samples)
    assert batch.lf_energy.tolist() == [False, True]
    assert batch.lf_forces.tolist() == [False] * 4 + [True] * 4 + [False] * 4 + [True] * 4
    pair = Experts({"hf": _expert(1), "lf": _expert(2)})
    terms = batch_terms(pair(batch, create_graph=False), batch)
    assert {k: int(c) for k, (_, c) in terms.items()} == {
        "hf_energy": 2, "hf_forces": 16, "lf_energy": 1, "lf_forces": 8, "agree_energy": 8, "agree_forces": 8,
        "mixture_forces": 0}  # no mixture cells in this batch
    everything = prepare_samples([slab, cell], species=SPECIES, r_maxes=[4.0], dtype=torch.float64, lf_data="all")
    assert make_batch(everything).lf_energy.tolist() == [True, True]
    assert cfg.train.lf_data == "bulk_atoms"


def test_robust_square_is_the_square_below_delta_and_linear_above():
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.2, 1.0, 4.0], dtype=torch.float64, requires_grad=True)
    y = robust_square(x, 1.0)
    expected = torch.where(x.abs() <= 1.0, x**2, 2.0 * x.abs() - 1.0)
    torch.testing.assert_close(y, expected)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert float(grad.abs().max()) == pytest.approx(2.0)  # bounded slope: 2 delta
    torch.testing.assert_close(robust_square(x, 0.0), x**2)


def test_huber_data_terms_damp_large_force_errors_only():
    pred = {K.ENERGY: torch.tensor([1.0]), K.FORCES: torch.tensor([[0.1, 0.0, 0.0], [30.0, 0.0, 0.0]])}
    graph = {K.ENERGY: torch.tensor([0.0]), K.FORCES: torch.zeros(2, 3), K.NUM_ATOMS: torch.tensor([2])}
    masks = dict(atom_mask=torch.tensor([True, True]), frame_mask=torch.tensor([True]))
    square = data_terms(pred, graph, **masks)
    huber = data_terms(pred, graph, **masks, huber_energy=0.1, huber_forces=1.0)
    assert float(square["forces"][0]) == pytest.approx(0.01 + 900.0)
    assert float(huber["forces"][0]) == pytest.approx(0.01 + 59.0)  # 2 * 1 * 30 - 1
    assert float(square["energy"][0]) == pytest.approx(0.25)  # (1 eV / 2 atoms)^2
    assert float(huber["energy"][0]) == pytest.approx(2 * 0.1 * 0.5 - 0.01)
