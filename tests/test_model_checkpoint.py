"""Checkpoints: round trip, refusal of mismatched species/cutoff, corrupt files; the config presets."""

import dataclasses

import pytest
import torch

from pipeline.config import ExpertConfig, config_from_dict, load_config
from pipeline.data import keys as K
from pipeline.models import (
    CheckpointError,
    build_model,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from pipeline.models.testing import (
    SPECIES,
    evaluate,
    pt_co_slab,
    small_config,
    small_moe_config,
)

torch.set_num_threads(1)


@pytest.fixture(params=["dense", "moe_element", "mole_configuration"])
def model(request):
    m = build_model(small_moe_config(request.param), SPECIES, dtype=torch.float64, seed=9).eval()
    m.set_scale_shift(scales=[1.1, 0.9, 1.2], shifts=[-6.0, -8.0, -5.0])
    return m


def test_round_trip(model, tmp_path):
    path = tmp_path / "sub" / "expert.pt"
    save_checkpoint(path, model, metadata={"epoch": 3, "note": "test"})
    assert [p.name for p in path.parent.iterdir()] == ["expert.pt"], "no temporary files left behind"
    loaded = load_checkpoint(path, species=SPECIES, r_max=model.r_max)
    assert loaded.config == model.config and loaded.species == model.species and loaded.dtype == torch.float64
    assert not loaded.training
    atoms = pt_co_slab()
    a, b = evaluate(model, [atoms], r_max=model.r_max), evaluate(loaded, [atoms], r_max=model.r_max)
    assert torch.equal(a[K.ENERGY], b[K.ENERGY]) and torch.equal(a[K.FORCES], b[K.FORCES])
    payload = read_checkpoint(path)
    assert payload["metadata"] == {"epoch": 3, "note": "test"}
    assert set(payload["versions"]) >= {"torch", "e3nn", "pipeline"}
    as_float32 = load_checkpoint(path, dtype=torch.float32)
    assert as_float32.dtype == torch.float32


def test_overwrite_is_atomic_replace(model, tmp_path):
    path = tmp_path / "expert.pt"
    save_checkpoint(path, model)
    model.set_scale_shift(scales=[1.0, 1.0, 1.0], shifts=[0.0, 0.0, 0.0])
    save_checkpoint(path, model)
    assert load_checkpoint(path).scale_shift.shifts.tolist() == [0.0, 0.0, 0.0]


def test_mismatched_species_or_cutoff_refused(model, tmp_path):
    path = tmp_path / "expert.pt"
    save_checkpoint(path, model)
    expected = r"built for species \['Pt', 'C', 'O'\], but the data uses \['Pt', 'O', 'C'\]"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path, species=["Pt", "O", "C"])
    with pytest.raises(CheckpointError, match="r_max = 4.0 A, but the data uses 5.0 A"):
        load_checkpoint(path, r_max=5.0)


def test_corrupt_and_foreign_files(model, tmp_path):
    path = tmp_path / "expert.pt"
    save_checkpoint(path, model)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not an Allegro expert checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    future = tmp_path / "future.pt"
    torch.save(payload, future)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(future)


def test_config_presets_build():
    cfg = load_config(check_files=False)
    assert isinstance(cfg.models.hf, ExpertConfig) and isinstance(cfg.models.lf, ExpertConfig)
    assert isinstance(cfg.models.hf.latent_mlp_hidden, tuple)
    for preset in (cfg.models.hf, cfg.models.lf):
        model = build_model(preset, cfg.species, seed=0)
        assert model.r_max == preset.r_max
    assert dataclasses.asdict(config_from_dict(cfg.to_dict()).models) == dataclasses.asdict(cfg.models)
    # one source of truth: schema defaults, config/config.yaml and the dataclass defaults agree
    from pipeline.config import ModelsConfig

    assert config_from_dict({}).models == cfg.models == ModelsConfig()


def test_invalid_model_config_rejected():
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="models.hf.l_max"):
        config_from_dict({"models": {"hf": {"l_max": 0}}})
    with pytest.raises(ConfigError, match="models.lf"):
        config_from_dict({"models": {"lf": {"activation": "relu6"}}})


def test_checkpoint_with_foreign_objects_refused(model, tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"kind": "allegro_expert", "model": model}, path)  # a pickled module, not a state dict
    with pytest.raises(CheckpointError, match="holds Python objects other than tensors"):
        load_checkpoint(path)


def test_checkpoint_from_before_moe_layers_loads_dense(tmp_path):
    """A checkpoint whose config has no ``moe`` entry (written before MoE layers existed) loads as dense."""
    dense = build_model(small_config(), SPECIES, dtype=torch.float64, seed=9).eval()
    path = tmp_path / "old.pt"
    save_checkpoint(path, dense)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["moe"]
    torch.save(payload, path)
    loaded = load_checkpoint(path, species=SPECIES)
    assert not loaded.config.moe.enabled
    atoms = pt_co_slab()
    a, b = evaluate(dense, [atoms], r_max=dense.r_max), evaluate(loaded, [atoms], r_max=dense.r_max)
    assert torch.equal(a[K.ENERGY], b[K.ENERGY])
