"""DFT pipeline without ABINIT: inputs, sampler, resume logic (fake runner)."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import spglib
from ase import Atoms
from ase.neighborlist import neighbor_list

from ase_born.conventions import BOHR_A
from ase_born.dft import abinit as dft_abinit
from ase_born.dft.abinit import (
    ABINIT_DEFAULT_DIEMAC,
    PARTIAL_SECONDS,
    PARTIAL_WFK,
    TOLERANCE_KEYS,
    AbinitError,
    AbinitSettings,
    make_inputs,
    n_occupied_bands,
    read_marker,
    run_structure,
)
from ase_born.dft.pipeline import (
    CALLS_FILE,
    CostModel,
    check_settings,
    finished_ids,
    kept_steps,
    machine_frames,
    machine_kept,
    print_status,
    resolve_step_level,
    run_plan,
    status,
    step_load,
    structure_settings,
    work_units,
    workdir_lock,
)
from ase_born.dft.sampler import (
    einstein_sigma,
    is_test_id,
    make_plan,
    make_structure,
    pnma_catio3,
    tilted_perovskite,
)
from ase_born.io.abinit import read_abinit_output
from ase_born.io.extxyz import get_born_charges, read_frames, write_frames

DATA = Path(__file__).parents[1] / "data" / "abinit"
REPO = Path(__file__).resolve().parents[2]
needs_psp = pytest.mark.skipif(
    not Path("/usr/share/abinit/psp/Ti.psp8").is_file(), reason="abinit-data pseudopotentials not installed"
)
#: a grace as long as the ground states' time-limit margin: admission against the deadline alone
#: (the background script's setting), for tests of other rules on ground states of minutes
GRACE = dft_abinit.GS_TIMELIMIT_MARGIN_S


def _var(text, name):
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.split()[:1] == [name]:
            return line.split()[1:], lines[i + 1 : i + 40]
    raise KeyError(name)


@needs_psp
@pytest.mark.parametrize("kind", ["cubic5", "tilt10", "pnma20", "pnma_eq"])
def test_inputs_for_each_structure_type(kind):
    atoms = pnma_catio3() if kind == "pnma_eq" else make_structure(kind, 3)
    s = AbinitSettings()
    inp = make_inputs(atoms, s)
    n = len(atoms)
    nfu = n // 5
    for text in inp.values():
        assert f"natom {n}" in text
        assert f"nband {20 * nfu}" in text  # 40 valence electrons per CaTiO3, occupied only
        assert "ixc -116133" in text and "occopt 1" in text and "tolsym 1.0e-8" in text
        # structure in Bohr reproduces the cell and positions
        rprim = np.array(text.split("rprim\n")[1].split("natom")[0].split(), float).reshape(3, 3)
        np.testing.assert_allclose(rprim * BOHR_A, atoms.cell.array, atol=1e-10)
        xred = np.array(text.split("xred\n")[1].split("pp_dirpath")[0].split(), float).reshape(n, 3)
        np.testing.assert_allclose(xred @ atoms.cell.array, atoms.positions, atol=1e-10)
        ngkpt = [int(x) for x in _var(text, "ngkpt")[0]]
        assert ngkpt == s.kmesh(atoms)
    assert "kptopt 1" in inp["gs"] and "optstress 1" in inp["gs"]
    for d, rfdir in enumerate(("1 0 0", "0 1 0", "0 0 1")):
        ddk = inp[f"ddk{d + 1}"]
        assert "rfelfd 2" in ddk and "iscf -3" in ddk and "kptopt 2" in ddk
        assert f"rfdir {rfdir}" in ddk and f'outdata_prefix "ddk{d + 1}_o"' in ddk
    assert "rfelfd 3" in inp["efield"] and "rfphon 0" in inp["efield"] and "kptopt 2" in inp["efield"]
    # E-field tolerance per 5 atoms (vres2 is a sum over the FFT grid): 1e-6 / 2e-6 / 4e-6
    for step in ("efield1", "efield2", "efield3", "efield"):
        assert float(_var(inp[step], "tolvrs")[0][0]) == pytest.approx(1e-6 * nfu)
    typat = [int(x) for x in _var(inp["gs"], "typat")[0]]
    znucl = [int(x) for x in _var(inp["gs"], "znucl")[0]]
    assert [znucl[t - 1] for t in typat] == list(atoms.numbers)


@needs_psp
def test_kmesh_and_bands():
    s = AbinitSettings()  # production k density 3.6 per Å⁻¹
    assert s.kmesh(make_structure("cubic5", 0)) == [6, 6, 6]
    assert s.kmesh(pnma_catio3()) == [5, 3, 5]
    assert AbinitSettings(kpt_density=2.4).kmesh(pnma_catio3()) == [3, 2, 3]
    assert n_occupied_bands(pnma_catio3(), s) == 80
    with pytest.raises(ValueError, match="no pseudopotential"):
        make_inputs(__import__("ase.build", fromlist=["bulk"]).bulk("Cu"), s)


def test_efield_tolerance_scales_with_the_cell():
    s = AbinitSettings()
    assert s.tolvrs_efield_atoms == 5
    assert [s.efield_tolvrs(n) for n in (2, 5, 10, 20, 40)] == pytest.approx([1e-6, 1e-6, 2e-6, 4e-6, 8e-6])
    assert AbinitSettings(tolvrs_efield_atoms=0).efield_tolvrs(20) == 1e-6
    assert AbinitSettings(tolvrs_efield=1e-8, tolvrs_efield_atoms=10).efield_tolvrs(20) == pytest.approx(2e-8)
    # round trip; a record from before the key existed ran unscaled and reads so
    assert AbinitSettings.from_dict(s.to_dict()) == s
    old = s.to_dict()
    del old["tolvrs_efield_atoms"]
    assert AbinitSettings.from_dict(old).efield_tolvrs(20) == 1e-6
    assert "tolvrs_efield_atoms" in TOLERANCE_KEYS  # may change between structures of a dataset
    for bad in (-1, 2.5, None):
        with pytest.raises(ValueError, match="tolvrs_efield_atoms"):
            AbinitSettings(tolvrs_efield_atoms=bad)


@needs_psp
def test_diemac_reaches_the_scf_steps_and_old_records_read_abinit_default():
    atoms = make_structure("cubic5", 0)
    inp = make_inputs(atoms, AbinitSettings(diemac=6.0))
    for step in ("gs", "efield1", "efield2", "efield3", "efield", "ddk1"):
        assert [float(x) for x in _var(inp[step], "diemac")[0]] == [6.0]
    # ABINIT's default written out, in a form ABINIT reads (no Python "1e+06")
    assert "diemac 1000000.0\n" in make_inputs(atoms, AbinitSettings(diemac=ABINIT_DEFAULT_DIEMAC))["gs"]
    s = AbinitSettings(diemac=6.0)
    assert AbinitSettings.from_dict(s.to_dict()) == s
    old = s.to_dict()
    del old["diemac"]  # frames and run directories from before session 42
    assert AbinitSettings.from_dict(old).diemac == ABINIT_DEFAULT_DIEMAC
    assert "diemac" in TOLERANCE_KEYS  # the SCF path, not its result: may change within a dataset
    for bad in (0.5, 0.0, -6.0, float("nan")):
        with pytest.raises(ValueError, match="diemac"):
            AbinitSettings(diemac=bad)


def test_sampler_structures():
    pn = pnma_catio3()
    assert spglib.get_spacegroup((pn.cell, pn.get_scaled_positions(), pn.numbers)) == "Pnma (62)"
    for pattern, sg in (("a0a0c+", "P4/mbm (127)"), ("a-a-a-", "R-3c (167)")):
        t = tilted_perovskite(pattern, 8.0)
        assert len(t) == 10 and t.get_chemical_formula() == "Ca2O6Ti2"
        assert spglib.get_spacegroup((t.cell, t.get_scaled_positions(), t.numbers), symprec=1e-3) == sg
        i, j, d = neighbor_list("ijd", t, 2.1)  # all periodic images
        ti_o = (t.numbers[i] == 22) & (t.numbers[j] == 8)
        assert np.bincount(i[ti_o], minlength=10)[t.numbers == 22].tolist() == [6, 6]  # intact TiO6
        assert d[ti_o].max() < 1.99
    # every plan structure is right-handed (ABINIT refuses left-handed cells)
    assert all(np.linalg.det(a.cell.array) > 0 for a in make_plan(10, 10, 2))
    left = pn.copy()
    left.set_cell(pn.cell.array[[1, 0, 2]], scale_atoms=False)
    with pytest.raises(ValueError, match="left-handed"):
        make_inputs(left, AbinitSettings())
    # deterministic and independent of other kinds
    a, b = make_structure("cubic5", 7), make_structure("cubic5", 7)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert einstein_sigma("O", 1200) == pytest.approx(2 * einstein_sigma("O", 300))


def test_plan_ids_split_and_order():
    plan = make_plan()
    ids = [a.info["structure_id"] for a in plan]
    assert len(ids) == len(set(ids)) == 150
    assert ids[:3] == ["cubic5_0000", "tilt10_0000", "pnma_eq"]
    kinds = [a.info["kind"] for a in plan]
    assert kinds.count("cubic5") == 90 and kinds.count("tilt10") == 48 and kinds.count("pnma20") == 11
    assert set(kinds[:8]) == {"cubic5", "tilt10", "pnma_eq", "pnma20"}
    # fixed split is a function of the ID only, pnma_eq is TEST
    assert all((a.info["split"] == "test") == is_test_id(a.info["structure_id"]) for a in plan)
    assert is_test_id("pnma_eq")
    n_test = sum(a.info["split"] == "test" for a in plan)
    assert 15 <= n_test <= 45
    # a smaller plan gives the same IDs the same structures
    small = make_plan(5, 3, 1)
    for s in small:
        if s.info["structure_id"] != "pnma_eq":
            big = plan[ids.index(s.info["structure_id"])]
            np.testing.assert_array_equal(s.positions, big.positions)


def test_committed_plan_is_the_sampler_output_and_its_test_split_is_pinned():
    """The committed plan (the pipeline's input; its TEST split decides every reported error)
    is exactly make_plan(): a change of seed, RNG key, σ formula or split rule would silently
    give the same IDs other structures or move structures between TEST and train."""
    from ase_born.dft.sampler import einstein_sigma

    committed = read_frames(REPO / "data" / "dft" / "plan_catio3.extxyz")
    plan = make_plan()
    assert [a.info["structure_id"] for a in committed] == [a.info["structure_id"] for a in plan]
    for c, p in zip(committed, plan):
        assert c.info["split"] == p.info["split"] and c.info["kind"] == p.info["kind"]
        np.testing.assert_allclose(c.positions, p.positions, atol=1e-10)
        np.testing.assert_allclose(c.cell.array, p.cell.array, atol=1e-10)
    test_ids = sorted(a.info["structure_id"] for a in plan if a.info["split"] == "test")
    assert [s for s in test_ids if s.startswith("cubic5")][:8] == [
        "cubic5_0000", "cubic5_0006", "cubic5_0011", "cubic5_0017",
        "cubic5_0025", "cubic5_0027", "cubic5_0028", "cubic5_0029"]
    assert "pnma_eq" in test_ids
    # Einstein σ = sqrt(k_B T / (m ω²)), ω = 2π ν, from ASE's units independently
    from ase.data import atomic_masses, atomic_numbers
    from ase.units import kB, second

    for sym, nu_thz in (("O", 9.0), ("Ca", 4.5), ("Ti", 6.0)):
        omega = 2 * np.pi * nu_thz * 1e12 / second  # 1/(ASE time)
        k = atomic_masses[atomic_numbers[sym]] * omega**2  # eV/Å²
        assert einstein_sigma(sym, 300.0) == pytest.approx(np.sqrt(kB * 300.0 / k), rel=1e-6)
    assert einstein_sigma("O", 300.0) == pytest.approx(0.0715, abs=0.002)


def _fake_plan(tmp_path, n=4):
    base = read_abinit_output(DATA / "gs.abo")
    frames = []
    for i in range(n):
        a = base.copy()
        a.info.update(structure_id=f"s{i}", kind="cubic5" if i % 2 == 0 else "tilt10", split="train")
        frames.append(a)
    write_frames(tmp_path / "plan.xyz", frames)
    return tmp_path / "plan.xyz"


class FakeAbinit:
    """Stands in for run_structure: copies the real test outputs into the run directory."""

    def __init__(self, fail_ids=()):
        self.calls = []
        self.fail_ids = set(fail_ids)

    def __call__(self, structure, settings, directory, ranks, timeout_s, nice, stop_event, **kw):
        sid = structure.info["structure_id"]
        self.calls.append(sid)
        if sid in self.fail_ids:
            raise AbinitError("gs: SCF not converged in nstep iterations")
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA / "gs.abo", directory / "gs.abo")
        shutil.copy(DATA / "efield.abo", directory / "efield.abo")  # one efield run, printed tables
        (directory / "efield.done").write_text("20.0\n")
        return {"gs": 10.0, "ddk": 5.0, "efield": 20.0}


def test_resume_half_done_plan_completes_only_the_rest(tmp_path):
    plan = _fake_plan(tmp_path)
    out, work = tmp_path / "data.xyz", tmp_path / "runs"
    fake = FakeAbinit()
    counts = run_plan(plan, out, work, max_structures=2, runner=fake, log=lambda m: None)
    assert counts["finished"] == 2 and fake.calls == ["s0", "s1"]
    assert finished_ids(out) == {"s0", "s1"}
    fake2 = FakeAbinit()
    counts = run_plan(plan, out, work, runner=fake2, log=lambda m: None)
    assert fake2.calls == ["s2", "s3"] and counts["finished"] == 2
    frames = read_frames(out)
    assert [f.info["structure_id"] for f in frames] == ["s0", "s1", "s2", "s3"]
    ref = read_abinit_output(DATA / "gs.abo", DATA / "efield.abo")
    np.testing.assert_array_equal(get_born_charges(frames[3]), get_born_charges(ref))
    assert frames[0].info["wall_s"] == pytest.approx(35.0)
    assert frames[0].info["epsilon_inf"].shape == (3, 3)
    st = status(plan, out, work)
    assert st["done"] == 4 and st["kinds"]["cubic5"]["done"] == 2 and st["extra"] == []
    # the largest raw sum-rule violation per formula unit (5 atoms), over the frames
    want = max(np.abs(get_born_charges(f).sum(axis=0)).max() / (len(f) / 5) for f in frames)
    assert st["max_asr_violation_per_formula_unit_e"] == pytest.approx(want, rel=1e-9)
    # a frame that is not in the plan (the convergence cell) is listed, not counted as plan progress
    extra = frames[0].copy()
    extra.info["structure_id"] = "conv_cubic"
    write_frames(out, extra, append=True)
    st = status(plan, out, work)
    assert st["done"] == 4 and st["extra"] == ["conv_cubic"]
    # nothing left: a third run computes nothing
    fake3 = FakeAbinit()
    run_plan(plan, out, work, runner=fake3, log=lambda m: None)
    assert fake3.calls == []


def test_failures_recorded_and_not_retried_forever(tmp_path):
    """The count of failed attempts is kept beside the dataset (committed with it), so it
    survives the fresh machine (new work directory) of every session."""
    plan = _fake_plan(tmp_path, n=2)
    out = tmp_path / "data" / "dft.xyz"
    for attempt in range(3):
        fake = FakeAbinit(fail_ids={"s1"})
        run_plan(plan, out, tmp_path / f"runs{attempt}", runner=fake, max_attempts=2, log=lambda m: None)
        assert ("s1" in fake.calls) == (attempt < 2)
    failures = json.loads((out.parent / "failures.json").read_text())
    assert len(failures["s1"]) == 2 and "SCF not converged" in failures["s1"][0]["reason"]
    assert failures["s1"][0]["type"] == "AbinitError"
    assert finished_ids(out) == {"s0"}
    assert status(plan, out, tmp_path / "runs9")["failures"] == {"s1": failures["s1"][-1]["reason"]}
    # the older location in the work directory is still read
    old = [{"reason": "gs: SCF not converged in nstep iterations", "time": t} for t in (1.0, 2.0)]
    (tmp_path / "runs_old").mkdir()
    (tmp_path / "runs_old" / "failures.json").write_text(json.dumps({"s0": old}))
    fake = FakeAbinit()
    run_plan(plan, tmp_path / "data2" / "dft.xyz", tmp_path / "runs_old", runner=fake, max_attempts=2,
             log=lambda m: None)
    assert fake.calls == ["s1"]


def test_settings_mismatch_refused(tmp_path):
    check_settings(tmp_path, AbinitSettings())
    check_settings(tmp_path, AbinitSettings())
    with pytest.raises(ValueError, match="different ABINIT settings"):
        check_settings(tmp_path, AbinitSettings(ecut_Ha=40.0))
    with pytest.raises(ValueError, match="kpt_density"):
        check_settings(tmp_path, AbinitSettings(kpt_density=2.4, tolwfr_ddk=1e-20))
    # tolerances may change
    check_settings(tmp_path, AbinitSettings(tolwfr_ddk=1e-20))
    assert json.loads((tmp_path / "settings.json").read_text())["tolwfr_ddk"] == 1e-20


def test_structure_finishes_with_the_tolerances_it_started_with(tmp_path):
    """A run with tighter tolerances finishes a half-done structure with its old ones."""
    plan = _fake_plan(tmp_path, n=4)
    out, work = tmp_path / "data.xyz", tmp_path / "runs"
    old, new = AbinitSettings(tolwfr_ddk=1e-12), AbinitSettings(tolwfr_ddk=1e-16, tolvrs_efield=1e-8)
    run_plan(plan, out, work, settings=old, max_structures=1, runner=FakeAbinit(), log=lambda m: None)
    # s1 was interrupted after its ground state, with a settings record
    (work / "s1").mkdir(parents=True)
    (work / "s1" / "settings.json").write_text(json.dumps(old.to_dict()))
    (work / "s1" / "gs.done").write_text("1.0\n")
    # s2 and s3 were interrupted after their ground state by a version that wrote no record
    for sid in ("s2", "s3"):
        (work / sid).mkdir()
        (work / sid / "gs.done").write_text("1.0\n")
    seen = {}

    class Recording(FakeAbinit):
        def __call__(self, structure, settings, directory, **kw):
            seen[structure.info["structure_id"]] = settings
            return super().__call__(structure, settings, directory, **kw)

    # the first run with new tolerances computes only s1; s3, computed by a later run
    # with the same new tolerances, still finishes with the old ones
    messages = []
    run_plan(plan, out, work, settings=new, runner=Recording(), only_ids=["s1"], log=messages.append)
    run_plan(plan, out, work, settings=new, runner=Recording(), log=lambda m: None)
    assert seen == {"s1": old, "s2": old, "s3": old}
    assert any("s1: finishing with the tolerances it started with" in m for m in messages)
    frames = {f.info["structure_id"]: f for f in read_frames(out)}
    for sid in ("s0", "s1", "s2", "s3"):
        assert json.loads(frames[sid].info["dft_settings"]) == old.to_dict()
    # a structure not started before gets the new tolerances; so does one whose record
    # exists but no step finished (a failed ground state retried with a larger nstep)
    plan6 = _fake_plan(tmp_path, n=6)
    (work / "s5").mkdir()
    (work / "s5" / "settings.json").write_text(json.dumps(old.to_dict()))
    seen.clear()
    run_plan(plan6, out, work, settings=new, runner=Recording(), log=lambda m: None)
    assert seen == {"s4": new, "s5": new}
    assert json.loads(read_frames(out)[-1].info["dft_settings"])["tolwfr_ddk"] == 1e-16
    # a recorded structure with other physics settings is refused (recorded as a failure)
    (work / "s6").mkdir()
    (work / "s6" / "settings.json").write_text(json.dumps(AbinitSettings(tolwfr_ddk=1e-12, ecut_Ha=40.0).to_dict()))
    (work / "s6" / "gs.done").write_text("1.0\n")
    with pytest.raises(ValueError, match="ecut_Ha"):
        structure_settings(work / "s6", new)


def test_started_structure_takes_looser_tolerances(tmp_path):
    """Tolerances no tighter than those a structure started with reach its remaining steps
    (the finished ones met them too) and replace its record; a tighter one does not."""
    d = tmp_path / "s"
    d.mkdir()
    before = AbinitSettings().to_dict()
    del before["tolvrs_efield_atoms"]  # a record from before session 41: E-field tolvrs 1e-6 unscaled
    (d / "settings.json").write_text(json.dumps(before))
    (d / "gs.done").write_text("1.0\n")
    messages = []
    # 5 atoms: 1e-6 either way (no tighter), the record gains the key
    assert structure_settings(d, AbinitSettings(), 5, messages.append) == AbinitSettings()
    assert json.loads((d / "settings.json").read_text())["tolvrs_efield_atoms"] == 5
    assert "remaining steps take the requested tolerances" in messages[0] and "tolvrs_efield_atoms" in messages[0]
    # 20 atoms: 4e-6 instead of 1e-6 is looser: taken
    (d / "settings.json").write_text(json.dumps(before))
    own = structure_settings(d, AbinitSettings(), 20)
    assert own == AbinitSettings() and own.efield_tolvrs(20) == pytest.approx(4e-6)
    # tighter in one tolerance (or a smaller nstep): the recorded settings stay, untouched
    for tighter in (AbinitSettings(tolwfr_ddk=1e-16), AbinitSettings(nstep=40),
                    AbinitSettings(tolvrs_efield=1e-7)):
        (d / "settings.json").write_text(json.dumps(before))
        assert structure_settings(d, tighter, 20) == AbinitSettings.from_dict(before)
        assert json.loads((d / "settings.json").read_text()) == before
    # without natoms (the old call) the recorded settings stay
    assert structure_settings(d, AbinitSettings()) == AbinitSettings.from_dict(before)


def test_run_structure_resumes_at_first_unfinished_step(tmp_path, monkeypatch):
    calls, links = [], {}

    def fake_step(directory, step, ranks, timeout_s, nice=19, stop_event=None):
        calls.append(step)
        if step.startswith("ddk"):
            d = int(step[3])
            (directory / f"ddk{d}_o_1WF{15 + d}").write_text("ddk")
        if step.startswith("efield"):
            d = int(step[6])
            links[step] = {p.name: p.resolve().name for p in directory.glob("in_1WF*")}
            (directory / f"ef{d}_o_DDB").write_text(f"ddb {d}")
        return 1.0

    monkeypatch.setattr(dft_abinit, "run_step", fake_step)
    atoms = make_structure("cubic5", 0)
    d = tmp_path / "s"
    d.mkdir()
    (d / "gs.done").write_text("123.0\n")  # ground state finished before a kill
    (d / "gs_o_WFK").write_text("wavefunctions")
    (d / "ddk1.done").write_text("7.0\n")  # first ddk direction finished too
    (d / "ddk1_o_1WF16").write_text("ddk")
    done = []
    timings = run_structure(atoms, AbinitSettings(), d, cleanup=False, on_direction=done.append)
    assert calls == ["efield1", "ddk2", "efield2", "ddk3", "efield3"]
    assert done == [1, 2, 3]
    assert timings == {"gs": 123.0, "ddk": 9.0, "efield": 3.0}
    assert "rfdir 0 1 0" in (d / "ddk2.abi").read_text() and "rfdir 0 0 1" in (d / "efield3.abi").read_text()
    # efield{d} reads the GS WFK and the ddk files of directions 1..d through in_* links
    assert (d / "in_WFK").resolve() == (d / "gs_o_WFK").resolve()
    assert links == {
        "efield1": {"in_1WF16": "ddk1_o_1WF16"},
        "efield2": {"in_1WF16": "ddk1_o_1WF16", "in_1WF17": "ddk2_o_1WF17"},
        "efield3": {"in_1WF16": "ddk1_o_1WF16", "in_1WF17": "ddk2_o_1WF17", "in_1WF18": "ddk3_o_1WF18"},
    }
    assert [(d / f"efield{i}.ddb").read_text() for i in (1, 2, 3)] == ["ddb 1", "ddb 2", "ddb 3"]
    calls.clear()
    run_structure(atoms, AbinitSettings(), d, cleanup=True)
    assert calls == []  # all steps done
    assert not (d / "gs_o_WFK").exists() and not list(d.glob("*1WF*")) and not list(d.glob("*_DDB"))
    assert len(list(d.glob("efield?.ddb"))) == 3  # the results stay


def test_run_structure_finishes_directions_carried_from_another_session(tmp_path, monkeypatch):
    """Finished field directions (done marker + DDB) carried into a fresh directory are not recomputed;
    the ground state is, since its wavefunctions are gone."""
    calls, links = [], {}

    def fake_step(directory, step, ranks, timeout_s, nice=19, stop_event=None):
        calls.append(step)
        if step.startswith("ddk"):
            (directory / f"ddk{step[3]}_o_1WF{15 + int(step[3])}").write_text("ddk")
        if step == "gs":
            (directory / "gs_o_WFK").write_text("wfk")
        if step.startswith("efield"):
            links[step] = sorted(p.name for p in directory.glob("in_1WF*"))
            (directory / f"ef{step[6]}_o_DDB").write_text("ddb")
        return 2.0

    monkeypatch.setattr(dft_abinit, "run_step", fake_step)
    d = tmp_path / "s"
    d.mkdir()
    for name, text in (("gs.done", "50.0"), ("efield1.done", "9.0"), ("efield1.ddb", "ddb 1"), ("ddk1.done", "4.0")):
        (d / name).write_text(text)
    # (without the optional ddk of direction 1 on the new ground state for ε∞[2:, 1]:
    # test_carried_direction_gets_its_ddk_again_for_epsilon)
    timings = run_structure(make_structure("cubic5", 0), AbinitSettings(), d, cleanup=False, complete_epsilon=False)
    assert calls == ["gs", "ddk2", "efield2", "ddk3", "efield3"]
    assert links == {"efield2": ["in_1WF17"], "efield3": ["in_1WF17", "in_1WF18"]}  # ddk1 is gone
    assert timings == {"gs": 2.0, "ddk": 8.0, "efield": 13.0}


@needs_psp
def test_run_structure_reads_ddk_files_of_a_single_ddk_run(tmp_path, monkeypatch):
    """Directories whose ddk ran as one ABINIT run (rfdir 1 1 1) before the split still finish."""
    calls = []
    monkeypatch.setattr(dft_abinit, "run_step", lambda directory, step, *a, **k: calls.append(step) or 1.0)
    d = tmp_path / "s"
    d.mkdir()
    for name in ("gs.done", "ddk.done"):
        (d / name).write_text("5.0\n")
    (d / "gs_o_WFK").write_text("wfk")
    for i in (16, 17, 18):
        (d / f"ddk_o_1WF{i}").write_text("ddk")
    run_structure(make_structure("cubic5", 0), AbinitSettings(), d, cleanup=False)
    assert calls == ["efield"]
    assert sorted(p.resolve().name for p in d.glob("in_1WF*")) == ["ddk_o_1WF16", "ddk_o_1WF17", "ddk_o_1WF18"]


@needs_psp
def test_run_step_stop_event_kills_process(tmp_path, monkeypatch):
    monkeypatch.setattr(dft_abinit, "mpi_command", lambda ranks: ["bash", "-c", "sleep 30", "fake-abinit"])
    stop = threading.Event()
    stop.set()
    with pytest.raises(dft_abinit.StepInterrupted):
        dft_abinit.run_step(tmp_path, "gs", 1, None, stop_event=stop)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_graceful_stop_asks_a_ground_state_to_end_cleanly(tmp_path, monkeypatch):
    """A stop with ``graceful`` set writes abinit.exit (the ground state's input has chkexit 1)
    and waits: ABINIT ends after its SCF iteration with its wavefunctions written, a cut
    (StepCut), not a kill.  Other steps, or a ground state that does not end within
    GS_EXIT_WAIT_S, are killed as before."""
    stop, graceful = threading.Event(), threading.Event()
    stop.set()
    graceful.set()
    obeys = ('while [ ! -f abinit.exit ]; do sleep 0.1; done; printf \'%s\\n\' '
             '"  Exit has been requested from file \\"abinit.exit\\"." " Calculation completed." > gs.abo')
    monkeypatch.setattr(dft_abinit, "mpi_command", lambda ranks: ["bash", "-c", obeys, "fake-abinit"])
    with pytest.raises(dft_abinit.StepCut) as info:
        dft_abinit.run_step(tmp_path, "gs", 1, None, nice=0, stop_event=stop, graceful=graceful)
    assert info.value.reason == "on a stop request" and (tmp_path / "abinit.exit").is_file()
    monkeypatch.setattr(dft_abinit, "mpi_command", lambda ranks: ["bash", "-c", "sleep 30", "fake-abinit"])
    t0 = time.time()
    with pytest.raises(dft_abinit.StepInterrupted):  # a DFPT step has no such check: killed at once
        dft_abinit.run_step(tmp_path, "ddk1", 1, None, nice=0, stop_event=stop, graceful=graceful)
    assert time.time() - t0 < 10
    monkeypatch.setattr(dft_abinit, "GS_EXIT_WAIT_S", 1.0)
    t0 = time.time()
    with pytest.raises(dft_abinit.StepInterrupted, match="did not end within 1 s"):
        dft_abinit.run_step(tmp_path, "gs", 1, None, nice=0, stop_event=stop, graceful=graceful)
    assert time.time() - t0 < 10
    assert "chkexit 1" in make_inputs(make_structure("cubic5", 0), AbinitSettings())["gs"]


def test_first_signal_stops_gracefully_a_second_kills(tmp_path):
    """The pipeline's first SIGTERM sets the stop and the graceful flag its steps get (a
    ground state may end cleanly); a second one clears the flag (kill now)."""
    plan = _fake_plan(tmp_path, n=1)
    seen, messages = [], []

    def runner(structure, settings, directory, ranks, timeout_s, nice, stop_event, graceful=None, **kw):
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread, which waits on this one
            assert _wait_for(lambda: stop_event.is_set() and graceful.is_set() == (not seen), timeout=10)
            seen.append(graceful.is_set())
        raise dft_abinit.StepInterrupted("gs: stopped on request")

    counts = run_plan(plan, tmp_path / "data.xyz", tmp_path / "runs", runner=runner, log=messages.append)
    assert seen == [True, False] and not counts.get("finished")
    assert any(m.startswith("signal SIGTERM: stopping (finished steps are kept; a running ground state")
               for m in messages)
    assert "signal SIGTERM again: killing the running steps now" in messages


def _processes_running(argv: list[str]) -> list[int]:
    """PIDs whose command line is exactly ``argv`` (Linux /proc)."""
    want = "\0".join(argv) + "\0"
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_text() == want:
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_a_paused_step_does_not_use_up_its_wall_clock_limit(tmp_path, monkeypatch):
    """dft_pause.sh stops a step's session (SIGSTOP) while a benchmark runs: the paused time
    counted towards timeout_s, and a long pause failed the step (a counted failure)."""
    script = 'sleep 1.5; echo "Calculation completed" > gs.abo'
    monkeypatch.setattr(dft_abinit, "mpi_command", lambda ranks: ["bash", "-c", script, "fake-abinit-pause"])
    result = {}

    def run():
        try:
            result["seconds"] = dft_abinit.run_step(tmp_path, "gs", 1, 2.5)
        except Exception as exc:  # noqa: BLE001
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    argv = ["bash", "-c", script, "fake-abinit-pause", "gs.abi"]
    assert _wait_for(lambda: _processes_running(argv), timeout=10)
    (pid,) = _processes_running(argv)
    os.killpg(os.getpgid(pid), signal.SIGSTOP)  # as dft_pause.sh stop
    time.sleep(3.5)
    os.killpg(os.getpgid(pid), signal.SIGCONT)
    thread.join(timeout=30)
    assert "error" not in result, result.get("error")
    assert result["seconds"] > 3.5  # the wall time returned includes the pause


@pytest.mark.skipif(shutil.which("mpirun") is None or not Path("/proc").is_dir(),
                    reason="needs mpirun (openmpi-bin) and /proc")
def test_real_mpirun_ranks_die_with_a_stopped_or_killed_step(tmp_path, monkeypatch):
    """Under a real ``mpirun -np 2`` (a stand-in 'abinit' that sleeps): a stop request kills
    both ranks, and so does SIGKILL of the process running the step (PR_SET_PDEATHSIG)."""
    rank = ["sleep", str(3000 + os.getpid() % 997)]  # unique to this test run
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "abinit").write_text(f"#!/bin/sh\nexec {' '.join(rank)}\n")
    (bindir / "abinit").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "gs.abi").write_text("stand-in\n")

    def wait_for(n, timeout=20.0):
        t0 = time.time()
        while len(_processes_running(rank)) != n and time.time() - t0 < timeout:
            time.sleep(0.2)
        return len(_processes_running(rank))

    stop = threading.Event()
    timer = threading.Thread(target=lambda: (wait_for(2), stop.set()))
    timer.start()
    with pytest.raises(dft_abinit.StepInterrupted):
        dft_abinit.run_step(tmp_path, "gs", 2, None, nice=0, stop_event=stop)
    timer.join()
    assert wait_for(0) == 0
    code = ("import sys; from pathlib import Path; from ase_born.dft.abinit import run_step; "
            "run_step(Path(sys.argv[1]), 'gs', 2, None, nice=0)")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    try:
        assert wait_for(2) == 2
        child.kill()  # SIGKILL: no handler, no cleanup code runs in the parent
        child.wait()
        assert wait_for(0) == 0
    finally:
        for pid in _processes_running(rank):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.abinit
@pytest.mark.slow
@needs_psp
def test_abinit_end_to_end_tiny_cell(tmp_path):
    """Runs ABINIT (2 ranks, ~1 min) on a displaced 5-atom cell at tiny settings."""
    if shutil.which("abinit") is None:
        pytest.skip("abinit not installed")
    atoms = make_structure("cubic5", 1)
    write_frames(tmp_path / "plan.xyz", atoms)
    s = AbinitSettings(ecut_Ha=12.0, kpt_density=0.5)
    counts = run_plan(tmp_path / "plan.xyz", tmp_path / "out.xyz", tmp_path / "runs", settings=s, ranks=2)
    assert counts["finished"] == 1
    (f,) = read_frames(tmp_path / "out.xyz")
    z = get_born_charges(f)
    assert np.isfinite(z).all() and 1.0 < z[0, 0, 0] < 4.0 and 4.0 < z[1, 1, 1] < 12.0
    assert f.info["epsilon_inf"][0, 0] > 1.0
    assert np.abs(f.get_forces()).max() > 0


@pytest.mark.slow
@needs_psp
def test_abinit_ground_state_cut_early_continues_to_the_same_result(tmp_path, monkeypatch):
    """Runs ABINIT (2 ranks, ~1 min): a ground state given a 2 s --timelimit, and one asked to
    stop (graceful stop: abinit.exit after ~1 s), are cut with their wavefunctions written;
    continued from them each converges to the uninterrupted result."""
    from ase_born.dft.abinit import StructurePaused

    if shutil.which("abinit") is None:
        pytest.skip("abinit not installed")
    atoms = make_structure("cubic5", 1)
    s = AbinitSettings(ecut_Ha=12.0, kpt_density=1.0)  # ground state long enough (~10 s) to be stopped
    gs_only = {"before_step": lambda name: name == "gs", "ranks": 2}
    with pytest.raises(StructurePaused):
        run_structure(atoms, s, tmp_path / "one", **gs_only)
    monkeypatch.setattr(dft_abinit, "GS_TIMELIMIT_MARGIN_S", 0.0)
    monkeypatch.setattr(dft_abinit, "GS_TIMELIMIT_MIN_S", 1.0)
    with pytest.raises(StructurePaused) as info:
        run_structure(atoms, s, tmp_path / "cut", time_left=lambda: 2.0, **gs_only)
    assert info.value.cut and (tmp_path / "cut" / PARTIAL_WFK).is_file()
    assert "converged" not in (tmp_path / "cut" / "gs.abo").read_text()
    with pytest.raises(StructurePaused) as info:
        run_structure(atoms, s, tmp_path / "cut", **gs_only)
    assert info.value.step == "ddk1" and not info.value.cut
    assert "irdwfk 1" in (tmp_path / "cut" / "gs.abi").read_text()
    assert not (tmp_path / "cut" / PARTIAL_WFK).exists()
    # a graceful stop (the pipeline's first signal) while the ground state runs: abinit.exit
    stop, graceful = threading.Event(), threading.Event()
    stop.set()
    graceful.set()
    with pytest.raises(StructurePaused) as info:
        run_structure(atoms, s, tmp_path / "stopped", stop_event=stop, graceful=graceful, **gs_only)
    assert info.value.cut and (tmp_path / "stopped" / PARTIAL_WFK).is_file()
    assert 'Exit has been requested from file "abinit.exit"' in (tmp_path / "stopped" / "gs.abo").read_text()
    with pytest.raises(StructurePaused):
        run_structure(atoms, s, tmp_path / "stopped", **gs_only)
    ref = read_abinit_output(tmp_path / "one" / "gs.abo")
    for run in ("cut", "stopped"):
        got = read_abinit_output(tmp_path / run / "gs.abo")
        assert got.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(got.get_forces(), ref.get_forces(), atol=1e-4)
        np.testing.assert_allclose(got.get_stress(), ref.get_stress(), atol=1e-6)


@pytest.mark.slow
@needs_psp
def test_abinit_structure_over_two_sessions_keeps_every_epsilon_element(tmp_path):
    """Runs ABINIT (2 ranks, ~80 s): direction 1 in one session, 2 and 3 on a new ground state
    in the next.  With the ddk of direction 1 run again there (eps_ddk1) the frame matches a
    one-session run (Z* and the whole ε∞); without it the ε∞ elements between the sessions are
    unknown (the strained cell mixes them into every Cartesian element)."""
    from ase_born.dft.abinit import StructurePaused
    from ase_born.dft.pipeline import read_run_directory, save_direction

    if shutil.which("abinit") is None:
        pytest.skip("abinit not installed")
    atoms = make_structure("cubic5", 1)
    s = AbinitSettings(ecut_Ha=12.0, kpt_density=0.5)
    run_structure(atoms, s, tmp_path / "one", ranks=2)
    ref = read_run_directory(tmp_path / "one")
    with pytest.raises(StructurePaused):
        run_structure(atoms, s, tmp_path / "first", ranks=2, before_step=lambda name: name in ("gs", "ddk1", "efield1"))
    for complete in (True, False):
        second = tmp_path / f"second_{complete}"
        save_direction(tmp_path / "first", second, 1)  # what a new machine gets: outputs, markers, DDB
        assert sorted(p.name for p in second.glob("*.done")) == ["ddk1.done", "efield1.done", "gs.done"]
        run_structure(atoms, s, second, ranks=2, complete_epsilon=complete)
        frame = read_run_directory(second)
        np.testing.assert_allclose(get_born_charges(frame), get_born_charges(ref), atol=2e-4)
        eps = frame.info["epsilon_inf"]
        if complete:
            assert (second / "eps_ddk1.done").is_file()
            np.testing.assert_allclose(eps, ref.info["epsilon_inf"], atol=2e-4)
        else:
            assert np.isnan(eps).any()


def test_cpu_seconds_sums_every_step(tmp_path):
    from ase_born.dft.pipeline import cpu_seconds

    def abo(name, cpu):
        (tmp_path / name).write_text(f"...\n+Overall time at end (sec) : cpu=  {cpu}  wall=  {2 * cpu}\n")

    abo("gs.abo", 10.0)
    abo("ddk1.abo", 20.0)
    abo("ddk2.abo", 20.0)
    for d in (1, 2, 3):
        abo(f"efield{d}.abo", 10.0)
    assert cpu_seconds(tmp_path) is None  # ddk3 missing: not finished
    abo("ddk3.abo", 25.0)
    assert cpu_seconds(tmp_path) == pytest.approx(105.0)
    abo("ddk.abo", 50.0)  # a directory from the single ddk run
    assert cpu_seconds(tmp_path) == pytest.approx(90.0)
    abo("efield.abo", 40.0)  # ... and the single efield run of the older layout
    (tmp_path / "efield.done").write_text("1.0\n")
    assert cpu_seconds(tmp_path) == pytest.approx(100.0)


def test_deadline_defers_structures_that_cannot_finish(tmp_path):
    """Only structures whose estimated wall time (x safety) fits before the deadline start."""
    base = read_abinit_output(DATA / "gs.abo")
    settings = AbinitSettings()
    small = [base.copy() for _ in range(3)]
    big = base.repeat((2, 2, 2))
    plan = []
    for i, a in enumerate([small[0], big, small[1], small[2]]):
        a.info.update(structure_id=f"s{i}", kind="cubic5" if len(a) == len(base) else "big", split="train")
        plan.append(a)
    write_frames(tmp_path / "plan.xyz", plan)
    u_small = work_units(base, settings.kmesh(base))
    u_big = work_units(big, settings.kmesh(big))
    assert u_big == pytest.approx(64 * u_small)  # 512x N^3, 1/8 of the k-points
    # one measured structure of the small kind: 1000 s of wall time on 2 ranks
    out, work = tmp_path / "data.xyz", tmp_path / "runs"
    measured = base.copy()
    measured.info.update(structure_id="s0", kind="cubic5", split="train", wall_s=1000.0, mpi_ranks=2,
                         kpts=np.array(settings.kmesh(base)))
    write_frames(out, measured)
    now = [0.0]

    class Clocked(FakeAbinit):
        def __call__(self, structure, *args, **kw):
            now[0] += 1900.0  # each fake structure takes 1900 s on the fake clock
            super().__call__(structure, *args, **kw)
            return {"gs": 400.0, "ddk": 750.0, "efield": 750.0}

    messages = []
    fake = Clocked()
    counts = run_plan(tmp_path / "plan.xyz", out, work, settings=settings, runner=fake, log=messages.append,
                      deadline=2500.0, clock=lambda: now[0])
    # a structure starts when its ground state and one field direction (F_GS + F_DIRECTION = 0.5 of
    # it) fit: s1 (0.5 x 64000 s x 1.2 margin) is deferred, s2 fits (600 s <= 2500 s); then the
    # median rate is 1450 s per small structure, and s3 (870 s) no longer fits in the 600 s left
    assert fake.calls == ["s2"]
    assert counts["finished"] == 1 and counts["deferred"] == 2 and counts["pending"] == 2
    assert any(m.startswith("defer s1:") for m in messages) and any(m.startswith("defer s3:") for m in messages)
    # without a deadline everything left runs
    fake = Clocked()
    run_plan(tmp_path / "plan.xyz", out, work, settings=settings, runner=fake, log=lambda m: None)
    assert fake.calls == ["s1", "s3"]


def test_cost_model_scales_by_work_units_and_ranks():
    model = CostModel(ranks=2)
    assert model.estimate_s("cubic5", 10.0) is None
    model.add("cubic5", 100.0, 1000.0, ranks=4)  # 4 ranks -> 2000 s on 2
    assert model.estimate_s("cubic5", 50.0) == pytest.approx(1000.0)
    assert model.estimate_s("pnma20", 200.0) == pytest.approx(4000.0)  # unknown kind: scaled from the others
    model.add("tilt10", 100.0, 500.0, n_atoms=10)
    model.add("pnma_eq", 100.0, 400.0, n_atoms=20)
    # an unknown kind is scaled from the kinds with the nearest cell size, else from all
    assert model.estimate_s("pnma20", 100.0, n_atoms=20) == pytest.approx(400.0)
    assert model.estimate_s("tilt12", 100.0, n_atoms=12) == pytest.approx(500.0)  # nearest: 10 atoms
    assert model.estimate_s("pnma20", 100.0) == pytest.approx(500.0)  # no size: median of all


def test_step_shares_are_measured_on_frames_with_step_times():
    """CostModel.step_share: the median share of a kind's frames (>= MIN_SHARE_FRAMES), else of
    all kinds, else the fixed F_GS / F_DIRECTION; a direction's ddk and efield are a third of the
    frame's summed ddk and efield times; incomplete or odd step records are ignored."""
    from ase_born.dft.pipeline import F_DIRECTION, F_GS, MIN_SHARE_FRAMES

    assert MIN_SHARE_FRAMES == 3
    model = CostModel(ranks=2)
    assert model.step_share("tilt10", "gs") == F_GS and model.step_share("tilt10", "ddk") == 0.5 * F_DIRECTION
    for bad in ({"gs": 100.0, "ddk": 300.0},  # no efield
                {"gs": 100.0, "ddk": 300.0, "efield": 0.0},
                {"gs": 100.0, "ddk": float("nan"), "efield": 600.0},
                {"gs": 100.0, "ddk": 300.0, "efield": 600.0, "eps": 10.0},
                {"gs": "x", "ddk": 300.0, "efield": 600.0}):
        model.add_steps("tilt10", bad)
    assert not model.shares.get("tilt10")
    for gs in (100.0, 200.0):
        model.add_steps("tilt10", {"gs": gs, "ddk": 300.0, "efield": 600.0})
    assert model.step_share("tilt10", "gs") == F_GS  # 2 frames: not yet
    model.add_steps("tilt10", {"gs": 150.0, "ddk": 300.0, "efield": 600.0})
    # median frame: 150 / 1050 for the ground state, 100 / 1050 and 200 / 1050 per direction
    assert model.step_share("tilt10", "gs") == pytest.approx(150.0 / 1050.0)
    assert model.step_share("tilt10", "ddk") == pytest.approx(100.0 / 1050.0)
    assert model.step_share("tilt10", "efield") == pytest.approx(200.0 / 1050.0)
    assert model.step_share("pnma20", "gs") == pytest.approx(150.0 / 1050.0)  # from all kinds
    for _ in range(3):
        model.add_steps("pnma20", {"gs": 300.0, "ddk": 300.0, "efield": 400.0})
    assert model.step_share("pnma20", "efield") == pytest.approx(400.0 / 3 / 1000.0)  # its own
    with pytest.raises(ValueError, match="unknown step"):
        model.step_share("pnma20", "ddk1")
    # a frame read from the dataset: wall_s_steps is the JSON string frame_from_run writes
    base = read_abinit_output(DATA / "gs.abo")
    base.info.update(kind="cubic5", wall_s=1000.0, mpi_ranks=2, kpts=np.array([4, 4, 4]),
                     wall_s_steps=json.dumps({"gs": 100.0, "ddk": 300.0, "efield": 600.0}))
    fresh = CostModel(ranks=2)
    for _ in range(3):
        fresh.add_frame(base, AbinitSettings())
    assert fresh.step_share("cubic5", "gs") == pytest.approx(0.1)
    base.info["wall_s_steps"] = "{not json"
    fresh.add_frame(base, AbinitSettings())  # rate recorded, steps ignored
    assert len(fresh.rates["cubic5"]) == 4 and len(fresh.shares["cubic5"]["gs"]) == 3


def _three_cubic5_frames(tmp_path, with_steps=True):
    """A plan of four cubic5 structures s0-s3 (plan.xyz) whose first three are finished frames
    of 1000 s wall (with step times: GS 10 %, a direction 10 % ddk + 20 % efield); the
    dataset's path."""
    base = read_abinit_output(DATA / "gs.abo")
    plan = []
    for i in range(4):
        a = base.copy()
        a.info.update(structure_id=f"s{i}", kind="cubic5", split="train")
        plan.append(a)
    write_frames(tmp_path / "plan.xyz", plan)
    out = tmp_path / "data.xyz"
    for a in plan[:3]:
        done = a.copy()
        done.info.update(wall_s=1000.0, mpi_ranks=2, kpts=np.array(AbinitSettings().kmesh(base)))
        if with_steps:
            done.info["wall_s_steps"] = json.dumps({"gs": 100.0, "ddk": 300.0, "efield": 600.0})
        write_frames(out, done, append=True)
    return out


@pytest.mark.parametrize("with_steps", [True, False])
def test_admission_uses_the_measured_step_shares(tmp_path, with_steps):
    """Three finished frames whose ground state and one direction took 40 % of them: a fourth
    structure of their kind (estimate 1000 s) needs 1.2 x 400 s = 480 s to start, and starts with
    540 s left; without step times the fixed shares (50 %: 600 s) defer it."""
    settings, out = AbinitSettings(), _three_cubic5_frames(tmp_path, with_steps)
    fake, messages = FakeAbinit(), []
    counts = run_plan(tmp_path / "plan.xyz", out, tmp_path / "runs", settings=settings, runner=fake,
                      log=messages.append, deadline=540.0, grace_s=GRACE, clock=lambda: 0.0)
    if with_steps:
        assert fake.calls == ["s3"] and counts["finished"] == 1
    else:
        assert fake.calls == [] and counts["deferred"] == 1
        assert any(m.startswith("defer s3:") for m in messages)


@pytest.mark.parametrize("partial", [None, 60.0, 95.0, "no_wfk"])
def test_a_cut_ground_state_is_admitted_with_the_time_it_still_needs(tmp_path, partial):
    """Three frames give a cubic5 ground state 100 s (10 % of 1000 s).  Continued from the
    wavefunctions of a try cut after 60 s it needs 40 s + GS_CONTINUE_EXTRA_SHARE (12.5 s),
    x1.2 = 63 s, and starts with 70 s left; a fresh one (no cut try, or a marker without its
    wavefunctions: the next try starts afresh) needs 120 s and is deferred; after 95 s it still
    needs GS_CONTINUE_MIN_SHARE of the estimate (25 s x 1.2 = 30 s)."""
    from ase_born.dft.pipeline import GS_CONTINUE_EXTRA_SHARE, GS_CONTINUE_MIN_SHARE

    settings, out = AbinitSettings(), _three_cubic5_frames(tmp_path)
    run = tmp_path / "runs" / "s3"
    run.mkdir(parents=True)
    if partial is not None:
        (run / PARTIAL_SECONDS).write_text(f"{60.0 if partial == 'no_wfk' else partial}\n")
        if partial != "no_wfk":
            (run / PARTIAL_WFK).write_text("wfk")
    fake, messages = FakeAbinit(), []
    run_plan(tmp_path / "plan.xyz", out, tmp_path / "runs", settings=settings, runner=fake, log=messages.append,
             deadline=70.0, grace_s=GRACE, clock=lambda: 0.0, step_level=True)
    if partial in (60.0, 95.0):
        assert fake.calls == ["s3"]
        gs = max(100.0 - partial + GS_CONTINUE_EXTRA_SHARE * 100.0, GS_CONTINUE_MIN_SHARE * 100.0)  # 52.5, 25 s
        start = next(m for m in messages if m.startswith("start s3 (cubic5, 5 atoms, estimated "))
        minutes, seconds = start.split("estimated ")[1].rstrip("s)").split("m")
        assert 60 * int(minutes) + int(seconds) == pytest.approx(gs + 900.0, abs=1.0)  # printed to the second
    else:
        assert fake.calls == []
        assert any(m.startswith("defer s3: its next step (gs) needs ~2m00s") for m in messages), messages


def test_complete_by_symmetry_fills_what_the_point_group_fixes():
    from ase_born.dft.pipeline import complete_by_symmetry

    pnma = pnma_catio3()  # mmm: epsilon is diagonal in the cell axes
    eps = np.array([[6.1, np.nan, np.nan], [np.nan, 5.9, np.nan], [np.nan, np.nan, 6.3]])
    np.testing.assert_allclose(complete_by_symmetry(eps, pnma), np.diag([6.1, 5.9, 6.3]), atol=1e-12)
    p1 = make_structure("cubic5", 3)  # rattled: no symmetry fixes the off-diagonal elements
    assert np.isnan(complete_by_symmetry(eps, p1)).sum() == 6
    full = np.array([[6.0, 0.1, 0.0], [0.1, 6.0, 0.2], [0.0, 0.2, 6.0]])
    assert complete_by_symmetry(full, p1) is not None and np.array_equal(complete_by_symmetry(full, p1), full)


def test_field_directions_carried_over_a_stop_finish_the_structure(tmp_path, monkeypatch):
    """A deadline stop after field direction 1 keeps it in the carry directory (committed data);
    a later run in a FRESH work directory restores it and computes only the rest."""
    tiny = DATA / "tilt10_tiny"
    structure = read_abinit_output(tiny / "gs.abo")
    structure.info.update(structure_id="t0", kind="tilt10", split="train")
    write_frames(tmp_path / "plan.xyz", structure)
    out = tmp_path / "data" / "dft.xyz"
    now = [0.0]
    # the first field direction ends at the deadline; no step may start after it
    calls, _ = _fake_steps(monkeypatch, now, cost={"gs": 0.0, "ddk": 0.0, "efield": 100.0})
    messages = []
    counts = run_plan(tmp_path / "plan.xyz", out, tmp_path / "runs1", settings=AbinitSettings(ecut_Ha=12.0),
                      deadline=100.0, clock=lambda: now[0], log=messages.append)
    assert counts.get("finished", 0) == 0 and [s for _, s in calls] == ["gs", "ddk1", "efield1"]
    assert any("deadline reached" in m for m in messages)
    carry = out.parent / "partial" / "t0"
    assert sorted(p.name for p in carry.iterdir()) == [
        "ddk1.done", "efield1.ddb", "efield1.done", "gs.abo", "gs.done", "settings.json"]
    # next session: new machine, nothing of runs1 is left
    shutil.rmtree(tmp_path / "runs1")
    calls.clear()
    counts = run_plan(tmp_path / "plan.xyz", out, tmp_path / "runs2", settings=AbinitSettings(ecut_Ha=12.0),
                      log=messages.append)
    assert counts["finished"] == 1
    # the ground state again, direction 1 not: only its ddk, for ε∞[2:, 1] on the new ground state
    assert [s for _, s in calls] == ["gs", "eps_ddk1", "ddk2", "efield2", "ddk3", "efield3"]
    (frame,) = read_frames(out)
    ref = read_abinit_output(tiny / "gs.abo", tiny / "efield_onerun.abo")
    np.testing.assert_allclose(get_born_charges(frame), get_born_charges(ref), atol=1e-9)
    # these DDBs came from one session (direction 2 had ddk 1): the whole epsilon is known
    np.testing.assert_allclose(frame.info["epsilon_inf"], ref.info["epsilon_inf"], atol=1e-6)
    # the raw sum-rule violation Σ_k Z*_k (a 3x3 over atoms), as the one-run parser gives it
    np.testing.assert_allclose(frame.info["acoustic_sum"], get_born_charges(frame).sum(axis=0), atol=1e-12)
    np.testing.assert_allclose(frame.info["acoustic_sum"], ref.info["acoustic_sum"], atol=1e-9)
    assert not carry.exists()
    assert status(tmp_path / "plan.xyz", out, tmp_path / "runs2")["partial"] == {}


def test_status_lists_carried_directions(tmp_path):
    plan = _fake_plan(tmp_path, n=2)
    out = tmp_path / "data.xyz"
    carry = tmp_path / "partial" / "s1"
    carry.mkdir(parents=True)
    for name in ("efield2.ddb", "efield2.done", "efield3.ddb"):  # efield3 has no marker: not finished
        (carry / name).write_text("x")
    st = status(plan, out, tmp_path / "runs")
    assert st["partial"] == {"s1": [2]}
    # a dataset whose frames have other physics settings than the carried data's (a 40 Ha
    # reference beside production) does not list them: its runs leave them alone
    frame = read_frames(plan)[0]
    frame.info["dft_settings"] = json.dumps(AbinitSettings(ecut_Ha=40.0).to_dict())
    write_frames(out, [frame])
    (carry / "settings.json").write_text(json.dumps(AbinitSettings(ecut_Ha=30.0).to_dict()))
    assert status(plan, out, tmp_path / "runs")["partial"] == {}
    (carry / "settings.json").write_text(json.dumps(AbinitSettings(ecut_Ha=40.0, nstep=99).to_dict()))
    assert status(plan, out, tmp_path / "runs")["partial"] == {"s1": [2]}  # tolerances do not count


def test_status_shows_the_steps_of_started_structures_and_whether_a_pipeline_runs(tmp_path):
    """A started structure lists its finished steps (in the order they finished) and the step
    started last without a marker: running while an ``abinit`` process works in its directory,
    interrupted otherwise (also while a pipeline holds the lock and works on another one)."""
    plan = _fake_plan(tmp_path, n=2)
    runs = tmp_path / "runs"
    run = runs / "s1"
    run.mkdir(parents=True)
    for k, name in enumerate(("gs.abi", "gs.done", "ddk1.abi", "ddk1.done", "efield1.abi")):
        (run / name).write_text("x")
        os.utime(run / name, (1.8e9 + 60 * k, 1.8e9 + 60 * k))
    st = status(plan, tmp_path / "data.xyz", runs)
    assert list(st["started"]) == ["s1"] and st["kinds"]["tilt10"]["in_progress"] == 1
    prog = st["started"]["s1"]
    assert prog["done_steps"] == ["gs", "ddk1"] and prog["open_step"] == "efield1"
    assert prog["open_since"] == time.strftime("%Y-%m-%d %H:%M", time.localtime(1.8e9 + 240))
    assert st["running"] is None
    buf = io.StringIO()
    print_status(st, buf)
    assert "pipeline: not running" in buf.getvalue()
    assert "started s1: steps done gs, ddk1; efield1 started " in buf.getvalue()
    assert buf.getvalue().rstrip().endswith("(interrupted)")
    with workdir_lock(runs):
        st = status(plan, tmp_path / "data.xyz", runs)
        assert st["running"].startswith(f"PID {os.getpid()} on ")
        buf = io.StringIO()
        print_status(st, buf)
        assert buf.getvalue().rstrip().endswith("(interrupted)")  # no ABINIT in s1's directory
        if Path("/proc/self/cwd").exists():  # a process named abinit working there (Linux)
            fake = tmp_path / "bin" / "abinit"
            fake.parent.mkdir()
            shutil.copy(shutil.which("sleep"), fake)
            proc = subprocess.Popen([str(fake), "30"], cwd=run)
            try:
                deadline = time.time() + 10
                while not status(plan, tmp_path / "data.xyz", runs)["started"]["s1"]["open_running"]:
                    assert time.time() < deadline, "the abinit process was not seen"
                    time.sleep(0.05)
                buf = io.StringIO()
                print_status(status(plan, tmp_path / "data.xyz", runs), buf)
                assert buf.getvalue().rstrip().endswith("(running)")
            finally:
                proc.kill()
                proc.wait()
    (run / "efield1.done").write_text("x")  # every started step finished: nothing open
    assert status(plan, tmp_path / "data.xyz", runs)["started"]["s1"]["open_step"] is None


def test_status_shows_how_far_the_open_step_converged(tmp_path):
    """The open step's SCF iterations (from its log's ETOT lines), the residual its tolerance
    bounds, and a projection of the iterations left from the last five; a ddk step is judged
    by residm against tolwfr."""
    from ase_born.dft.pipeline import scf_progress
    from ase_born.io.abinit import read_scf_history

    run = tmp_path / "s1"
    run.mkdir()
    (run / "gs.abi").write_text("ecut 30\ntolvrs 1.000e-12\n")
    vres2 = [5e3, 2e4, 8e2, 1e1, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6]  # last five: 1 decade each
    lines = [f"{'-' if i == 1 else ' '}ETOT{i:3d}  -590.1   -1.0E-03 {1e-3 / i:.3E} {v:.3E} 1.0E-02 1.0E-01"
             for i, v in enumerate(vres2, start=1)]
    (run / "gs.log").write_text("\n".join(["header", *lines, " scprqt: <Vxc>"]) + "\n")
    hist = read_scf_history(run / "gs.log")
    assert [h[0] for h in hist] == list(range(1, 11)) and hist[-1][2] == pytest.approx(1e-6)
    prog = scf_progress(run, "gs", since=1000.0, now=1000.0 + 35 * 60)
    assert prog["iterations"] == 10 and prog["residual_name"] == "vres2" and prog["target"] == 1e-12
    assert prog["iterations_left"] == 6 and prog["minutes_per_iteration"] == pytest.approx(3.5)
    (run / "gs.log").write_text("\n".join(lines[:5] + lines[5:6] * 6) + "\n")  # stalled: no projection
    assert scf_progress(run, "gs", since=0.0, now=60.0)["iterations_left"] is None
    (run / "ddk1.abi").write_text("tolwfr 1.000e-12\n")
    (run / "ddk1.log").write_text("-ETOT  1  -27.0  -2.7E+01 3.411E-01 0.000E+00\n"
                                  " ETOT  2  -27.5  -5.7E-01 4.692E-02 0.000E+00\n")
    prog = scf_progress(run, "ddk1", since=0.0, now=60.0)
    assert prog["residual_name"] == "residm" and prog["residual"] == pytest.approx(4.692e-2)
    assert scf_progress(run, "efield1", since=0.0) is None  # no log yet
    (run / "gs.log").write_text("\n".join(lines) + "\n")
    st = status(_fake_plan(tmp_path, n=1), tmp_path / "data.xyz", tmp_path / "runs")
    st["started"] = {"s1": {"done_steps": [], "open_step": "gs", "open_since": "2026-12-07 03:53",
                            "open_running": True, "gs_cut_s": None,
                            "open_scf": scf_progress(run, "gs", since=1000.0, now=1000.0 + 35 * 60)}}
    buf = io.StringIO()
    print_status(st, buf)
    assert ("gs started 2026-12-07 03:53 (running; SCF iteration 10, vres2 1.0e-06 → 1e-12, "
            "~3.5 min per iteration, ~6 more at the last iterations' rate)") in buf.getvalue()


def test_status_cost_per_kind(tmp_path):
    """Mean, smallest and largest cost per kind come from the finished frames' own ``cpu_s``
    and ``wall_s`` x ranks; a kind with no finished frame prints dashes."""
    plan = _fake_plan(tmp_path, n=6)  # s0, s2, s4 cubic5; s1, s3, s5 tilt10
    frames = []
    for sid, cpu_h in (("s0", 0.5), ("s2", 1.0), ("s4", 0.6)):
        a = read_abinit_output(DATA / "gs.abo")
        a.info.update(structure_id=sid, kind="cubic5", split="train", cpu_s=cpu_h * 3600.0,
                      wall_s=cpu_h * 1800.0 * 1.5, mpi_ranks=2, kpts=[4, 4, 4])
        frames.append(a)
    write_frames(tmp_path / "data.xyz", frames)
    st = status(plan, tmp_path / "data.xyz", tmp_path / "runs")
    cubic = st["kinds"]["cubic5"]
    assert cubic["done"] == 3 and st["kinds"]["tilt10"].get("done", 0) == 0
    assert cubic["mean_cpu_hours"] == pytest.approx(0.7)
    assert (cubic["min_cpu_hours"], cubic["max_cpu_hours"]) == pytest.approx((0.5, 1.0))
    assert cubic["mean_core_hours"] == pytest.approx(1.05)  # wall x ranks
    assert st["kinds"]["tilt10"]["mean_cpu_hours"] is None
    buf = io.StringIO()
    print_status(st, buf)
    rows = {line.split()[0]: line.split() for line in buf.getvalue().splitlines()[1:4]}
    assert rows["cubic5"][-3:] == ["1.05", "0.70", "0.50-1.00"]
    assert rows["tilt10"][-3:] == ["-", "-", "-"]
    # wall time per structure as run, and the scheduler's rate per cost unit (idle-machine
    # cost: 1.06 x CPU seconds per rank here, the runs were slower than that)
    assert (cubic["min_wall_min"], cubic["median_wall_min"], cubic["max_wall_min"]) == pytest.approx((22.5, 27.0, 45.0))
    # the median run (0.6 cpu-h, wall 1620 s on 2 ranks) at its idle-machine cost:
    # wall x min(1, 1.06 x CPU s / (wall x ranks))
    idle = 0.6 * 2700.0 * min(1.0, 1.06 * 0.6 * 3600.0 / (2 * 0.6 * 2700.0))
    assert cubic["wall_s_per_cost_unit"] == pytest.approx(idle / work_units(frames[0], [4, 4, 4]))
    assert st["kinds"]["tilt10"]["wall_s_per_cost_unit"] is None
    assert "cubic5: wall 22-45 min (median 27) per structure as run" in buf.getvalue()


def test_carried_structures_run_before_plan_order(tmp_path):
    """A structure with field directions carried from an earlier session is finished first (its
    ground state is redone every session it waits); the rest keep plan order."""
    plan = _fake_plan(tmp_path, n=4)
    out = tmp_path / "data.xyz"
    carry = tmp_path / "partial" / "s2"
    carry.mkdir(parents=True)
    for name in ("efield1.ddb", "efield1.done"):
        (carry / name).write_text("x")
    fake = FakeAbinit()
    run_plan(plan, out, tmp_path / "runs", runner=fake, log=lambda m: None)
    assert fake.calls == ["s2", "s0", "s1", "s3"]


def test_first_ids_run_first_after_carried_and_kept_steps(tmp_path):
    """``first_ids`` puts structures ahead of plan order, in the order given; carried-over
    structures, then those whose run directory keeps finished steps, still come before them."""
    plan = _fake_plan(tmp_path, n=5)
    out = tmp_path / "data.xyz"
    fake = FakeAbinit()
    messages = []
    run_plan(plan, out, tmp_path / "runs", runner=fake, first_ids=["s3", "s1"], log=messages.append)
    assert fake.calls == ["s3", "s1", "s0", "s2", "s4"]
    assert "first (requested): s3, s1" in messages
    # carried directions (s4), kept ground state + ddk1 (s2), then first_ids (s3), then plan order
    out.unlink()
    carry = tmp_path / "partial" / "s4"
    carry.mkdir(parents=True)
    for name in ("efield1.ddb", "efield1.done"):
        (carry / name).write_text("x")
    work = tmp_path / "runs2"
    (work / "s2").mkdir(parents=True)
    for name in ("gs.done", "gs_o_WFK", "ddk1.done"):
        (work / "s2" / name).write_text("1\n")
    (work / "s0").mkdir()
    (work / "s0" / "ddk1.done").write_text("1\n")  # no kept ground state: nothing to continue on
    fake = FakeAbinit()
    messages.clear()
    run_plan(plan, out, work, runner=fake, first_ids=["s3"], log=messages.append)
    assert fake.calls == ["s4", "s2", "s3", "s0", "s1"]
    assert "finished steps kept in their run directories, continued first: s2 (gs, ddk1)" in messages
    assert kept_steps(work / "s0") == []
    with pytest.raises(ValueError, match="not in the plan.*nope"):
        run_plan(plan, out, work, runner=fake, first_ids=["nope"], log=messages.append)


def test_deadline_check_counts_only_the_work_left(tmp_path):
    """A run directory that keeps its ground-state wavefunctions needs only a field direction
    before the deadline; without them the ground state counts too."""
    plan, out, settings = _measured_plan(tmp_path, n=2)
    work = tmp_path / "runs"
    # 1000 s per structure: GS + one direction = 500 s, x1.2 = 600 s; one direction alone 360 s
    messages = []
    fake = FakeAbinit()
    run_plan(plan, out, work, settings=settings, runner=fake, log=messages.append,
             deadline=400.0, clock=lambda: 0.0, carry=None)
    assert fake.calls == [] and any(m.startswith("defer s1:") for m in messages)
    (work / "s1").mkdir(parents=True)
    for name in ("gs.done", "gs_o_WFK"):
        (work / "s1" / name).write_text("1\n")
    messages.clear()
    run_plan(plan, out, work, settings=settings, runner=fake, log=messages.append,
             deadline=400.0, clock=lambda: 0.0, carry=None)
    assert fake.calls == ["s1"]
    (start,) = [m for m in messages if m.startswith("start s1")]
    assert "estimated 14m59s" in start or "estimated 15m00s" in start  # 3 directions, no GS: 900 s


def test_partial_born_charges_check_the_structure(tmp_path):
    from ase_born.dft.pipeline import partial_born_charges
    from ase_born.io.abinit import AbinitParseError

    tiny = DATA / "tilt10_tiny"
    structure = read_abinit_output(tiny / "gs.abo")
    with pytest.raises(FileNotFoundError):
        partial_born_charges(tmp_path, structure)
    shutil.copy(tiny / "gs.abo", tmp_path / "gs.abo")  # carried with every direction (save_direction)
    for d in (1, 2):
        shutil.copy(tiny / f"efield{d}.ddb", tmp_path / f"efield{d}.ddb")
        (tmp_path / f"efield{d}.done").write_text("1\n")
    z, dirs = partial_born_charges(tmp_path, structure)
    assert dirs == [1, 2] and z.shape == (10, 3, 3) and np.isnan(z).all()  # skewed cell: no row from 2 of 3
    moved = structure.copy()
    moved.positions[3] += 0.01
    with pytest.raises(AbinitParseError, match="another structure"):
        partial_born_charges(tmp_path, moved)
    swapped = structure.copy()
    swapped.numbers[[0, 2]] = swapped.numbers[[2, 0]]
    with pytest.raises(AbinitParseError, match="another structure"):
        partial_born_charges(tmp_path, swapped)


@pytest.mark.parametrize("where", ["carried", "run directory"])
def test_structure_is_timed_by_its_own_markers(tmp_path, where):
    """A structure with finished steps is estimated from their markers (here GS 100 s, a
    direction 200 + 300 s), not from the kind's scaled rate: carried over (the GS is redone:
    GS + 2 directions) or in its kept run directory (2 directions)."""
    plan = _fake_plan(tmp_path, n=1)
    carried = where == "carried"
    place = tmp_path / "partial" / "s0" if carried else tmp_path / "runs" / "s0"
    place.mkdir(parents=True)
    for name, value in (("gs.done", 100.0), ("ddk1.done", 200.0), ("efield1.done", 300.0),
                        ("efield1.ddb" if carried else "gs_o_WFK", 0)):
        (place / name).write_text(f"{value}\n")
    messages, fake = [], FakeAbinit()
    if carried:  # GS + one direction x1.2 = 720 s
        run_plan(plan, tmp_path / "data.xyz", tmp_path / "runs", runner=fake, log=messages.append,
                 deadline=700.0, clock=lambda: 0.0)
        assert fake.calls == [] and any(m.startswith("defer s0:") and "12m00s" in m for m in messages)
    run_plan(plan, tmp_path / "data.xyz", tmp_path / "runs", runner=fake, log=messages.append,
             deadline=1e5, clock=lambda: 0.0, carry="auto" if carried else None)
    assert fake.calls == ["s0"]
    assert any(m.startswith("start s0") and f"estimated {'18m20s' if carried else '16m40s'}" in m for m in messages)


def test_unloaded_wall_time_from_cpu_seconds():
    """A run slowed down by other work on the machine is costed at its CPU time per rank
    (x WALL_PER_CPU), never above its measured wall time; no CPU time: the wall time."""
    from ase_born.dft.pipeline import WALL_PER_CPU, unloaded_wall_s

    # tilt10_0001's ground state: 4541.5 s wall on 2 ranks, 5642.8 CPU s / 9081.4 wall s summed
    assert unloaded_wall_s(4541.5, 5642.8, 9081.4) == pytest.approx(WALL_PER_CPU * 5642.8 / 2, rel=1e-3)
    assert unloaded_wall_s(1000.0, 1990.0, 2000.0) == 1000.0  # cores to itself: the wall time
    assert unloaded_wall_s(1000.0, None, None) == 1000.0
    model = CostModel(ranks=2)
    model.add_frame(_timed_frame(wall_s=2000.0, cpu_s=2000.0), AbinitSettings())  # half the CPU it wanted
    assert model.estimate_s("cubic5", 1.0) == pytest.approx(WALL_PER_CPU * 1000.0 / _model_units())


def _timed_frame(**info):
    a = read_abinit_output(DATA / "gs.abo")
    a.info.update(structure_id="s0", kind="cubic5", split="train", mpi_ranks=2, kpts=np.array([1, 1, 1]), **info)
    return a


def _model_units():
    return work_units(_timed_frame(), [1, 1, 1])


def test_loaded_markers_are_costed_by_their_cpu_time(tmp_path):
    """A carried structure whose ground state ran at half speed (400 s wall, 400 CPU s over 2
    ranks x 400 s) is estimated at 1.06 x 200 s for it; a step without its .abo by its marker."""
    plan = _fake_plan(tmp_path, n=1)
    place = tmp_path / "partial" / "s0"
    place.mkdir(parents=True)
    for name, value in (("gs.done", 400.0), ("ddk1.done", 200.0), ("efield1.done", 300.0), ("efield1.ddb", 0)):
        (place / name).write_text(f"{value}\n")
    (place / "gs.abo").write_text("...\n+Overall time at end (sec) : cpu=  400.0  wall=  800.0\n")
    (place / "efield1.abo").write_text("...\n+Overall time at end (sec) : cpu=  700.0  wall=  600.0\n")
    messages, fake = [], FakeAbinit()
    run_plan(plan, tmp_path / "data.xyz", tmp_path / "runs", runner=fake, log=messages.append,
             deadline=1e5, clock=lambda: 0.0)
    # 212 s + two directions of 200 + 300 s = 1212 s
    assert fake.calls == ["s0"] and any(m.startswith("start s0") and "estimated 20m12s" in m for m in messages)


def _write_big_small_plan(path):
    """A plan of two copies of the tilt10_tiny structure, IDs ``big`` and ``small`` (training split)."""
    structure = read_abinit_output(DATA / "tilt10_tiny" / "gs.abo")
    plan = []
    for sid in ("big", "small"):
        a = structure.copy()
        a.info.update(structure_id=sid, kind="tilt10", split="train")
        plan.append(a)
    write_frames(path, plan)


def test_ground_state_cut_at_the_time_limit_continues_in_the_next_call(tmp_path, monkeypatch):
    """A ground state longer than its estimate is not killed with the session: ABINIT's
    --timelimit (the kill time minus GS_TIMELIMIT_MARGIN_S) ends it cleanly, its
    wavefunctions are kept, the call goes on with the rest of the plan (not that structure
    again), and the next call continues the ground state from them (irdwfk), counting the
    seconds of both tries in its marker."""
    _write_big_small_plan(tmp_path / "plan.xyz")
    out, work = tmp_path / "data" / "dft.xyz", tmp_path / "runs"
    now = [0.0]
    calls, linked = _fake_steps(monkeypatch, now, cost=lambda name, kind: 2000.0 if (name, kind) == ("big", "gs")
                                else 1.0)
    messages = []
    counts = run_plan(tmp_path / "plan.xyz", out, work, deadline=900.0, grace_s=100.0, clock=lambda: now[0],
                      log=messages.append, step_level=True)
    # big's GS (cost unknown: admitted) gets --timelimit 1000 - 600 = 400 s and is cut there
    assert calls[0] == ("big", "gs") and ("big", "ddk1") not in calls
    assert counts["finished"] == 1 and counts["pending"] == 1 and counts["deferred"] == 1
    assert finished_ids(out) == {"small"} and calls.count(("big", "gs")) == 1  # not retried in this call
    big = work / "big"
    assert (big / PARTIAL_WFK).read_text() == "wfk" and not (big / "gs_o_WFK").exists()
    assert read_marker(big / "gs.partial") == 400.0 and not (big / "gs.done").exists()
    assert any(m.startswith("big: gs cut at the time limit (") and "7 min so far" in m for m in messages)
    st = status(tmp_path / "plan.xyz", out, work)
    assert st["started"]["big"]["gs_cut_s"] == 400.0
    buf = io.StringIO()
    print_status(st, buf)
    assert "started big: steps done none; gs cut early after 7 min (time limit or stop request), continues " \
           "from its kept wavefunctions" in buf.getvalue()
    assert resolve_step_level("auto", work, out)

    calls.clear()
    counts = run_plan(tmp_path / "plan.xyz", out, work, log=messages.append, step_level=True)
    assert counts["finished"] == 1 and calls[0] == ("big", "gs")
    assert linked["gs"] == [PARTIAL_WFK]  # continued from the kept wavefunctions
    assert "irdwfk 1" in (big / "gs.abi").read_text()
    assert read_marker(big / "gs.done") == 2400.0  # 400 s cut + 2000 s continued
    assert not (big / PARTIAL_WFK).exists() and not (big / "gs.partial").exists()


def test_short_grace_admits_a_ground_state_only_before_its_time_limit(tmp_path, monkeypatch):
    """With a grace shorter than GS_TIMELIMIT_MARGIN_S a ground state's --timelimit falls
    before the deadline (deadline + grace - margin): at 700 s, with 900 s deadline and a
    3 min grace, small's ground state (~3 min with the margin) fits before the deadline but
    not before its time limit (480 s); it is deferred, not started and cut at once (as six
    ground states were in session 37).  With a 10 min grace it starts and is not cut."""
    _write_big_small_plan(tmp_path / "plan.xyz")
    for grace in (180.0, 600.0):
        out, work = tmp_path / f"data{int(grace)}" / "dft.xyz", tmp_path / f"runs{int(grace)}"
        now = [0.0]
        calls, _ = _fake_steps(monkeypatch, now, cost={"gs": 100.0, "ddk": 100.0, "efield": 100.0})
        messages = []
        counts = run_plan(tmp_path / "plan.xyz", out, work, deadline=900.0, grace_s=grace, clock=lambda now=now: now[0],
                          log=messages.append, step_level=True)
        assert finished_ids(out) == {"big"}  # its steps' costs were unknown: each started before 480 s / 900 s
        assert not (work / "small" / PARTIAL_WFK).exists() and not any("cut" in m for m in messages)
        if grace < dft_abinit.GS_TIMELIMIT_MARGIN_S:
            assert ("small", "gs") not in calls and counts["deferred"] == 1
            assert any(m.startswith("defer small: its next step (gs) needs ~") and m.endswith(
                "1m00s left before its ABINIT time limit (grace < 10 min)") for m in messages), messages
        else:
            assert calls[-1] == ("small", "gs") and (work / "small" / "gs.done").is_file()
            assert any(m.startswith("pause small before ddk1: needs ~") and "1m40s left before the deadline" in m
                       for m in messages), [m for m in messages if "small" in m]


@needs_psp
def test_a_failed_continuation_of_a_cut_ground_state_starts_afresh(tmp_path, monkeypatch):
    """Kept wavefunctions that ABINIT cannot continue from (a failed try) are dropped, so the
    next try is a plain ground state, not the same failure again."""
    inputs = []

    def fake_step(directory, step, *a, **k):
        inputs.append((directory / f"{step}.abi").read_text())
        raise AbinitError("gs: abinit exited with code 1; cannot read in_WFK")

    monkeypatch.setattr(dft_abinit, "run_step", fake_step)
    d = tmp_path / "s"
    d.mkdir()
    (d / PARTIAL_WFK).write_text("wfk")
    (d / "gs.partial").write_text("300.0\n")
    with pytest.raises(AbinitError, match="cannot read"):
        run_structure(make_structure("cubic5", 0), AbinitSettings(), d, cleanup=False)
    assert "irdwfk 1" in inputs[0] and (d / "in_WFK").is_symlink()
    assert not (d / PARTIAL_WFK).exists() and not (d / "gs.partial").exists()
    with pytest.raises(AbinitError):
        run_structure(make_structure("cubic5", 0), AbinitSettings(), d, cleanup=False)
    assert "irdwfk" not in inputs[1]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_run_step_passes_the_time_limit_and_reports_a_cut(tmp_path, monkeypatch):
    """``timelimit_s`` reaches ABINIT as ``--timelimit H:MM:SS``; an output that says the SCF
    loop was left at the time limit is a cut (StepCut), not a finished step."""
    script = ('echo "$@" > args; printf " ETOT  1  -1.0 -1.0 1.0 2.5E-03 0.0 0.0\\n'
              '    Approaching time limit 400.00 [s]. Will exit istep loop in scfcv_core.\\n'
              ' Calculation completed.\\n" > gs.abo')
    monkeypatch.setattr(dft_abinit, "mpi_command", lambda ranks: ["bash", "-c", script, "fake-abinit"])
    with pytest.raises(dft_abinit.StepCut) as info:
        dft_abinit.run_step(tmp_path, "gs", 1, None, nice=0, timelimit_s=3725.6)
    assert info.value.step == "gs" and info.value.seconds >= 0.0
    assert (tmp_path / "args").read_text().split() == ["gs.abi", "--timelimit", "1:02:05"]
    assert dft_abinit._scf_summary(tmp_path / "gs.abo") == "1 SCF iterations, vres2 2.500E-03"
    assert dft_abinit.timelimit_arg(59.9) == "0:00:59" and dft_abinit.timelimit_arg(0.2) == "0:00:01"


@pytest.mark.parametrize("step_level", [False, True])
def test_structure_pauses_before_a_step_that_does_not_fit(tmp_path, monkeypatch, step_level):
    """A long structure stops before a step that cannot finish before the deadline (timed by
    its own finished steps); the time left goes to a structure that fits, and a later call
    resumes the paused one on its kept run directory.  Without ``step_level`` a ddk step
    starts only with its field step (a whole direction) fitting too."""
    tiny = DATA / "tilt10_tiny"
    _write_big_small_plan(tmp_path / "plan.xyz")
    out, work = tmp_path / "data" / "dft.xyz", tmp_path / "runs"
    now = [0.0]
    cost = {"gs": 10.0, "ddk": 40.0, "efield": 60.0}
    calls, _ = _fake_steps(monkeypatch, now, cost=lambda name, kind: cost[kind] if name == "big" else 1.0)
    messages = []
    settings = AbinitSettings(ecut_Ha=12.0)
    counts = run_plan(tmp_path / "plan.xyz", out, work, settings=settings, deadline=160.0, clock=lambda: now[0],
                      log=messages.append, step_level=step_level)
    # big: GS + direction 1 end at 110 s, 50 s left; ddk2 alone needs 40 x 1.2 = 48 s,
    # with its field step (40 + 60) x 1.2 = 120 s
    big = [s for d, s in calls if d == "big"]
    if step_level:
        assert big == ["gs", "ddk1", "efield1", "ddk2"]
        assert any(m.startswith("pause big before efield2: needs ~1m12s") for m in messages)
    else:
        assert big == ["gs", "ddk1", "efield1"]
        assert any(m.startswith("pause big before ddk2 (field direction 2): needs ~2m00s") for m in messages)
    assert [s for d, s in calls if d == "small"] == ["gs", "ddk1", "efield1", "ddk2", "efield2", "ddk3", "efield3"]
    assert counts["finished"] == 1 and counts["deferred"] == 1 and counts["pending"] == 1
    assert finished_ids(out) == {"small"}
    assert (work / "big" / "gs_o_WFK").is_file()  # kept for a later call on this machine
    st = status(tmp_path / "plan.xyz", out, work)
    assert st["kept_ground_state"] == ["big"] and st["partial"] == {"big": [1]}
    buf = io.StringIO()
    print_status(st, buf)
    assert "(no GS to redo): big" in buf.getvalue()
    # the run directory of an unfinished structure survived: "auto" schedules step by step
    assert resolve_step_level("auto", work, out) and not resolve_step_level("no", work, out)
    calls.clear()
    counts = run_plan(tmp_path / "plan.xyz", out, work, settings=settings, log=messages.append)
    assert counts["finished"] == 1
    rest = ["efield2", "ddk3", "efield3"]
    assert [s for d, s in calls] == (rest if step_level else ["ddk2", *rest])  # no ground state again
    frame = read_frames(out)[-1]
    assert frame.info["structure_id"] == "big"
    ref = read_abinit_output(tiny / "gs.abo", tiny / "efield_onerun.abo")
    np.testing.assert_allclose(get_born_charges(frame), get_born_charges(ref), atol=1e-9)
    # every structure finished: nothing left to resume
    assert not resolve_step_level("auto", work, out)


def _fake_steps(monkeypatch, now=None, cost=None):
    """Replace ABINIT by file-writing stand-ins on the tilt10_tiny outputs (10 atoms: ddk files
    1WF31-33); returns the steps run and, per field run, the ddk directions it was given.

    ``cost`` gives each step's seconds (added to the clock ``now[0]``): a dict by step kind
    (gs, ddk, efield) or a function of (run directory name, kind); 1 s when None.  A ground
    state longer than its ``timelimit_s`` is cut there (:class:`StepCut`, wavefunctions
    written); ``linked["gs"]`` lists, per ground state that continued a cut one, the file
    its ``in_WFK`` pointed to."""
    tiny = DATA / "tilt10_tiny"
    calls, linked = [], {}

    def seconds_of(name, kind):
        if cost is None:
            return 1.0
        return cost(name, kind) if callable(cost) else cost[kind]

    def fake_step(directory, step, ranks, timeout_s, nice=19, stop_event=None, timelimit_s=None, **kw):
        calls.append((directory.name, step))
        kind = step.rstrip("123").removeprefix("eps_")
        if step == "gs":
            shutil.copy(tiny / "gs.abo", directory / "gs.abo")
            (directory / "gs_o_WFK").write_text("wfk")
            if "irdwfk 1" in (directory / "gs.abi").read_text():  # continues a ground state cut earlier
                linked.setdefault("gs", []).append(os.readlink(directory / "in_WFK"))
            if timelimit_s is not None and seconds_of(directory.name, kind) > timelimit_s:
                if now is not None:  # ABINIT leaves the SCF loop at its --timelimit
                    now[0] += timelimit_s
                raise dft_abinit.StepCut(step, timelimit_s)
        elif kind == "ddk":
            c = int(step[-1])
            rfdir = " ".join("1" if i == c - 1 else "0" for i in range(3))
            assert f"rfdir {rfdir}" in (directory / f"{step}.abi").read_text()
            (directory / f"ddk{c}_o_1WF{30 + c}").write_text("ddk")
        else:
            d = int(step[-1])
            linked[d] = sorted(int(p.name[6:]) - 30 for p in directory.glob("in_1WF*"))
            shutil.copy(tiny / f"efield{d}.ddb", directory / f"ef{d}_o_DDB")
        seconds = seconds_of(directory.name, kind)
        if now is not None:
            now[0] += seconds
        return seconds

    monkeypatch.setattr(dft_abinit, "run_step", fake_step)
    return calls, linked


def _carry_direction_1(place, times=(10.0, 40.0, 60.0)):
    """Direction 1 of the tilt10_tiny structure finished in an earlier session: outputs and markers only."""
    tiny = DATA / "tilt10_tiny"
    place.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny / "gs.abo", place / "gs.abo")
    shutil.copy(tiny / "efield1.ddb", place / "efield1.ddb")
    for name, value in zip(("gs.done", "ddk1.done", "efield1.done"), times):
        (place / name).write_text(f"{value}\n")


def test_carried_direction_gets_its_ddk_again_for_epsilon(tmp_path, monkeypatch):
    """On a new ground state the ddk of a carried direction is run again (eps_ddk1) before the
    next direction, so the field runs 2 and 3 get every ddk up to their own (ε∞[2, 1], ε∞[3, 1]);
    refused by ``before_step`` or turned off it is skipped, not a pause."""
    structure = read_abinit_output(DATA / "tilt10_tiny" / "gs.abo")
    settings = AbinitSettings(ecut_Ha=12.0)
    for mode in ("run", "refused", "off"):
        calls, linked = _fake_steps(monkeypatch)
        work = tmp_path / mode
        _carry_direction_1(work)
        kw = {"before_step": lambda name: not name.startswith("eps_")} if mode == "refused" else {}
        run_structure(structure, settings, work, ranks=1, cleanup=False, complete_epsilon=mode != "off", **kw)
        steps = [s for _, s in calls]
        if mode == "run":
            assert steps == ["gs", "eps_ddk1", "ddk2", "efield2", "ddk3", "efield3"]
            assert linked == {2: [1, 2], 3: [1, 2, 3]} and (work / "eps_ddk1.done").is_file()
        else:
            assert steps == ["gs", "ddk2", "efield2", "ddk3", "efield3"]
            assert linked == {2: [2], 3: [2, 3]}


def _eps_run(tmp_path, monkeypatch, deadline, cost, step_level):
    """One plan structure ("big", tilt10_tiny) with direction 1 carried (markers: GS 10,
    ddk 40, field 60 s) run to ``deadline`` with fake steps of ``cost``; (steps run, output,
    log messages)."""
    structure = read_abinit_output(DATA / "tilt10_tiny" / "gs.abo")
    structure.info.update(structure_id="big", kind="tilt10", split="train")
    write_frames(tmp_path / "plan.xyz", [structure])
    out = tmp_path / f"data{int(deadline)}{step_level}" / "dft.xyz"
    now = [0.0]
    calls, _ = _fake_steps(monkeypatch, now, cost=cost)
    _carry_direction_1(out.parent / "partial" / "big")
    messages = []
    run_plan(tmp_path / "plan.xyz", out, tmp_path / f"runs{int(deadline)}{step_level}",
             settings=AbinitSettings(ecut_Ha=12.0), deadline=deadline, grace_s=GRACE, clock=lambda: now[0],
             log=messages.append, step_level=step_level)
    return [s for _, s in calls], out, messages


@pytest.mark.parametrize("step_level", [False, True])
def test_epsilon_ddk_runs_only_when_it_fits(tmp_path, monkeypatch, step_level):
    """The scheduler lets eps_ddk1 run only when it and the next whole direction fit before the
    deadline (times from the carried markers: GS 10, ddk 40, field 60 s, x1.2); otherwise it is
    skipped with a message and the direction runs without it.  Step by step, also every step
    the structure still needs when those fit without it (session 29: pnma20_0001's eps_ddk2
    would have pushed its last field step past the deadline): the estimates are low (the steps
    take 48 and 70 s); after the GS (t = 10 s, 260 s left) the required ddk2, efield2, ddk3,
    efield3 need 200 x 1.2 = 240 s, with eps_ddk1 288 s: it is skipped and the frame is written
    (before, eps_ddk1 ran and efield3, 78 s needed with 46 s left, was paused).  With time for
    all of them it runs."""
    cost = {"gs": 10.0, "ddk": 48.0, "efield": 70.0} if step_level else {"gs": 10.0, "ddk": 40.0, "efield": 60.0}
    steps, out, messages = _eps_run(tmp_path, monkeypatch, 1e5, cost, step_level)
    assert steps == ["gs", "eps_ddk1", "ddk2", "efield2", "ddk3", "efield3"] and finished_ids(out) == {"big"}
    steps, out, messages = _eps_run(tmp_path, monkeypatch, 270.0 if step_level else 150.0, cost, step_level)
    if step_level:
        assert steps == ["gs", "ddk2", "efield2", "ddk3", "efield3"] and finished_ids(out) == {"big"}
        assert any(m.startswith("skip eps_ddk1 of big: needs ~4m48s") for m in messages)
    else:
        # after the GS (t = 10 s): eps_ddk1 + ddk2 + efield2 = 140 s x 1.2 > 140 s left; ddk2 + efield2 fit
        assert steps == ["gs", "ddk2", "efield2"]
        assert any(m.startswith("skip eps_ddk1 of big: needs ~2m48s") for m in messages)


def _record_run_times(monkeypatch, load):
    """After each (fake) step append ABINIT's CPU and wall seconds to its .abo as a run at
    ``load(run directory name, step)`` would have them: CPU per wall second 1 / (load x
    WALL_PER_CPU), so that :func:`step_load` reads ``load`` back."""
    run = dft_abinit.run_step

    def timed(directory, step, *args, **kwargs):
        seconds = run(directory, step, *args, **kwargs)
        wall = load(directory.name, step) * 1.06 * seconds
        with open(directory / f"{step}.abo", "a") as f:
            f.write(f"\n+Overall time at end (sec) : cpu= {seconds:.1f}  wall= {wall:.1f}\n")
        return seconds

    monkeypatch.setattr(dft_abinit, "run_step", timed)


def test_admission_scales_estimates_by_the_load_of_the_latest_step(tmp_path, monkeypatch):
    """Estimates are idle-machine costs; a step is admitted only if it fits at the load the
    latest step of this call ran at (session 28: pnma20_0001 "estimated 2h49m" ran ~4 h beside
    other work).  Every step here gets half a core per rank (ABINIT's CPU/wall in its .abo):
    load 2.  After the GS (t = 400 s, 300 s left) ddk2, estimated 200 s from the carried
    marker, needs 200 x 1.2 x 2 = 480 s: paused (before: 240 s, admitted, then took 400 s)."""
    structure = read_abinit_output(DATA / "tilt10_tiny" / "gs.abo")
    structure.info.update(structure_id="big", kind="tilt10", split="train")
    write_frames(tmp_path / "plan.xyz", [structure])
    out = tmp_path / "data" / "dft.xyz"
    now = [0.0]
    calls, _ = _fake_steps(monkeypatch, now, cost={"gs": 400.0, "ddk": 400.0, "efield": 600.0})
    monkeypatch.setattr(dft_abinit, "GS_TIMELIMIT_MARGIN_S", 0.0)  # 10 min: beyond this test's time scale
    _record_run_times(monkeypatch, lambda name, step: 2.0)
    _carry_direction_1(out.parent / "partial" / "big", times=(200.0, 200.0, 300.0))
    messages = []
    run_plan(tmp_path / "plan.xyz", out, tmp_path / "runs", settings=AbinitSettings(ecut_Ha=12.0),
             deadline=700.0, grace_s=GRACE, clock=lambda: now[0], log=messages.append, step_level=True, complete_epsilon=False)
    assert [s for _, s in calls] == ["gs"]
    assert any(m.startswith("pause big before ddk2: needs ~8m00s (x1.2 margin, x2.00 load now)") for m in messages)
    run = tmp_path / "runs" / "big"
    assert step_load(run / "gs.done") == pytest.approx(2.0)
    (run / "short.done").write_text("299\n")  # start-up dominates a short run: no load from it
    (run / "short.abo").write_text("+Overall time at end (sec) : cpu= 100.0  wall= 598.0\n")
    assert step_load(run / "short.done") is None and step_load(run / "none.done") is None


def test_a_structure_paused_under_load_resumes_in_the_same_call_when_the_load_is_gone(tmp_path, monkeypatch):
    """Session 33: tilt10_0009 was paused before ddk3 because its ground state ran beside an MD
    run (x1.43 load) and was never taken up again in that call, though the MD run ended soon
    after.  Here big's GS runs at load 2 (t = 400 s, 2000 s left): ddk2, 1000 s by its carried
    marker, needs 1000 x 1.2 x 2 = 2400 s: paused.  small then runs unloaded (its ground state
    300 s at load 1, its other steps 1 s, t = 706 s): ddk2 needs 1200 s of the 1694 s left,
    and big resumes on its kept ground state and finishes in this call."""
    _write_big_small_plan(tmp_path / "plan.xyz")
    out = tmp_path / "data" / "dft.xyz"
    now = [0.0]

    def cost(name, kind):
        if name == "big":
            return 400.0 if kind == "gs" else 100.0
        return 300.0 if kind == "gs" else 1.0

    calls, _ = _fake_steps(monkeypatch, now, cost=cost)
    _record_run_times(monkeypatch, lambda name, step: 2.0 if (name, step) == ("big", "gs") else 1.0)
    _carry_direction_1(out.parent / "partial" / "big", times=(200.0, 1000.0, 300.0))
    messages = []
    counts = run_plan(tmp_path / "plan.xyz", out, tmp_path / "runs", settings=AbinitSettings(ecut_Ha=12.0),
                      deadline=2400.0, clock=lambda: now[0], log=messages.append, step_level=True,
                      complete_epsilon=False)
    assert any(m.startswith("pause big before ddk2: needs ~40m00s (x1.2 margin, x2.00 load now)") for m in messages)
    assert any(m.startswith("resume big: its next step (ddk2) fits now (x1.2 margin)") for m in messages)
    small = ["gs", "ddk1", "efield1", "ddk2", "efield2", "ddk3", "efield3"]
    assert calls == [("big", "gs"), *[("small", s) for s in small],
                     *[("big", s) for s in ("ddk2", "efield2", "ddk3", "efield3")]]  # no second GS
    assert counts["finished"] == 2 and counts["deferred"] == 0 and counts["pending"] == 0
    assert finished_ids(out) == {"big", "small"}


def test_grace_lets_the_step_running_at_the_deadline_finish(tmp_path, monkeypatch):
    """efield3 is admitted (estimate 10 s x 1.2 before the deadline at 80 s) but takes 30 s:
    without grace the deadline kills it (no frame; directions 1, 2 carried); with grace the
    pipeline waits for it and the frame is written, and no step starts after the deadline."""
    structure = read_abinit_output(DATA / "tilt10_tiny" / "gs.abo")
    structure.info.update(structure_id="big", kind="tilt10", split="train")
    write_frames(tmp_path / "plan.xyz", [structure])
    for grace in (0.0, 100.0):
        now = [0.0]
        calls, _ = _fake_steps(monkeypatch, now, cost={"gs": 10.0, "ddk": 10.0, "efield": 10.0})
        quick = dft_abinit.run_step

        def slow_last(directory, step, ranks, timeout_s, nice=19, stop_event=None, grace=grace, now=now, quick=quick,
                      **kw):
            seconds = quick(directory, step, ranks, timeout_s, nice, stop_event, **kw)
            if step == "efield3":  # ends at 90 s: waits for the pipeline's stop (1.5 s at most with grace)
                now[0] += 20.0
                if stop_event.wait(1.5 if grace else 30.0):
                    raise dft_abinit.StepInterrupted("efield3: stopped on request")
            return seconds

        monkeypatch.setattr(dft_abinit, "run_step", slow_last)
        out = tmp_path / f"data{int(grace)}" / "dft.xyz"
        messages = []
        run_plan(tmp_path / "plan.xyz", out, tmp_path / f"runs{int(grace)}", settings=AbinitSettings(ecut_Ha=12.0),
                 deadline=80.0, grace_s=grace, clock=lambda now=now: now[0], log=messages.append)
        assert [s for _, s in calls][-1] == "efield3"
        if grace:
            assert finished_ids(out) == {"big"}
            assert any("no step starts any more; the running ones may finish within 1m40s" in m for m in messages)
        else:
            assert not out.exists() or finished_ids(out) == set()
            assert any(m.startswith("deadline reached: stopping") for m in messages)
            assert sorted(p.name for p in (out.parent / "partial" / "big").glob("efield*.ddb")) == [
                "efield1.ddb", "efield2.ddb"]
    # a step whose cost is unknown (no frame, no marker yet) starts only before the deadline too
    now = [0.0]
    calls, _ = _fake_steps(monkeypatch, now, cost={"gs": 10.0, "ddk": 10.0, "efield": 10.0})
    messages = []
    run_plan(tmp_path / "plan.xyz", tmp_path / "fresh" / "dft.xyz", tmp_path / "fresh_runs",
             settings=AbinitSettings(ecut_Ha=12.0), deadline=15.0, grace_s=1000.0, clock=lambda: now[0],
             log=messages.append, step_level=True)
    assert [s for _, s in calls] == ["gs", "ddk1"]  # efield1 would start at 20 s
    assert any(m.startswith("pause big before efield1: needs an unknown time") for m in messages)


def test_step_level_starts_a_structure_whose_ground_state_alone_fits(tmp_path):
    """A structure longer than one call starts when step by step is allowed, not otherwise."""
    plan = _fake_plan(tmp_path, n=1)
    carry = tmp_path / "partial" / "s0"
    carry.mkdir(parents=True)
    for name, value in (("gs.done", 100.0), ("ddk1.done", 200.0), ("efield1.done", 300.0), ("efield1.ddb", 0)):
        (carry / name).write_text(f"{value}\n")
    for step_level, expected in ((False, []), (True, ["s0"])):
        messages, fake = [], FakeAbinit()
        run_plan(plan, tmp_path / "data.xyz", tmp_path / "runs", runner=fake, log=messages.append,
                 deadline=200.0, grace_s=GRACE, clock=lambda: 0.0, step_level=step_level)  # GS 120 s fits, GS + direction 720 s not
        assert fake.calls == expected
        if not step_level:
            assert any(m.startswith("defer s0: its next field direction") for m in messages)
    assert not resolve_step_level("auto", tmp_path / "missing", tmp_path / "data.xyz")
    # a ground state cut by the end of an earlier call (its input, no marker) counts as survived;
    # an empty run directory or one of a finished structure does not
    work = tmp_path / "kept"
    (work / "s1").mkdir(parents=True)
    assert not resolve_step_level("auto", work, tmp_path / "data.xyz")
    (work / "s1" / "gs.abi").write_text("ecut 30\n")
    assert resolve_step_level("auto", work, tmp_path / "data.xyz")
    done = Atoms("H", cell=[3.0, 3.0, 3.0], pbc=True, info={"structure_id": "s1"})
    write_frames(tmp_path / "done.xyz", [done])
    assert not resolve_step_level("auto", work, tmp_path / "done.xyz")
    with pytest.raises(ValueError, match="step level"):
        resolve_step_level("maybe", tmp_path, tmp_path / "data.xyz")


def test_step_level_auto_says_yes_once_an_earlier_call_ran_to_its_deadline(tmp_path, monkeypatch):
    """A work directory that outlived a whole call (its deadline passed) is on a kept machine:
    ``auto`` schedules step by step there even with no started step, so that a 20-atom cell can
    start; a call still running (restarted in the same session) does not count."""
    plan = _fake_plan(tmp_path, n=1)
    work, out = tmp_path / "runs", tmp_path / "data.xyz"
    run_plan(plan, out, work, runner=FakeAbinit(), log=lambda m: None, deadline=1000.0, clock=lambda: 400.0)
    calls = json.loads((work / CALLS_FILE).read_text())
    assert len(calls) == 1 and calls[0]["end"] - calls[0]["start"] == pytest.approx(600.0, abs=0.2)
    assert finished_ids(out) == {"s0"} and not any(work.glob("*/*.partial"))  # nothing started is left
    assert not machine_kept(work) and not resolve_step_level("auto", work, out)  # its deadline is ahead
    later = calls[0]["end"] + 1.0
    assert machine_kept(work, now=later) and resolve_step_level("auto", work, out, now=later)
    assert not resolve_step_level("no", work, out, now=later)
    assert not status(plan, out, work)["machine_kept"]
    monkeypatch.setattr(time, "time", lambda: later)
    buf = io.StringIO()
    print_status(status(plan, out, work), buf)
    assert "an earlier call ran to its deadline here (a kept machine)" in buf.getvalue()
    monkeypatch.undo()
    run_plan(plan, out, work, runner=FakeAbinit(), log=lambda m: None)  # no deadline: not recorded
    assert len(json.loads((work / CALLS_FILE).read_text())) == 1
    (work / CALLS_FILE).write_text("[{}, {\"end\": \"soon\"}]")  # unreadable entries do not count
    assert not machine_kept(work, now=later)


def test_start_estimate_counts_a_half_done_direction_by_its_steps_left(tmp_path):
    """Resumed after ddk2 on its kept ground state: the estimate is efield2 + ddk3 + efield3
    (300 + 200 + 300 s), not two whole directions."""
    plan = _fake_plan(tmp_path, n=1)
    run = tmp_path / "runs" / "s0"
    run.mkdir(parents=True)
    for name, value in (("gs.done", 100.0), ("gs_o_WFK", 0), ("ddk1.done", 200.0), ("efield1.done", 300.0),
                        ("ddk2.done", 200.0)):
        (run / name).write_text(f"{value}\n")
    messages, fake = [], FakeAbinit()
    run_plan(plan, tmp_path / "data.xyz", tmp_path / "runs", runner=fake, log=messages.append,
             deadline=1e5, clock=lambda: 0.0, carry=None)
    assert fake.calls == ["s0"]
    assert any(m.startswith("start s0") and "estimated 13m20s" in m for m in messages)


def test_background_script_stops_at_once_without_the_cli(tmp_path):
    """A start that races the install (session 19) must stop with a clear message, not go on
    to ``dft run`` and print "command not found" twice."""
    import subprocess

    script = Path(__file__).resolve().parents[2] / "scripts" / "dft_background.sh"
    (tmp_path / "scripts").mkdir()
    shutil.copy(script, tmp_path / "scripts")
    bash = shutil.which("bash")
    if bash is None or None in (shutil.which("dirname"), shutil.which("mkdir")):
        pytest.skip("no bash or coreutils")
    bin_dir = tmp_path / "bin"  # the coreutils the script needs, and no ase-born
    bin_dir.mkdir()
    for tool in ("dirname", "mkdir"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    res = subprocess.run([bash, str(tmp_path / "scripts" / "dft_background.sh")],
                         env={"PATH": str(bin_dir)}, capture_output=True, text=True,
                         timeout=30, check=False)
    assert res.returncode == 127
    assert "ase-born not found" in res.stdout
    assert "command not found" not in res.stderr
    assert (tmp_path / "dft_runs").is_dir()
    assert not (tmp_path / "dft_runs" / "background.pid").exists()  # nothing started, nothing to stop


@pytest.mark.parametrize("action", ["run", "status"])
def test_cli_without_a_plan_says_where_it_looked(tmp_path, monkeypatch, capsys, action):
    """``ase-born dft run|status`` outside the repository root (the default plan path is
    relative): a one-line error naming the path and the directory, exit status 1, no
    traceback, no ABINIT started and nothing written into the work directory."""
    from ase_born.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["dft", action, "--workdir", str(tmp_path / "runs")]) == 1
    msg = capsys.readouterr().err
    assert msg.startswith("ase-born dft: error: ") and msg.count("\n") == 1
    assert "plan file not found: data/dft/plan_catio3.extxyz" in msg
    assert str(tmp_path) in msg and "ase-born dft plan" in msg
    assert not (tmp_path / "runs").exists()


def test_converge_table_without_results_says_where_it_looked(tmp_path, monkeypatch, capsys):
    """``ase-born dft converge --table`` away from the stored study: a one-line error, not an
    empty table; from the repository root it prints the stored study's table."""
    from ase_born.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["dft", "converge", "--table"]) == 1
    msg = capsys.readouterr().err
    assert msg.startswith("ase-born dft: error: no convergence results at data/dft/convergence.json")
    assert str(tmp_path) in msg and msg.count("\n") == 1
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert main(["dft", "converge", "--table"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("|") and "30" in table


# --- safeguards of the pipeline (review of the DFT pipeline) --------------------------------------


def _wait_for(predicate, timeout=20.0):
    t0 = time.time()
    while not predicate():
        if time.time() - t0 > timeout:
            return False
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat[stat.rfind(b")") + 2 :].split()[0].decode()


def _kill_if_alive(*pids: int) -> None:
    """Clean up processes this test started (by their PIDs)."""
    for pid in pids:
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_second_pipeline_on_the_same_workdir_is_refused(tmp_path):
    """Two `run_plan` calls on one work directory appended s0, s0, s1, s1: the second is
    refused while the first holds the lock, with the holder's PID in the message."""
    from ase_born.dft.pipeline import PipelineLocked

    plan = _fake_plan(tmp_path, n=2)
    out, work = tmp_path / "data.xyz", tmp_path / "runs"
    started, release = threading.Event(), threading.Event()

    class Blocking(FakeAbinit):
        def __call__(self, *args, **kw):
            started.set()
            assert release.wait(30)
            return super().__call__(*args, **kw)

    first = threading.Thread(target=run_plan, args=(plan, out, work),
                             kwargs={"runner": Blocking(), "log": lambda m: None}, daemon=True)
    first.start()
    try:
        assert started.wait(30)
        second = FakeAbinit()
        with pytest.raises(PipelineLocked, match=f"PID {os.getpid()}"):
            run_plan(plan, out, work, runner=second, log=lambda m: None)
        assert second.calls == []
    finally:
        release.set()
        first.join(30)
    assert [f.info["structure_id"] for f in read_frames(out)] == ["s0", "s1"]
    fake = FakeAbinit()  # the lock went with its holder
    assert run_plan(plan, out, work, runner=fake, log=lambda m: None).get("finished", 0) == 0
    assert fake.calls == []


def test_a_structure_appended_meanwhile_is_not_appended_again(tmp_path):
    """Another pipeline (its own work directory) appends s0 while this one computes it: the
    ID is checked again under the append lock, and s0 is skipped with a message."""
    plan = _fake_plan(tmp_path, n=2)
    out = tmp_path / "data.xyz"

    class OtherRunFinishesFirst(FakeAbinit):
        def __call__(self, structure, settings, directory, **kw):
            timings = super().__call__(structure, settings, directory, **kw)
            if structure.info["structure_id"] == "s0":
                run_plan(plan, out, tmp_path / "other", runner=FakeAbinit(), only_ids=["s0"],
                         log=lambda m: None, install_signal_handlers=False)
            return timings

    messages = []
    counts = run_plan(plan, out, tmp_path / "runs", runner=OtherRunFinishesFirst(), log=messages.append)
    assert [f.info["structure_id"] for f in read_frames(out)] == ["s0", "s1"]
    assert counts["finished"] == 1
    assert any(m.startswith("s0 is already in") for m in messages)


def test_carried_directions_of_finished_structures_are_removed_at_start(tmp_path):
    """A kill between the append of a frame and the removal of its carried directions left them
    for ever: the next run removes partial/<id> of every ID already in the dataset."""
    plan = _fake_plan(tmp_path, n=2)
    out = tmp_path / "data.xyz"
    run_plan(plan, out, tmp_path / "runs", runner=FakeAbinit(), only_ids=["s0"], log=lambda m: None)
    for sid in ("s0", "s1"):
        _carry_direction_1(tmp_path / "partial" / sid)
    messages = []
    run_plan(plan, out, tmp_path / "runs2", runner=FakeAbinit(), max_structures=0, log=messages.append)
    assert not (tmp_path / "partial" / "s0").exists()
    assert (tmp_path / "partial" / "s1" / "efield1.ddb").is_file()  # unfinished: kept
    assert any(m.startswith("remove ") and "s0 is already in" in m for m in messages)


def test_restore_of_carried_files_killed_mid_copy_leaves_no_short_file(tmp_path, monkeypatch):
    """A kill while a carried DDB was copied into the run directory left a short efield1.ddb,
    kept by the next restore beside its done marker: copies go through a temporary name."""
    from ase_born.dft.pipeline import restore_carried

    carry, run = tmp_path / "partial" / "t0", tmp_path / "runs" / "t0"
    _carry_direction_1(carry)
    full = (carry / "efield1.ddb").read_bytes()
    real = shutil.copyfile

    class Killed(BaseException):
        pass

    def killed_mid_copy(src, dst, **kw):
        if Path(src).name == "efield1.ddb":
            Path(dst).write_bytes(full[: len(full) // 2])
            raise Killed
        return real(src, dst, **kw)

    monkeypatch.setattr(shutil, "copyfile", killed_mid_copy)
    with pytest.raises(Killed):
        restore_carried(carry, run)
    assert not (run / "efield1.done").exists()
    monkeypatch.setattr(shutil, "copyfile", real)
    restore_carried(carry, run)  # the next session
    assert (run / "efield1.ddb").read_bytes() == full
    assert (run / "efield1.done").is_file()


def test_other_physics_settings_than_the_dataset_are_refused_on_a_fresh_machine(tmp_path):
    """The work directory's settings record does not survive a fresh machine: the frames'
    own dft_settings are checked too (a 40 Ha run was appended beside 30 Ha frames)."""
    plan = _fake_plan(tmp_path, n=2)
    out = tmp_path / "data" / "dft.xyz"
    run_plan(plan, out, tmp_path / "runs1", runner=FakeAbinit(), max_structures=1, log=lambda m: None)
    fake = FakeAbinit()
    with pytest.raises(ValueError, match=r"other ABINIT settings.*s0.*'ecut_Ha': \(30.0, 40.0\)"):
        run_plan(plan, out, tmp_path / "runs2", settings=AbinitSettings(ecut_Ha=40.0), runner=fake,
                 log=lambda m: None)
    assert fake.calls == [] and finished_ids(out) == {"s0"}
    assert not (tmp_path / "runs2" / "settings.json").exists()  # nothing recorded for the refused run
    # tolerances may change
    run_plan(plan, out, tmp_path / "runs3", settings=AbinitSettings(tolwfr_ddk=1e-20), runner=FakeAbinit(),
             log=lambda m: None)
    assert finished_ids(out) == {"s0", "s1"}


def test_an_unexpected_error_of_one_structure_is_recorded_not_fatal(tmp_path):
    """A KeyError from a parser crashed run_plan before the failure was recorded, so the
    structure (first when carried) blocked every session."""
    plan = _fake_plan(tmp_path, n=3)
    out = tmp_path / "data.xyz"

    class ParserBug(FakeAbinit):
        def __call__(self, structure, *args, **kw):
            if structure.info["structure_id"] == "s0":
                self.calls.append("s0")
                raise KeyError("2ndder")
            return super().__call__(structure, *args, **kw)

    for attempt in range(3):
        fake, messages = ParserBug(), []
        run_plan(plan, out, tmp_path / "runs", runner=fake, max_attempts=2, log=messages.append)
        assert ("s0" in fake.calls) == (attempt < 2)
        assert attempt == 2 or any(m.startswith("FAILED s0: KeyError: '2ndder'") for m in messages)
    failures = json.loads((tmp_path / "failures.json").read_text())
    assert [f["type"] for f in failures["s0"]] == ["KeyError", "KeyError"]
    assert failures["s0"][0]["reason"].startswith("KeyError: '2ndder' (at test_dft_pipeline.py:")
    assert finished_ids(out) == {"s1", "s2"}


def test_scf_limit_is_accepted_for_every_ddk_type_step_only(tmp_path, monkeypatch):
    """The optional eps_ddk{c} steps run the ddk input: like ddk{d}, they may use up nstep."""
    script = 'printf " nstep=   80 was not enough SCF cycles to converge;\\n Calculation completed.\\n" > "${1%.abi}.abo"'
    monkeypatch.setattr(dft_abinit, "mpi_command", lambda ranks: ["bash", "-c", script, "fake-abinit"])
    for step in ("ddk1", "eps_ddk1", "eps_ddk2"):
        dft_abinit.run_step(tmp_path, step, 1, None)
    for step in ("gs", "efield1"):
        with pytest.raises(AbinitError, match="SCF not converged"):
            dft_abinit.run_step(tmp_path, step, 1, None)


def test_failed_optional_epsilon_ddk_is_skipped_not_a_failure(tmp_path, monkeypatch):
    """eps_ddk1 fails: the structure goes on without it (message, its half-written ddk files
    deleted, not tried again for direction 3) instead of failing."""
    structure = read_abinit_output(DATA / "tilt10_tiny" / "gs.abo")
    calls, linked = _fake_steps(monkeypatch)
    inner = dft_abinit.run_step

    def failing(directory, step, *args, **kw):
        if step == "eps_ddk1":
            calls.append((directory.name, step))
            (directory / "ddk1_o_1WF31").write_text("half written")
            raise AbinitError("eps_ddk1: abinit exited with code 1; out of memory")
        return inner(directory, step, *args, **kw)

    monkeypatch.setattr(dft_abinit, "run_step", failing)
    work = tmp_path / "run"
    _carry_direction_1(work)
    messages = []
    run_structure(structure, AbinitSettings(ecut_Ha=12.0), work, ranks=1, cleanup=False, log=messages.append)
    assert [s for _, s in calls] == ["gs", "eps_ddk1", "ddk2", "efield2", "ddk3", "efield3"]
    assert linked == {2: [2], 3: [2, 3]}  # the half-written ddk file of direction 1 is not read
    assert not (work / "eps_ddk1.done").exists() and not (work / "ddk1_o_1WF31").exists()
    assert any(m.startswith("skip eps_ddk1") and "out of memory" in m for m in messages)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_step_dies_with_a_killed_pipeline(tmp_path):
    """SIGKILL of the Python process running a step (start_new_session detaches it): the step's
    process gets SIGTERM instead of running on."""
    pidfile = tmp_path / "step.pid"
    code = (
        "from pathlib import Path\n"
        "from ase_born.dft import abinit\n"
        f"abinit.mpi_command = lambda ranks: ['bash', '-c', 'echo $$ > {pidfile}; exec sleep 60', 'fake-mpirun']\n"
        f"abinit.run_step(Path({str(tmp_path)!r}), 'gs', 1, None)\n"
    )
    root = str(Path(dft_abinit.__file__).resolve().parents[2])  # the ase_born this test imports
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    pipeline = subprocess.Popen([sys.executable, "-c", code], env=env)
    step = 0
    try:
        assert _wait_for(lambda: pidfile.is_file() and pidfile.read_text().strip())
        step = int(pidfile.read_text())
        assert _alive(step)
        pipeline.kill()
        pipeline.wait(10)
        assert _wait_for(lambda: not _alive(step), timeout=10), "the step outlived its killed pipeline"
    finally:
        _kill_if_alive(pipeline.pid, step)
        pipeline.wait(10)


def test_stop_kills_ranks_in_their_own_process_groups(tmp_path, monkeypatch):
    """OpenMPI puts each rank into a process group of its own inside mpirun's session, out of
    reach of killpg(mpirun): a stop kills every process of the step's session."""
    pidfile = tmp_path / "rank.pid"
    fake_mpirun = f"set -m; sleep 60 & echo $! > {pidfile}; wait"  # set -m: the "rank" gets its own group
    monkeypatch.setattr(dft_abinit, "mpi_command", lambda ranks: ["bash", "-c", fake_mpirun, "fake-mpirun"])
    stop = threading.Event()
    rank = 0

    def stop_when_running():
        if _wait_for(lambda: pidfile.is_file() and pidfile.read_text().strip()):
            stop.set()

    threading.Thread(target=stop_when_running, daemon=True).start()
    try:
        with pytest.raises(dft_abinit.StepInterrupted):
            dft_abinit.run_step(tmp_path, "gs", 1, 60.0, stop_event=stop)
        rank = int(pidfile.read_text())
        assert _wait_for(lambda: not _alive(rank), timeout=5), "a rank outlived the stopped step"
    finally:
        _kill_if_alive(rank)


def _script_env(tmp_path, tools, fakes=None):
    """A bin directory with the given real tools (symlinks) and fake commands (name -> bash body)."""
    bash = shutil.which("bash")
    missing = [t for t in tools if shutil.which(t) is None]
    if bash is None or missing:
        pytest.skip(f"missing tools {missing}")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for name, body in (fakes or {}).items():
        (bin_dir / name).write_text(f"#!{bash}\n{body}")
        (bin_dir / name).chmod(0o755)
    return bash, bin_dir


def _copy_script(tmp_path, name):
    script = Path(__file__).resolve().parents[2] / "scripts" / name
    (tmp_path / "scripts").mkdir(exist_ok=True)
    shutil.copy(script, tmp_path / "scripts")
    return tmp_path / "scripts" / name


def test_background_script_forwards_sigterm_commits_and_refuses_a_second_start(tmp_path):
    """Killing the PID in background.pid killed only bash: `ase-born dft run` ran on and the
    final commit was skipped.  Now the run gets SIGTERM, the script waits for it, commits
    and removes its PID file; a second start while one runs is refused."""
    script = _copy_script(tmp_path, "dft_background.sh")
    log, started = tmp_path / "calls.log", tmp_path / "run.started"
    fake_cli = (
        'echo "ase-born $*" >> "$LOG"\n'
        'if [ "$2" = run ]; then\n'
        '    trap \'echo "run got TERM" >> "$LOG"; exit 0\' TERM\n'
        '    : > "$STARTED"\n'
        "    for ((i = 0; i < 600; i++)); do sleep 0.1; done  # at most a minute\n"
        "fi\n"
    )
    fake_git = 'echo "git $*" >> "$LOG"\n[ "$1" = diff ] && exit 1\nexit 0\n'  # diff: staged changes
    bash, bin_dir = _script_env(tmp_path, ["dirname", "mkdir", "sleep", "rm", "grep", "find", "wc", "flock"],
                                {"ase-born": fake_cli, "git": fake_git})
    env = {"PATH": str(bin_dir), "LOG": str(log), "STARTED": str(started), "DFT_COMMIT": "1"}
    pidfile = tmp_path / "dft_runs" / "background.pid"
    pidfile.parent.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidfile.write_text(f"{dead.pid}\n")  # left by a killed earlier start: no obstacle
    first = subprocess.Popen([bash, str(script)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        assert _wait_for(started.is_file), "the fake `ase-born dft run` did not start"
        assert pidfile.read_text().strip() == str(first.pid)
        second = subprocess.run([bash, str(script)], env=env, capture_output=True, text=True, timeout=30,
                                check=False)
        assert second.returncode == 1
        assert f"already running (PID {first.pid}" in second.stdout
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=30)
    finally:
        _kill_if_alive(first.pid)
    calls = log.read_text().splitlines()
    assert [c for c in calls if c.startswith("ase-born")] == [
        "ase-born dft converge --ranks 2", "ase-born dft run --ranks 2 --hours 2.6 --step-level auto --grace-minutes 0"]
    assert "run got TERM" in calls
    assert any(c.startswith("git commit") for c in calls[calls.index("run got TERM"):])
    assert first.returncode == 0, out
    assert not pidfile.exists()


def test_background_script_commits_only_under_the_output_lock(tmp_path):
    """The auto-commit read data/dft while append_frame might be writing a frame: it now
    takes the same lock (flock on data/dft) and waits while the pipeline holds it."""
    import fcntl

    script = _copy_script(tmp_path, "dft_background.sh")
    log = tmp_path / "calls.log"
    fake_git = 'echo "git $* $(date +%s.%N)" >> "$LOG"\n[ "$1" = diff ] && exit 1\nexit 0\n'
    bash, bin_dir = _script_env(tmp_path, ["dirname", "mkdir", "sleep", "rm", "grep", "find", "wc", "flock", "date"],
                                {"ase-born": 'echo "ase-born $*" >> "$LOG"\n', "git": fake_git})
    (tmp_path / "data" / "dft").mkdir(parents=True)
    fd = os.open(tmp_path / "data" / "dft", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as _output_lock during an append
        run = subprocess.Popen([bash, str(script)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={"PATH": str(bin_dir), "LOG": str(log), "DFT_COMMIT": "1"})
        assert _wait_for(lambda: log.is_file() and "ase-born dft run" in log.read_text()), "no `dft run`"
        time.sleep(2.5)  # the script polls its child each second: then it is at the commit
        released = time.time()
    finally:
        os.close(fd)
    out, _ = run.communicate(timeout=30)
    adds = [float(c.split()[-1]) for c in log.read_text().splitlines() if c.startswith("git add")]
    assert adds and min(adds) >= released - 0.05, out
    assert any(c.startswith("git commit") for c in log.read_text().splitlines())


def test_documented_start_command_works_on_a_fresh_checkout(tmp_path):
    """The README's start command redirected into dft_runs/ before the script created it."""
    readme = Path(__file__).resolve().parents[2] / "data" / "dft" / "README.md"
    (line,) = [ln for ln in readme.read_text().splitlines()
               if "bash scripts/dft_background.sh" in ln and not ln.lstrip().startswith("#")]
    _copy_script(tmp_path, "dft_background.sh")
    bash, bin_dir = _script_env(tmp_path, ["dirname", "mkdir", "setsid", "nohup", "bash"])  # no ase-born
    subprocess.run([bash, "-c", line + "\nwait"], cwd=tmp_path, env={"PATH": str(bin_dir)},
                   capture_output=True, timeout=30, check=False)
    log = tmp_path / "dft_runs" / "background.log"
    assert _wait_for(lambda: log.is_file() and "ase-born not found" in log.read_text(), timeout=10)


def test_pause_script_signals_only_pipeline_steps_and_fails_when_none_runs(tmp_path):
    """dft_pause.sh exited 0 and printed "sent ..." when nothing matched; it signals the
    sessions of the pipeline's ABINIT steps (here a fake pipeline given by DFT_PIPELINE_PIDS,
    so that no real ABINIT run on this machine is touched)."""
    script = _copy_script(tmp_path, "dft_pause.sh")
    if "DFT_PIPELINE_PIDS" not in script.read_text():
        pytest.fail("dft_pause.sh has no DFT_PIPELINE_PIDS override: not run, it would signal real runs")
    if None in (shutil.which("pgrep"), shutil.which("pkill"), shutil.which("ps")):
        pytest.skip("no procps")
    code = ("import subprocess\n"
            "p = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
            "print(p.pid, flush=True)\n"
            "p.wait()\n")
    pipeline = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    step = 0

    def pause(action, pids):
        env = {**os.environ, "DFT_PIPELINE_PIDS": pids}
        return subprocess.run(["bash", str(script), action], env=env, capture_output=True, text=True,
                              timeout=30, check=False)

    try:
        step = int(pipeline.stdout.readline())
        res = pause("stop", str(pipeline.pid))
        assert res.returncode == 0 and f"session(s) {step}" in res.stdout, res.stderr
        assert _wait_for(lambda: _state(step) == "T", timeout=5)
        assert _state(pipeline.pid) != "T"  # the pipeline itself keeps running
        res = pause("cont", str(pipeline.pid))
        assert res.returncode == 0
        assert _wait_for(lambda: _state(step) != "T", timeout=5)
        for pids in (str(step), ""):  # no pipeline step found: no signal, exit status 1
            res = pause("stop", pids)
            assert res.returncode == 1 and "no running ABINIT step" in res.stderr and not res.stdout
        assert _state(step) != "T"
        assert pause("halt", "").returncode == 2
    finally:
        _kill_if_alive(step, pipeline.pid)
        pipeline.wait(10)


# ---------------------------------------------------------------------------
# setup problems are not the structures' failures; costs, ETA
# ---------------------------------------------------------------------------
def test_missing_abinit_or_pseudopotential_fails_before_any_structure(tmp_path, monkeypatch):
    """No ABINIT, mpirun or pseudopotential: the call fails at once and records nothing (it
    used to fail every structure in turn and skip the plan after max_attempts calls)."""
    plan = _fake_plan(tmp_path, n=2)
    out = tmp_path / "data" / "dft.xyz"
    monkeypatch.setattr(dft_abinit.shutil, "which", lambda name: None)
    with pytest.raises(AbinitError, match="abinit executable not found"):
        run_plan(plan, out, tmp_path / "runs", log=lambda m: None)
    monkeypatch.setattr(dft_abinit.shutil, "which", lambda name: f"/usr/bin/{name}")
    settings = AbinitSettings(psp_dir=str(tmp_path / "no_psp"))
    with pytest.raises(FileNotFoundError, match="pseudopotential for"):
        run_plan(plan, out, tmp_path / "runs", settings=settings, log=lambda m: None)
    assert not (out.parent / "failures.json").exists() and not out.exists()


def test_fast_identical_failures_stop_the_call_uncounted(tmp_path, monkeypatch):
    """Three structures failing in a row within seconds for the same reason are a setup
    problem: the call stops, the failures are kept flagged but not counted, and a later
    call runs them all."""
    from ase_born.dft import pipeline

    plan = _fake_plan(tmp_path, n=4)
    out = tmp_path / "data" / "dft.xyz"
    fake = FakeAbinit(fail_ids={"s0", "s1", "s2", "s3"})
    messages = []
    with pytest.raises(pipeline.SystematicFailure, match="3 structures in a row"):
        run_plan(plan, out, tmp_path / "runs", runner=fake, log=messages.append)
    assert fake.calls == ["s0", "s1", "s2"]
    failures = out.parent / "failures.json"
    recorded = json.loads(failures.read_text())
    assert sorted(recorded) == ["s0", "s1", "s2"]
    assert all(a["setup_suspect"] for v in recorded.values() for a in v)
    assert all(pipeline.counted_attempts(v) == 0 for v in recorded.values())
    assert sum(k.get("failed", 0) for k in status(plan, out, tmp_path / "runs")["kinds"].values()) == 0
    assert any(m.startswith("stopping: 3 structures in a row") for m in messages)
    fake = FakeAbinit()
    assert run_plan(plan, out, tmp_path / "runs", runner=fake, log=lambda m: None)["finished"] == 4
    # slow failures (ABINIT ran, then failed) are each structure's own: recorded, no stop
    monkeypatch.setattr(pipeline, "FAST_FAILURE_S", 0.0)
    out2 = tmp_path / "data2" / "dft.xyz"
    counts = run_plan(plan, out2, tmp_path / "runs2", runner=FakeAbinit(fail_ids={"s0", "s1", "s2", "s3"}),
                      log=lambda m: None)
    assert counts["failed"] == 4
    assert len(json.loads((out2.parent / "failures.json").read_text())) == 4


def test_structures_that_always_fail_fast_do_not_block_the_plan(tmp_path):
    """The same three structures failing fast again in a later call are their own failures
    (an SCF that never converges, not a setup problem): counted, and the call goes on; they
    are skipped after max_attempts (every call used to stop at them, the plan never moved)."""
    from ase_born.dft import pipeline

    plan = _fake_plan(tmp_path, n=5)
    out = tmp_path / "data" / "dft.xyz"
    bad = {"s0", "s1", "s2"}
    fake = FakeAbinit(fail_ids=bad)
    with pytest.raises(pipeline.SystematicFailure):
        run_plan(plan, out, tmp_path / "runs", runner=fake, log=lambda m: None)
    assert fake.calls == ["s0", "s1", "s2"]
    messages = []
    fake = FakeAbinit(fail_ids=bad)
    counts = run_plan(plan, out, tmp_path / "runs", runner=fake, log=messages.append)
    assert fake.calls == ["s0", "s1", "s2", "s3", "s4"] and counts["finished"] == 2
    assert any("as in an earlier call: their own failures" in m for m in messages)
    recorded = json.loads((out.parent / "failures.json").read_text())
    assert all(pipeline.counted_attempts(recorded[s]) == 1 for s in bad)
    fake = FakeAbinit(fail_ids=bad)  # third call: counted again, now max_attempts (2) reached
    run_plan(plan, out, tmp_path / "runs", runner=fake, log=lambda m: None)
    assert fake.calls == ["s0", "s1", "s2"]
    fake = FakeAbinit(fail_ids=bad)
    counts = run_plan(plan, out, tmp_path / "runs", runner=fake, log=lambda m: None)
    assert fake.calls == [] and counts["skipped"] == 3
    assert sum(k.get("failed", 0) for k in status(plan, out, tmp_path / "runs")["kinds"].values()) == 3


def _measured_plan(tmp_path, n=3):
    """Plan of ``n`` cubic5 structures and a dataset holding ``s0`` measured at 1000 s."""
    base = read_abinit_output(DATA / "gs.abo")
    settings = AbinitSettings()
    frames = []
    for i in range(n):
        a = base.copy()
        a.info.update(structure_id=f"s{i}", kind="cubic5", split="train")
        frames.append(a)
    write_frames(tmp_path / "plan.xyz", frames)
    measured = frames[0].copy()
    measured.info.update(wall_s=1000.0, mpi_ranks=2, kpts=np.array(settings.kmesh(base)))
    out = tmp_path / "data.xyz"
    write_frames(out, measured)
    return tmp_path / "plan.xyz", out, settings


def test_structure_with_every_direction_carried_needs_no_time(tmp_path):
    """Killed between saving its last field direction and the append: only parsing is left,
    so it is not deferred however close the deadline (it used to need a GS + direction)."""
    plan, out, settings = _measured_plan(tmp_path, n=2)
    carry = tmp_path / "partial" / "s1"
    carry.mkdir(parents=True)
    for d in (1, 2, 3):
        (carry / f"efield{d}.ddb").write_text("x\n")
        (carry / f"efield{d}.done").write_text("300\n")
    fake = FakeAbinit()
    messages = []
    run_plan(plan, out, tmp_path / "runs", settings=settings, runner=fake, log=messages.append,
             deadline=10.0, clock=lambda: 0.0)
    assert fake.calls == ["s1"] and "s1" in finished_ids(out)
    (done,) = [m for m in messages if "finished s1" in m]
    assert "ETA for the 0 structures left 0m00s; this call stops in 0m10s" in done


def test_cost_model_within_a_call_uses_the_idle_machine_cost(tmp_path):
    """A structure finished in this call updates the cost model as a frame read at the start
    of the next call does (wall time scaled to an idle machine by its CPU time)."""
    plan, out, settings = _measured_plan(tmp_path, n=3)
    shutil.copy(out, tmp_path / "seed.xyz")

    class TimedFake(FakeAbinit):  # every step's .abo with its CPU time (gs.abo's for the ddk)
        def __call__(self, structure, settings, directory, *args, **kw):
            timings = super().__call__(structure, settings, directory, *args, **kw)
            shutil.copy(DATA / "gs.abo", directory / "ddk.abo")
            return timings

    first = []
    run_plan(plan, out, tmp_path / "runs", settings=settings, runner=TimedFake(), log=first.append,
             only_ids=["s1", "s2"], jobs=1)
    (s1,) = [f for f in read_frames(out) if f.info["structure_id"] == "s1"]
    assert s1.info["cpu_s"] < s1.info["wall_s"] * s1.info["mpi_ranks"]  # loaded: the case that differs
    # a fresh call whose dataset holds s0 and s1 estimates s2 the same
    write_frames(tmp_path / "fresh.xyz", [*read_frames(tmp_path / "seed.xyz"), s1])
    second = []
    run_plan(plan, tmp_path / "fresh.xyz", tmp_path / "runs_fresh", settings=settings, runner=FakeAbinit(),
             log=second.append, only_ids=["s2"])
    (a,) = [m for m in first if m.startswith("start s2")]
    (b,) = [m for m in second if m.startswith("start s2")]
    assert a.split("estimated ")[1] == b.split("estimated ")[1]


def test_max_atoms_leaves_larger_structures_and_their_carried_directions(tmp_path):
    """--max-atoms: the 10-atom s1 (carried over, so it would come first) is neither started nor
    counted, its carried direction stays for a later call, and the log names it."""
    plan = _fake_plan(tmp_path, n=3)
    frames = read_frames(plan)
    frames[1] = frames[1].repeat((2, 1, 1))
    write_frames(plan, frames)
    out = tmp_path / "data.xyz"
    _carry_direction_1(tmp_path / "partial" / "s1")
    runner, messages = FakeAbinit(), []
    counts = run_plan(plan, out, tmp_path / "runs", runner=runner, max_atoms=5, log=messages.append)
    assert runner.calls == ["s0", "s2"]
    assert [f.info["structure_id"] for f in read_frames(out)] == ["s0", "s2"]
    assert counts["finished"] == 2 and counts["pending"] == 0 and counts["too_large"] == 1  # not "all done"
    assert (tmp_path / "partial" / "s1" / "efield1.ddb").is_file()
    assert "left for a later call (more than 5 atoms): 1 structure(s), s1" in messages
    assert any(m.startswith("plan ") and "3 structures, 0 done" in m for m in messages)


def test_failed_ground_state_is_not_taken_for_a_carried_one(tmp_path, monkeypatch):
    """A ground state that fails after writing its WFK (SCF not converged) leaves no marker;
    the next call must run it again, not pair the carried gs.done with those wavefunctions
    (the field directions would run on them and the frame take the failed output)."""
    tiny = DATA / "tilt10_tiny"
    structure = read_abinit_output(tiny / "gs.abo")
    structure.info.update(structure_id="t0", kind="tilt10", split="train")
    write_frames(tmp_path / "plan.xyz", structure)
    out = tmp_path / "data" / "dft.xyz"
    carry = out.parent / "partial" / "t0"
    _carry_direction_1(carry)
    (carry / "settings.json").write_text(json.dumps(AbinitSettings(ecut_Ha=12.0).to_dict()))
    calls, _ = _fake_steps(monkeypatch)
    good = dft_abinit.run_step
    failed = []

    def failing_gs(directory, step, *args, **kw):
        if step == "gs" and not failed:
            failed.append(step)
            (directory / "gs_o_WFK").write_text("unconverged")
            shutil.copy(tiny / "gs.abo", directory / "gs.abo")
            raise AbinitError("gs: SCF not converged")
        return good(directory, step, *args, **kw)

    monkeypatch.setattr(dft_abinit, "run_step", failing_gs)
    kw = {"settings": AbinitSettings(ecut_Ha=12.0), "log": lambda m: None}
    assert run_plan(tmp_path / "plan.xyz", out, tmp_path / "runs", **kw)["failed"] == 1
    assert not (tmp_path / "runs" / "t0" / "gs.done").exists()
    calls.clear()
    assert run_plan(tmp_path / "plan.xyz", out, tmp_path / "runs", **kw)["finished"] == 1
    assert [s for _, s in calls] == ["gs", "eps_ddk1", "ddk2", "efield2", "ddk3", "efield3"]


def test_a_step_starts_without_the_outputs_of_its_failed_try(tmp_path, monkeypatch):
    """A field step killed after writing part of its DDB: the retry removes the step's old
    outputs first, and efield{d}.ddb is the retry's DDB, copied before the marker."""
    tiny = DATA / "tilt10_tiny"
    structure = read_abinit_output(tiny / "gs.abo")
    calls, _ = _fake_steps(monkeypatch)
    good = dft_abinit.run_step
    seen = []

    def killed_efield2(directory, step, *args, **kw):
        if step == "efield2":
            seen.append(sorted(p.name for p in directory.glob("ef2_o_*")))
        if step == "efield2" and "efield2" not in [s for _, s in calls]:
            calls.append((directory.name, "efield2"))
            (directory / "ef2_o_DDB").write_text("half")
            raise AbinitError("efield2: killed")
        return good(directory, step, *args, **kw)

    monkeypatch.setattr(dft_abinit, "run_step", killed_efield2)
    work = tmp_path / "w"
    with pytest.raises(AbinitError, match="killed"):
        run_structure(structure, AbinitSettings(ecut_Ha=12.0), work, ranks=1, cleanup=False)
    assert (work / "ef2_o_DDB").read_text() == "half" and not (work / "efield2.ddb").exists()
    seen.clear()
    run_structure(structure, AbinitSettings(ecut_Ha=12.0), work, ranks=1, cleanup=False)
    assert seen == [[]]  # the retry started without the killed try's ef2_o_DDB
    assert (work / "efield2.ddb").read_bytes() == (tiny / "efield2.ddb").read_bytes()


def test_datasets_sharing_a_folder_keep_their_carried_data_and_failures_apart(tmp_path, monkeypatch):
    """A reference dataset with other physics settings beside the production one (as
    data/dft holds): its run neither uses, extends nor removes production's carried
    directions, and its failures do not count against production's structures."""
    tiny = DATA / "tilt10_tiny"
    structure = read_abinit_output(tiny / "gs.abo")
    structure.info.update(structure_id="t0", kind="tilt10", split="train")
    write_frames(tmp_path / "plan.xyz", structure)
    prod, ref = tmp_path / "data" / "prod.xyz", tmp_path / "data" / "ref40.xyz"
    a, b = AbinitSettings(ecut_Ha=12.0), AbinitSettings(ecut_Ha=40.0)
    carry = tmp_path / "data" / "partial" / "t0"
    _carry_direction_1(carry)
    (carry / "settings.json").write_text(json.dumps(a.to_dict()))
    before = {p.name: p.read_bytes() for p in carry.iterdir()}
    calls, _ = _fake_steps(monkeypatch)
    good = dft_abinit.run_step
    fail = [True]

    def step(directory, name, *args, **kw):
        if fail[0]:
            raise AbinitError("gs: SCF not converged")
        return good(directory, name, *args, **kw)

    monkeypatch.setattr(dft_abinit, "run_step", step)
    messages = []
    for _ in range(2):  # the reference fails t0 as often as max_attempts allows
        run_plan(tmp_path / "plan.xyz", ref, tmp_path / "runs_ref", settings=b, log=messages.append)
    assert any("another dataset's, left alone" in m for m in messages)
    messages.clear()
    run_plan(tmp_path / "plan.xyz", ref, tmp_path / "runs_ref", settings=b, log=messages.append)
    assert any("1 skipped after failures, 0 to run" in m for m in messages)
    fail[0] = False
    counts = run_plan(tmp_path / "plan.xyz", ref, tmp_path / "runs_ref", settings=b, max_attempts=3,
                      log=messages.append)
    assert counts["finished"] == 1 and [s for _, s in calls] == ["gs", "ddk1", "efield1", "ddk2", "efield2", "ddk3", "efield3"]
    assert {p.name: p.read_bytes() for p in carry.iterdir()} == before  # not used, extended or removed
    # production: its carried direction 1 is used; the reference's two failures are not its own
    calls.clear()
    counts = run_plan(tmp_path / "plan.xyz", prod, tmp_path / "runs_prod", settings=a, log=messages.append)
    assert counts["finished"] == 1
    assert [s for _, s in calls] == ["gs", "eps_ddk1", "ddk2", "efield2", "ddk3", "efield3"]
    assert not carry.exists()
    recorded = json.loads((tmp_path / "data" / "failures.json").read_text())["t0"]
    assert [f["output"] for f in recorded] == ["ref40.xyz", "ref40.xyz"]  # kept beside production's runs


def _speed_case(tmp_path, *todo):
    """A plan of the finished ``old_c`` (cubic5, 1000 s) and ``old_t`` (tilt10, 4000 s; the same
    cell: the model's rates) and the ``(id, kind)`` pairs ``todo``; returns the dataset path, the
    fake clock and a runner class whose structures take half the model's time on the clock
    (``tilt10_s`` for tilt10) and write outputs without ABINIT's run times (a frame's wall time
    is its idle-machine cost)."""
    base = read_abinit_output(DATA / "gs.abo")
    frames = []
    for sid, kind in (("old_c", "cubic5"), ("old_t", "tilt10"), *todo):
        a = base.copy()
        a.info.update(structure_id=sid, kind=kind, split="train")
        frames.append(a)
    write_frames(tmp_path / "plan.xyz", frames)
    out = tmp_path / "data.xyz"
    done = [f.copy() for f in frames[:2]]
    for f, wall in zip(done, (1000.0, 4000.0)):
        f.info["wall_s"] = wall
    write_frames(out, done)
    now = [0.0]

    class Runner(FakeAbinit):
        def __init__(self, tilt10_s=2000.0):
            super().__init__()
            self.tilt10_s = tilt10_s

        def __call__(self, structure, settings, directory, *args, **kw):
            super().__call__(structure, settings, directory, *args, **kw)
            for name in ("gs.abo", "efield.abo"):
                text = (directory / name).read_text().splitlines(keepends=True)
                (directory / name).write_text("".join(t for t in text if "time (sec)" not in t
                                                      and "Overall time" not in t))
            seconds = 500.0 if structure.info["kind"] == "cubic5" else self.tilt10_s
            now[0] += seconds
            return {"gs": 0.2 * seconds, "ddk": 0.2 * seconds, "efield": 0.6 * seconds}

    return out, now, Runner


@pytest.mark.parametrize("machine_speed", [False, True])
def test_machine_speed_scales_the_model_after_a_cheap_first_structure(tmp_path, machine_speed):
    """With ``machine_speed`` the first structure started is the cheapest that fits, and the
    frames finished in the call scale the cost model to this machine: a long structure that
    the dataset's rates (slower machines) defer is started on a machine twice as fast."""
    out, now, Runner = _speed_case(tmp_path, ("big", "tilt10"), ("small", "cubic5"))
    runner, messages = Runner(tilt10_s=500.0), []  # each structure 500 s: half the model's cubic5
    # big: GS + direction 1 = 0.5 x 4000 s x 1.2 = 2400 s > 2000 s; at speed 0.5: 1200 s < 1500 s
    counts = run_plan(tmp_path / "plan.xyz", out, tmp_path / "runs", runner=runner, log=messages.append,
                      deadline=2000.0, grace_s=GRACE, clock=lambda: now[0], machine_speed=machine_speed)
    text = "\n".join(messages)
    if machine_speed:
        assert runner.calls == ["small", "big"] and counts["finished"] == 2
        assert "machine speed unknown: small first, the cheapest structure (estimated 18m20s)" in text
        assert "machine speed: small took 8m20s at idle-machine cost, the model expected 16m40s; " \
               "estimates now x0.50 (1 frame of this machine)" in text
        # all steps of big: 1.1 x 4000 s (GS 0.2 + 3 x 0.3 of a structure), x 0.5
        assert "start big (tilt10, 5 atoms, estimated 36m40s)" in text
    else:
        assert runner.calls == ["small"] and counts["deferred"] == 1
        assert "defer big: its next field direction (and ground state, unless kept) needs ~40m00s" in text
        assert "machine speed" not in text


def test_machine_speed_carries_over_to_a_later_call_on_the_same_work_directory(tmp_path):
    """The frames that measured the machine are recorded in calls.json: the next call on the
    work directory starts with their speed (no calibration structure first, a long structure
    admitted at once) and estimates from the frames made elsewhere only."""
    out, now, Runner = _speed_case(tmp_path, ("small", "cubic5"), ("big", "tilt10"), ("small2", "cubic5"))
    work = tmp_path / "runs"
    # call 1, 700 s: small measures the machine (500 s vs 1000 s: x0.5); big then needs
    # 0.5 x 4000 s x 0.5 x 1.2 = 1200 s > 200 s left, and small2 (300 s) too
    runner, messages = Runner(), []
    run_plan(tmp_path / "plan.xyz", out, work, runner=runner, log=messages.append,
             deadline=700.0, grace_s=GRACE, clock=lambda: now[0], machine_speed=True)
    assert runner.calls == ["small"]
    calls = json.loads((work / CALLS_FILE).read_text())
    assert len(calls) == 1 and calls[0]["frames"] == ["small"]
    assert machine_frames(work) == ["small"]
    # call 2, 2600 s: the speed is known at once; big (needs 1200 s) starts first, in plan order
    runner, messages = Runner(), []
    run_plan(tmp_path / "plan.xyz", out, work, runner=runner, log=messages.append,
             deadline=now[0] + 2600.0, grace_s=GRACE, clock=lambda: now[0], machine_speed=True)
    text = "\n".join(messages)
    assert runner.calls == ["big", "small2"]
    assert "machine speed from 1 frame made here in earlier calls (small): estimates x0.50" in text
    assert "machine speed unknown" not in text
    # then small2 (needs 300 s, 600 s left) is estimated from old_c alone (1.1 x 1000 s x 0.5),
    # not from the median with small (750 s), which would count the machine's speed twice
    assert "start small2 (cubic5, 5 atoms, estimated 9m10s)" in text
    assert "ETA for the 1 structures left 8m20s at this machine's speed (x0.50)" in text  # 1000 s x 0.5
    assert "estimates now x0.50 (2 frames of this machine)" in text
    assert machine_frames(work) == ["small", "big", "small2"]
    st = status(tmp_path / "plan.xyz", out, work)
    assert st["machine_speed"] == {"factor": pytest.approx(0.5), "frames": ["big", "small", "small2"]}
    buf = io.StringIO()
    print_status(st, file=buf)
    assert "machine speed: x0.50 of the other machines' times, from the 3 frame(s) made here" in buf.getvalue()
    # without the record (a fresh machine's work directory) the call calibrates again
    shutil.rmtree(work)
    assert machine_frames(work) == [] and status(tmp_path / "plan.xyz", out, work)["machine_speed"] is None


def test_machine_speed_without_frames_made_elsewhere_uses_the_model_unscaled(tmp_path):
    """When every frame was made on this machine (a dataset begun here) no speed can be measured:
    the estimates are the model of all frames, unscaled, and the call calibrates as before."""
    base = read_abinit_output(DATA / "gs.abo")
    plan = []
    for sid in ("a", "b"):
        x = base.copy()
        x.info.update(structure_id=sid, kind="cubic5", split="train")
        plan.append(x)
    write_frames(tmp_path / "plan.xyz", plan)
    out, work = tmp_path / "data.xyz", tmp_path / "runs"
    done = plan[0].copy()
    done.info["wall_s"] = 1000.0
    write_frames(out, done)
    work.mkdir()
    (work / CALLS_FILE).write_text(json.dumps([{"start": 1.0, "end": 2.0, "frames": ["a"]}]))
    fake, messages = FakeAbinit(), []
    run_plan(tmp_path / "plan.xyz", out, work, runner=fake, log=messages.append, deadline=5000.0,
             clock=lambda: 0.0, machine_speed=True)
    text = "\n".join(messages)
    assert fake.calls == ["b"] and "start b (cubic5, 5 atoms, estimated 18m20s)" in text  # 1.1 x 1000 s
    assert "machine speed from" not in text and "machine speed:" not in text
    assert machine_frames(work) == ["a"]  # b measured nothing
