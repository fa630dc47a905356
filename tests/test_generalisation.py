"""Generalisation set and data learning curve: the builder (deterministic, outside every training family, sane
geometry), nested group-complete training subsets, the generalisation split never reaching training, the
accuracy table's generalisation rows and the learning-curve table."""

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from analysis_support import tiny_analysis_config, write_pair
from pipeline.analysis.accuracy import COLUMNS, SPLIT_COLUMNS, accuracy_table
from pipeline.cli import main
from pipeline.config import DEFAULT_CONFIG_PATH, config_from_dict, load_config
from pipeline.data.generalisation import KINDS, build_generalisation_set, min_distance, write_generalisation_chunks
from pipeline.data.generalisation_set import GENERALISATION_SPLIT, ship_generalisation
from pipeline.data.sampling import sample_structures
from pipeline.data.splits import group_of, training_subset
from pipeline.models import read_checkpoint
from pipeline.train import run_training
from pipeline.train.data import read_splits
from train_support import tiny_config, write_tiny_dataset

INFO_KEYS = ("family", "group", "config_type", "structure_id", "generalisation_kind", "sample_index")
# cheap kinds for the model tests (EMT labels, tiny experts)
SMALL_KINDS = ["adatom", "vacancy_co", "coverage_3_4", "bulk_vacancy"]


@pytest.fixture(scope="module")
def default_cfg():
    return load_config(DEFAULT_CONFIG_PATH, check_files=False)


@pytest.fixture(scope="module")
def gen_frames(default_cfg):
    return build_generalisation_set(default_cfg)


def _signature(atoms):
    """What makes a structure of a family: composition, cell (0.1 A), CO site and coverage."""
    cell = tuple(np.round(atoms.cell.lengths(), 1)) if atoms.pbc.any() else ()
    coverage = atoms.info.get("coverage_ml")
    return (atoms.get_chemical_formula(), cell, str(atoms.info.get("site", "")),
            None if coverage is None else round(float(coverage), 3))


def _emt_labelled(frames):
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        out.append(atoms)
    return out


def test_builder_is_deterministic_for_a_seed(default_cfg, gen_frames):
    again = build_generalisation_set(default_cfg)
    assert [a.info["structure_id"] for a in again] == [a.info["structure_id"] for a in gen_frames]
    for a, b in zip(again, gen_frames):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.info == b.info
    other = build_generalisation_set(config_from_dict({"generalisation": {"seed": 1}}))
    rattled = [(a, b) for a, b in zip(other, gen_frames) if a.info["perturbation"] == "rattle"]
    assert rattled and all(not np.allclose(a.positions, b.positions) for a, b in rattled)
    ideal = [(a, b) for a, b in zip(other, gen_frames) if a.info["ideal"]]
    assert all(np.allclose(a.positions, b.positions) for a, b in ideal)


def test_set_size_metadata_and_geometry(gen_frames):
    assert len(gen_frames) >= 30
    assert len({a.info["structure_id"] for a in gen_frames}) == len(gen_frames)
    assert Counter(a.info["generalisation_kind"] for a in gen_frames) == {k: 2 for k in KINDS}
    for atoms in gen_frames:
        assert all(key in atoms.info for key in INFO_KEYS), atoms.info
        assert atoms.info["config_type"] == atoms.info["generalisation_kind"]
        assert len(atoms) <= 50
        assert min_distance(atoms) > 0.95, atoms.info["structure_id"]
        symbols = np.array(atoms.get_chemical_symbols())
        distances = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
        pt = symbols == "Pt"
        pair = distances[np.ix_(pt, pt)][np.triu_indices(int(pt.sum()), k=1)]
        assert pair.min() > 2.2, atoms.info["structure_id"]  # Pt-Pt (nearest neighbour 2.81 A)
        for c in np.flatnonzero(symbols == "C"):
            assert 1.0 < distances[c][symbols == "O"].min() < 1.3  # each C keeps its O
            assert distances[c][pt].min() > 1.6  # no CO pressed into the surface (that is a training family)


def test_structures_differ_from_every_training_family(default_cfg, gen_frames):
    training = sample_structures(default_cfg)
    shipped = read(default_cfg.data.paths[0], index=":") if default_cfg.data.paths else []
    train_ids = {a.info["structure_id"] for a in training} | {a.info.get("structure_id") for a in shipped}
    train_types = {a.info["config_type"] for a in training} | {a.info.get("config_type") for a in shipped}
    train_signatures = {_signature(a) for a in training}
    for atoms in gen_frames:
        assert atoms.info["structure_id"] not in train_ids
        assert atoms.info["config_type"] not in train_types
        assert _signature(atoms) not in train_signatures, atoms.info["structure_id"]
    # sizes and sites the sampler never builds: more layers, adatom, vacancy, step, 3x3 bridge/hcp, new coverages
    assert {len(a) for a in gen_frames} - {len(a) for a in training}
    assert {(a.info["slab_size"], a.info["site"]) for a in gen_frames if a.info.get("slab_size") == 3} & {
        (3, "bridge"), (3, "hcp")}


def test_chunks_keep_every_structure(tmp_path, default_cfg, gen_frames):
    paths = [tmp_path / "c0.extxyz", tmp_path / "c1.extxyz"]
    write_generalisation_chunks(default_cfg, paths)
    ids = sorted(a.info["structure_id"] for p in paths for a in read(p, index=":"))
    assert ids == sorted(a.info["structure_id"] for a in gen_frames)
    with pytest.raises(ValueError, match="n_chunks"):
        write_generalisation_chunks(default_cfg, paths[:1])


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("subset")
    cfg = tiny_config(max_epochs=1)
    return cfg, write_tiny_dataset(tmp, cfg), tmp


def test_training_subsets_are_nested_group_complete_and_only_training_frames(tiny_dataset):
    _cfg, dataset, _tmp = tiny_dataset
    splits = read_splits(str(dataset), splits=("train", "validation", "test"))
    train = splits["train"]
    held_out = {a.info["dataset_index"] for name in ("validation", "test") for a in splits[name]}
    subsets = {f: training_subset(train, f, seed=0) for f in (0.25, 0.5, 1.0)}
    ids = {f: [a.info["dataset_index"] for a in s] for f, s in subsets.items()}
    assert ids[1.0] == [a.info["dataset_index"] for a in train]
    assert set(ids[0.25]) <= set(ids[0.5]) <= set(ids[1.0])
    assert len(ids[0.25]) < len(ids[0.5]) < len(ids[1.0])
    assert not (set(ids[1.0]) & held_out)
    for subset in subsets.values():
        groups = {group_of(a) for a in subset}
        assert Counter(group_of(a) for a in subset) == Counter(group_of(a) for a in train if group_of(a) in groups)
        assert {a.info["family"] for a in subset} == {a.info["family"] for a in train}  # every family kept
    assert [a.info["dataset_index"] for a in training_subset(train, 0.5, seed=0)] == ids[0.5]
    grid = [set(a.info["dataset_index"] for a in training_subset(train, f, seed=s))
            for s in (0, 1) for f in np.linspace(0.05, 1.0, 20)]
    assert all(small <= large for chain in (grid[:20], grid[20:]) for small, large in zip(chain, chain[1:]))
    with pytest.raises(ValueError, match="fraction"):
        training_subset(train, 0.0, seed=0)


def test_generalisation_split_never_reaches_training(tmp_path, monkeypatch, default_cfg):
    """A dataset that (wrongly) holds generalisation frames: training still reads only its train subset and
    the validation split."""
    cfg = tiny_config(max_epochs=1)
    dataset = write_tiny_dataset(tmp_path / "data", cfg)
    gen = _emt_labelled(build_generalisation_set(default_cfg, kinds=["adatom", "vacancy"]))
    frames = read(dataset, index=":")
    for atoms in gen:
        atoms.arrays["region"] = np.full(len(atoms), "bulk")
        atoms.info["split"] = GENERALISATION_SPLIT
    write(dataset, frames + gen, format="extxyz")
    splits = read_splits(str(dataset), splits=("train", "validation"))
    expected = {str(a.info.get("structure_id", a.info["dataset_index"])) for a in
                training_subset(splits["train"], 0.5, seed=3) + splits["validation"]}
    seen = []
    import pipeline.train.run as run_module

    real = run_module.prepare_samples

    def spy(frames, **kwargs):
        seen.extend(str(a.info.get("structure_id", a.info["dataset_index"])) for a in frames)
        return real(frames, **kwargs)

    monkeypatch.setattr(run_module, "prepare_samples", spy)
    run_training(cfg, stage="hf", dataset=dataset, hf_path=tmp_path / "hf.pt", metrics_path=tmp_path / "hf.csv",
                 state_dir=tmp_path / "state", progress=False, train_fraction=0.5, subset_seed=3)
    assert seen and set(seen) == expected
    assert not any(sid.startswith("gen-") for sid in seen)
    meta = read_checkpoint(tmp_path / "hf.pt")["metadata"]
    assert meta["train_fraction"] == 0.5
    assert meta["n_train_frames"] == len(training_subset(splits["train"], 0.5, seed=3))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, default_cfg):
    """Tiny pairs, a tiny test split and an EMT-labelled generalisation file."""
    tmp = tmp_path_factory.mktemp("gen_acc")
    cfg = tiny_analysis_config()
    pairs = {"independent": write_pair(tmp / "ind", cfg), "cotrained": write_pair(tmp / "cot", cfg, seeds=(4, 5))}
    dataset = write_tiny_dataset(tmp / "data", cfg)
    gen_path = tmp / "generalisation.extxyz"
    write(gen_path, _emt_labelled(build_generalisation_set(default_cfg, kinds=SMALL_KINDS)), format="extxyz")
    return cfg, dataset, pairs, gen_path, tmp


def test_accuracy_table_gains_generalisation_rows_only_with_the_file(evaluated):
    cfg, dataset, pairs, gen_path, _ = evaluated
    plain, _, frames = accuracy_table(cfg, dataset=dataset, pairs=pairs, reference_pair="independent")
    both, _, _ = accuracy_table(cfg, dataset=dataset, pairs=pairs, reference_pair="independent",
                                generalisation=gen_path)
    assert tuple(plain.columns) == COLUMNS
    assert tuple(both.columns) == (*COLUMNS, *SPLIT_COLUMNS)
    test_rows = both[both["split"] == "test"]
    pd.testing.assert_frame_equal(test_rows[list(COLUMNS)].reset_index(drop=True), plain)  # order and values kept
    assert list(both["split"]) == ["test"] * len(plain) + [GENERALISATION_SPLIT] * (len(both) - len(plain))
    gen = both[both["split"] == GENERALISATION_SPLIT].set_index(["model", "region", "family"])
    assert int(gen.loc[("hf", "all", "all"), "n_frames"]) == 2 * len(SMALL_KINDS)
    assert {"near_equilibrium", "slab_co", "clean_slab", "bulk"} <= set(gen.index.get_level_values("family"))
    ref = plain.set_index(["model", "region", "family"])
    key = ("hf", "all", "near_equilibrium")
    assert gen.loc[key, "force_mae_ratio_to_test"] == pytest.approx(
        gen.loc[key, "force_mae_mev_a"] / ref.loc[key, "force_mae_mev_a"])
    assert test_rows["force_mae_ratio_to_test"].isna().all()


@pytest.mark.parametrize("with_file", [True, False])
def test_accuracy_cli_says_which_split(evaluated, with_file):
    cfg, dataset, pairs, gen_path, tmp = evaluated
    out = tmp / f"out_{with_file}"
    args = ["accuracy", "--config-json", json.dumps(cfg.to_dict()), "--dataset", str(dataset),
            "--pairs", "independent", "cotrained",
            "--hf", str(pairs["independent"]["hf"]), str(pairs["cotrained"]["hf"]),
            "--lf", str(pairs["independent"]["lf"]), str(pairs["cotrained"]["lf"]),
            "--csv", str(out / "a.csv"), "--md", str(out / "a.md"), "--png", str(out / "a.png")]
    assert main(args + (["--generalisation", str(gen_path)] if with_file else [])) == 0
    text = (out / "a.md").read_text()
    table = pd.read_csv(out / "a.csv")
    if with_file:
        assert "split 'generalisation'" in text and set(table["split"]) == {"test", GENERALISATION_SPLIT}
    else:
        assert "Generalisation split: absent" in text and "split" not in table.columns


def test_data_learning_curve_cli(evaluated):
    cfg, dataset, pairs, gen_path, tmp = evaluated
    out = tmp / "curve"
    code = main(["data-learning-curve", "--config-json", json.dumps(cfg.to_dict()), "--dataset", str(dataset),
                 "--fractions", "0.5", "1.0", "--hf", str(pairs["cotrained"]["hf"]), str(pairs["independent"]["hf"]),
                 "--generalisation", str(gen_path), "--csv", str(out / "c.csv"), "--md", str(out / "c.md"),
                 "--png", str(out / "c.png")])
    assert code == 0
    table = pd.read_csv(out / "c.csv")
    assert len(table) == 4 and set(table["split"]) == {"test", GENERALISATION_SPLIT}
    sizes = table.drop_duplicates("fraction").set_index("fraction")["n_train_frames"]
    assert sizes[0.5] < sizes[1.0]
    assert table["force_mae_mev_a"].gt(0).all() and (out / "c.png").stat().st_size > 0
    assert "log-log slope" in (out / "c.md").read_text().lower()


def test_ship_writes_the_set_and_a_readme(tmp_path, default_cfg):
    cfg = config_from_dict({"label": {"calculator": "emt"}})
    structures = build_generalisation_set(default_cfg, kinds=["adatom", "step"])
    chunk = tmp_path / "chunk_0.extxyz"
    write(chunk, structures, format="extxyz")
    main(["label", "--config-json", json.dumps(cfg.to_dict()), "--structures", str(chunk), "--output",
          str(tmp_path / "l.extxyz"), "--failures", str(tmp_path / "f.csv"), "--cache-dir", str(tmp_path / "cache"),
          "--log-dir", str(tmp_path / "logs"), "--no-progress"])
    table = ship_generalisation(tmp_path / "l.extxyz", tmp_path / "f.csv", [chunk], tmp_path / "dest",
                                label_cfg=cfg.label, command="snakemake --cores 1 generalisation")
    shipped = read(tmp_path / "dest" / "generalisation.extxyz", index=":")
    assert [a.info["structure_id"] for a in shipped] == [a.info["structure_id"] for a in structures]
    readme = (tmp_path / "dest" / "generalisation_README.md").read_text()
    assert "gen-step-rattle" in readme and "Total CPU time" in readme and "snakemake --cores 1 generalisation" in readme
    assert list(table["status"]) == ["labelled"] * 4


def test_summary_quotes_the_test_split_and_the_generalisation_ratio(evaluated):
    from pipeline.analysis.summary import accuracy_line

    cfg, dataset, pairs, gen_path, _ = evaluated
    plain, _, _ = accuracy_table(cfg, dataset=dataset, pairs=pairs, reference_pair="independent")
    both, _, _ = accuracy_table(cfg, dataset=dataset, pairs=pairs, reference_pair="independent",
                                generalisation=gen_path)
    text_plain, ok_plain = accuracy_line(plain)
    text_both, ok_both = accuracy_line(both)
    assert ok_plain == ok_both and text_both.startswith(text_plain.split(". Criterion")[0])
    assert "generalisation split / test near-equilibrium force MAE: hf" in text_both
