"""Training data: validation errors, sum-rule-corrected targets, splits by structure ID, config YAML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from ase_born.io.extxyz import read_frames, write_frames
from ase_born.models.equivar import BM2
from ase_born.train.config import TrainConfig, config_differences
from ase_born.train.dataset import (
    BornDataset,
    DatasetError,
    collate_samples,
    kfold_by_structure,
    load_splits,
    split_by_structure,
    training_frames,
)

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "train" / "synthetic_catio3.extxyz"


def _frame(sid: str = "s0", n: int = 5, split: str | None = None, seed: int = 0) -> Atoms:
    rng = np.random.default_rng(seed)
    atoms = Atoms(
        ["Ca", "Ti", "O", "O", "O"][:n],
        scaled_positions=rng.random((n, 3)),
        cell=np.eye(3) * 3.9,
        pbc=True,
    )
    atoms.arrays["born_effective_charges"] = rng.standard_normal((n, 3, 3))
    atoms.info["structure_id"] = sid
    if split is not None:
        atoms.info["split"] = split
    return atoms


# ---------------------------------------------------------------- validation errors
def test_targets_are_sum_rule_corrected_and_raw_is_kept():
    frames = [_frame("a", seed=1), _frame("b", seed=2)]
    ds = BornDataset.from_frames(frames, r_max=3.0)
    for s, a in zip(ds.samples, frames):
        raw = a.arrays["born_effective_charges"]
        np.testing.assert_array_equal(s.target_raw, raw)
        np.testing.assert_allclose(s.target, raw - raw.mean(axis=0), atol=1e-15)
        np.testing.assert_allclose(s.target.sum(axis=0), 0.0, atol=1e-12)
    batch = collate_samples(ds.samples, dtype="float64")
    assert batch.target.shape == (10, 3, 3) and batch.structure_ids == ("a", "b")
    assert ds.elements == [8, 20, 22] and ds.n_atoms == 10


def test_missing_born_charges():
    a = _frame("nobec")
    del a.arrays["born_effective_charges"]
    with pytest.raises(
        DatasetError, match=r"frame 0 \(structure_id=nobec\): frame has no 'born_effective_charges'"
    ):
        BornDataset.from_frames([a])


def test_wrong_shape():
    a = _frame("shape")
    a.arrays["born_effective_charges"] = np.zeros((5, 3))
    with pytest.raises(DatasetError, match=r"structure_id=shape.*shape \(5, 3\)"):
        BornDataset.from_frames([a])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite(bad):
    a = _frame("nan")
    a.arrays["born_effective_charges"][3, 1, 2] = bad
    with pytest.raises(DatasetError, match=r"non-finite .*atoms \[3\]"):
        BornDataset.from_frames([_frame("ok"), a])
    b = _frame("pos")
    b.positions[0, 0] = np.nan
    with pytest.raises(DatasetError, match="non-finite positions"):
        BornDataset.from_frames([b])
    c = _frame("nocell")
    c.cell = np.zeros((3, 3))
    c.pbc = True  # periodic without lattice vectors: the graph builder's error, with the frame named
    with pytest.raises(DatasetError, match=r"frame 0 \(structure_id=nocell\): .*zero cell vector"):
        BornDataset.from_frames([c])


def test_elements_outside_embedding_table():
    a = _frame("heavy")
    a.numbers[0] = 100  # Fm: the table has rows 0..99, valid Z 1..99
    with pytest.raises(DatasetError, match=r"atomic numbers \[100\].*valid: 1..99"):
        BornDataset.from_frames([a])
    a.numbers[0] = 0
    with pytest.raises(DatasetError, match=r"atomic numbers \[0\]"):
        BornDataset.from_frames([a])
    a.numbers[0] = 30
    with pytest.raises(DatasetError, match="valid: 1..19"):
        BornDataset.from_frames([a], num_species=20)


def test_empty(tmp_path):
    with pytest.raises(DatasetError, match="no frames"):
        BornDataset.from_frames([])
    empty = tmp_path / "empty.extxyz"
    empty.write_text("")
    with pytest.raises(DatasetError, match="empty file"):
        load_splits([empty])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_splits([tmp_path / "missing.extxyz"])
    only_test = tmp_path / "test_only.extxyz"
    write_frames(only_test, [_frame(f"t{i}", split="test", seed=i) for i in range(3)])
    with pytest.raises(DatasetError, match="no non-TEST frames"):
        load_splits([only_test])
    with pytest.raises(DatasetError, match="no training files"):
        load_splits([])


def test_bad_split_tag_and_leaks(tmp_path):
    f = tmp_path / "tag.extxyz"
    write_frames(f, [_frame("a", split="validation"), _frame("b")])
    with pytest.raises(DatasetError, match="info\\['split'\\] must be one of"):
        load_splits([f])
    train_f, val_f = tmp_path / "train.extxyz", tmp_path / "val.extxyz"
    write_frames(train_f, [_frame(f"s{i}", seed=i) for i in range(4)])
    write_frames(val_f, [_frame("v0", seed=9, split="test")])
    with pytest.raises(DatasetError, match="validation file contains a TEST frame"):
        load_splits([train_f], val_file=val_f)
    write_frames(val_f, [_frame("s1", seed=9)])
    with pytest.raises(DatasetError, match=r"\['s1'\] are in both the train and the val set"):
        load_splits([train_f], val_file=val_f)
    # frames without structure_id: the same structures as TEST under another path are refused
    plain = [_frame(f"p{i}", seed=20 + i) for i in range(6)]
    for a in plain:
        del a.info["structure_id"]
    write_frames(tmp_path / "noid.extxyz", plain)
    with pytest.raises(DatasetError, match=r"6 structure\(s\) of the train set are also in the test set"):
        load_splits([tmp_path / "noid.extxyz"], test_file=f"{tmp_path}/./noid.extxyz", val_fraction=0.0)
    # ... also with the atoms listed in another order, or one moved by a lattice vector
    moved = [a.copy() for a in plain[:2]]
    moved[0] = moved[0][[4, 2, 0, 3, 1]]
    moved[1].positions[2] += moved[1].cell[0] - moved[1].cell[2]
    write_frames(tmp_path / "moved.extxyz", moved)
    with pytest.raises(DatasetError, match=r"2 structure\(s\) of the train set are also in the test set"):
        load_splits([tmp_path / "noid.extxyz"], test_file=tmp_path / "moved.extxyz", val_fraction=0.0)


def test_training_frames_drop_test_and_select_by_id():
    frames = [_frame("a"), _frame("b", split="TEST "), _frame("c", split="train"), _frame("d")]
    ids = lambda fs: [f.info["structure_id"] for f in fs]
    assert ids(training_frames(frames)) == ["a", "c", "d"]
    assert ids(training_frames(frames, {"a", "b", "d"})) == ["a", "d"]  # b is TEST
    assert ids(training_frames(frames, ["a", "b"], exclude=True)) == ["c", "d"]
    assert training_frames(frames, []) == []
    with pytest.raises(DatasetError, match="must be one of"):
        training_frames([_frame("e", split="val")])


# ---------------------------------------------------------------- splits
def test_split_by_structure_is_deterministic_and_grouped():
    ids = [f"id{i // 2}" for i in range(40)]  # two frames per structure
    tr, va = split_by_structure(ids, 0.2, seed=5)
    assert sorted(tr + va) == list(range(40))
    assert {ids[i] for i in tr}.isdisjoint({ids[i] for i in va})
    assert len({ids[i] for i in va}) == 4  # 20 % of 20 IDs
    assert (tr, va) == split_by_structure(ids, 0.2, seed=5)
    assert (tr, va) != split_by_structure(ids, 0.2, seed=6)
    assert (tr, va) == split_by_structure(list(ids), 0.2, seed=5)
    folds = kfold_by_structure(ids, 5, seed=0)
    assert len(folds) == 5
    val_ids = [{ids[i] for i in va} for _, va in folds]
    assert set().union(*val_ids) == set(ids) and sum(len(v) for v in val_ids) == 20
    with pytest.raises(DatasetError, match="at least 2"):
        split_by_structure(["x", "x"], 0.2)


def test_load_splits_uses_the_fixed_test_split(tmp_path):
    frames = read_frames(DATA)
    test_ids = {a.info["structure_id"] for a in frames if a.info["split"] == "test"}
    splits = load_splits([DATA], seed=0)
    assert set(splits.test.structure_ids) == test_ids
    assert len(splits.train) + len(splits.val) == len(frames) - len(test_ids)
    assert len(splits.val) == round(0.2 * (len(frames) - len(test_ids)))
    other = load_splits([DATA], seed=1)
    assert set(other.test.structure_ids) == test_ids  # TEST never depends on the seed
    assert set(other.val.structure_ids) != set(splits.val.structure_ids)
    cv = [load_splits([DATA], folds=3, fold=k) for k in range(3)]
    assert sum(len(s.val) for s in cv) == len(frames) - len(test_ids)
    assert all(set(s.test.structure_ids) == test_ids for s in cv)
    assert splits.fingerprint() == load_splits([DATA], seed=0).fingerprint() != other.fingerprint()
    # the same positions in other cells (or with other periodicity) are other graphs: other data
    for change in ("cell", "pbc"):
        moved = read_frames(DATA)
        for a in moved:
            if change == "cell":
                a.set_cell(a.cell.array * 1.3, scale_atoms=False)
            else:
                a.pbc = [True, True, False]
        write_frames(tmp_path / f"{change}.extxyz", moved)
        assert load_splits([tmp_path / f"{change}.extxyz"], seed=0).fingerprint() != splits.fingerprint()


def test_separate_test_and_val_files(tmp_path):
    tr, va, te = tmp_path / "tr.extxyz", tmp_path / "va.extxyz", tmp_path / "te.extxyz"
    write_frames(
        tr, [_frame(f"tr{i}", seed=i) for i in range(5)] + [_frame("tagged", split="test", seed=7)]
    )
    write_frames(va, [_frame(f"va{i}", seed=10 + i) for i in range(2)])
    write_frames(te, [_frame(f"te{i}", seed=20 + i, split="train") for i in range(3)])
    s = load_splits([tr], val_file=va, test_file=te)
    assert s.train.structure_ids == [f"tr{i}" for i in range(5)]
    assert s.val.structure_ids == ["va0", "va1"]
    assert s.test.structure_ids == ["tagged", "te0", "te1", "te2"]


def test_final_fit_val_fraction_zero_trains_on_all_non_test(tmp_path):
    tr = tmp_path / "tr.extxyz"
    write_frames(tr, [_frame("a", seed=1), _frame("b", seed=2), _frame("t", split="test", seed=3)])
    s = load_splits([tr], val_fraction=0.0)
    assert s.train.structure_ids == ["a", "b"] and s.val is s.train  # no held-out validation
    assert s.test.structure_ids == ["t"]
    with pytest.raises(ValueError, match="excludes val_file"):
        TrainConfig(val_fraction=0.0, val_file="v.extxyz")


# ---------------------------------------------------------------- config
def test_config_yaml_round_trip(tmp_path):
    cfg = TrainConfig(
        model={"preset": "BM2", "r_max": 3.5},
        train_files="a.extxyz",
        epochs=7,
        ema_decay=0.99,
        lr_schedule="cosine",
        mixed_precision="bf16",
    )
    assert cfg.model_config().r_max == 3.5 and cfg.model_config().int_num_feat == BM2.int_num_feat
    assert cfg.train_files == ("a.extxyz",)
    cfg.to_yaml(tmp_path / "c.yaml")
    back = TrainConfig.from_yaml(tmp_path / "c.yaml")
    assert back == cfg
    d = TrainConfig()
    assert (d.loss, d.optimizer, d.lr, d.val_fraction, d.loss_on, d.lr_schedule) == (
        "l1", "adamw", 5e-3, 0.2, "raw", "none",
    )  # fmt: skip
    assert config_differences(TrainConfig(model="BM2"), TrainConfig(model=BM2.to_dict())) == {}
    # YAML 1.1 reads 5e-3 (no dot) as a string: numeric fields are converted, not compared as str
    (tmp_path / "e.yaml").write_text("lr: 5e-3\nweight_decay: 1e-4\nlr_min: 1e-5\nepochs: 1e2\n")
    e = TrainConfig.from_yaml(tmp_path / "e.yaml")
    assert (e.lr, e.weight_decay, e.lr_min, e.epochs) == (5e-3, 1e-4, 1e-5, 100)
    assert isinstance(e.epochs, int) and isinstance(e.lr, float)
    diff = config_differences(TrainConfig(lr=1e-3, epochs=3), TrainConfig(epochs=5))
    assert diff == {"lr": (1e-3, 5e-3)}  # epochs may change on resume
    # a field without effect in both runs does not block a resume (plateau_patience without
    # the plateau schedule was refused as "a different training config")
    assert config_differences(TrainConfig(plateau_patience=5), TrainConfig(plateau_patience=20)) == {}
    assert config_differences(TrainConfig(huber_delta=0.1, optimizer="adam", weight_decay=0.5),
                              TrainConfig(optimizer="adam")) == {}
    assert config_differences(TrainConfig(lr_schedule="plateau", plateau_patience=5),
                              TrainConfig(lr_schedule="plateau")) == {"plateau_patience": (5, 10)}
    assert config_differences(TrainConfig(lr_min=1e-5), TrainConfig(lr_schedule="cosine")) == {
        "lr_min": (1e-5, 0.0), "lr_schedule": ("none", "cosine")}


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"loss": "l2"}, "loss must be one of"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"model": "BM3"}, "unknown preset"),
        ({"model": {"int_num_feet": 8}}, "unknown EquivarConfig keys"),
        ({"ema_decay": 1.5}, "ema_decay"),
        ({"device": "tpu"}, "device"),
        ({"folds": 5, "val_file": "v.extxyz"}, "exclude each other"),
        ({"lr": "fast"}, "lr must be a number, got 'fast'"),
        ({"epochs": 2.5}, "epochs must be an integer"),
        ({"weight_decay": True}, "weight_decay must be a number"),
        ({"lr_min": -1e-5}, "lr_min must be >= 0"),
        ({"plateau_factor": 1.5}, "plateau_factor"),
        ({"plots": "false"}, "plots must be true or false, got 'false'"),  # a quoted YAML value
        ({"progress": 0}, "progress must be true or false"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_config_unknown_yaml_key(tmp_path):
    (tmp_path / "c.yaml").write_text("model: BM2\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys: \['learning_rate'\]"):
        TrainConfig.from_yaml(tmp_path / "c.yaml")


def test_example_configs_load():
    bm2 = TrainConfig.from_yaml(REPO / "examples" / "configs" / "equivar_bm2_catio3.yaml")
    assert bm2.model_config() == BM2 and bm2.epochs == 500 and bm2.loss == "l1" and bm2.lr == 5e-3
    assert bm2.optimizer == "adamw" and bm2.train_files == ("data/dft/catio3_dfpt.extxyz",)
    tiny = TrainConfig.from_yaml(REPO / "examples" / "configs" / "equivar_tiny_cpu.yaml")
    assert (REPO / tiny.train_files[0]).is_file() and tiny.device == "cpu"
