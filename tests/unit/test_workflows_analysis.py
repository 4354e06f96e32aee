"""Phase analysis: tilt order parameters, Glazer/space-group labels, averaging, transitions."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from ase_born.dft.sampler import cubic_catio3, pnma_catio3
from ase_born.testing import random_rotation, rotate_atoms
from ase_born.workflows.analysis import (
    TiltAnalyzer,
    classify_tilts,
    estimate_transitions,
    identify_phase,
    order_parameter_vanishing,
    perovskite_sites,
    pseudocubic_lattice,
    space_group,
    time_averaged_structure,
)
from ase_born.workflows.structures import glazer_perovskite, parse_supercell

# (structure builder, expected tilt-based phase, expected spglib number)
SYNTHETIC = {
    "Pnma (experimental 20-atom cell)": (pnma_catio3, "Pnma", 62),
    "Pnma (a-b+a-, 40-atom)": (lambda: glazer_perovskite((8.0, 6.0, 8.0), "-+-"), "Pnma", 62),
    "I4/mcm (a0a0c-)": (lambda: glazer_perovskite((0.0, 0.0, 7.0), "00-"), "I4/mcm", 140),
    "Pm-3m": (lambda: glazer_perovskite((0.0, 0.0, 0.0), "000"), "Pm-3m", 221),
}


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_synthetic_structures_are_labelled(name):
    build, phase, number = SYNTHETIC[name]
    atoms = build()
    res = identify_phase(atoms, TiltAnalyzer(atoms))
    assert res["phase"] == phase
    assert res["spglib_number"] == number
    assert res["agree"]


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_thermal_average_recovers_the_phase(name):
    """Noisy MD-like frames (σ = 0.1 Å, random rigid shifts): the time average has the symmetry."""
    build, phase, number = SYNTHETIC[name]
    ref = build()
    rng = np.random.default_rng(1)
    frames = []
    for _ in range(200):
        f = ref.copy()
        f.positions += rng.normal(scale=0.1, size=f.positions.shape) + rng.normal(scale=1.0, size=3)
        f.set_cell(
            ref.cell.array @ (np.eye(3) + np.diag(rng.normal(scale=0.003, size=3))),
            scale_atoms=True,
        )
        f.wrap()
        frames.append(f)
    ana = TiltAnalyzer(ref)
    # a single noisy frame still carries which axes are tilted and how (magnitudes are noisy)
    clean = classify_tilts(**{k.lower(): v for k, v in ana.order_parameters(ref).items()})
    single = classify_tilts(**{k.lower(): v for k, v in ana.order_parameters(frames[0]).items()})
    assert single["tilt_axes"] == clean["tilt_axes"]
    avg = time_averaged_structure(frames, ref)
    res = identify_phase(avg, ana)  # spglib at the default symprec = 0.1 Å
    assert res["phase"] == phase
    assert res["spglib_number"] == number
    # the rigid shifts are removed, not averaged into the sites: frames that are only
    # shifted copies of the reference average back onto it
    shifted = []
    for _ in range(5):
        f = ref.copy()
        f.positions += rng.normal(scale=1.0, size=3)
        f.wrap()
        shifted.append(f)
    back = time_averaged_structure(shifted, ref)
    ds = back.get_scaled_positions(wrap=False) - ref.get_scaled_positions(wrap=False)
    np.testing.assert_allclose(ds, 0.0, atol=1e-10)


def test_pnma_tilt_pattern_and_pseudocubic_lattice():
    pn = pnma_catio3()
    ana = TiltAnalyzer(pn)
    op = ana.order_parameters(pn)
    # in-phase tilt about the pseudo-cubic axis along b (y); out-of-phase about the two in the a-c plane
    assert abs(ana.axes[1] @ [0, 1, 0]) == pytest.approx(1.0, abs=1e-3)
    assert np.isfinite(op["M"][1]) and abs(op["M"][1]) > 5
    assert np.isnan(op["M"][0]) and np.isnan(op["M"][2])  # incommensurate with the 20-atom cell
    assert abs(op["R"][0]) > 5 and abs(op["R"][2]) > 5 and abs(op["R"][1]) < 1e-6
    a, b, c = pn.cell.lengths()
    np.testing.assert_allclose(
        pseudocubic_lattice(pn.cell.array, ana.cell_in_pseudocubic),
        [a / np.sqrt(2), b / 2, c / np.sqrt(2)],
        rtol=1e-10,
    )
    sc = pn.repeat((2, 1, 2))
    ana2 = TiltAnalyzer(sc)
    np.testing.assert_allclose(
        pseudocubic_lattice(sc.cell.array, ana2.cell_in_pseudocubic),
        [a / np.sqrt(2), b / 2, c / np.sqrt(2)],
        rtol=1e-10,
    )
    np.testing.assert_allclose(ana2.order_parameters(sc)["R"], op["R"], atol=1e-8)
    # an asymmetric repeat (the CPU default of the heating run is (2, 1, 2); here (1, 1, 2)):
    # each supercell vector divided by its own pseudo-cubic length
    sc = pn.repeat((1, 1, 2))
    np.testing.assert_allclose(
        pseudocubic_lattice(sc.cell.array, TiltAnalyzer(sc).cell_in_pseudocubic),
        [a / np.sqrt(2), b / 2, c / np.sqrt(2)],
        rtol=1e-10,
    )


def test_labels_do_not_depend_on_orientation():
    pn = pnma_catio3().repeat((1, 1, 2))
    rot = rotate_atoms(pn, random_rotation(5))
    assert identify_phase(rot)["phase"] == "Pnma"


def test_tilt_amplitude_is_the_rotation_angle():
    """The builder's rigid rotation by θ gives |R| ≈ θ (first order)."""
    for theta in (3.0, 6.0, 10.0):
        a = glazer_perovskite((0.0, 0.0, theta), "00-")
        r = TiltAnalyzer(a).order_parameters(a)["R"]
        assert abs(r[2]) == pytest.approx(np.degrees(np.arctan(np.radians(theta))), rel=0.02)


@pytest.mark.parametrize(
    ("m", "r", "phase", "glazer"),
    [
        ((0, 0, 0), (0, 0, 0), "Pm-3m", "a0a0a0"),
        ((0, 0, 0), (0, 0, 6), "I4/mcm", "a0a0c-"),
        ((0, 0, 6), (0, 0, 0), "P4/mbm", "a0a0c+"),
        ((0, 5, 0), (8, 0, 8), "Pnma", "a-b+a-"),
        ((0, 0, 0), (6, 6, 6), "R-3c", "a-a-a-"),
        ((0, 0, 0), (0, 6, 6), "Imma", "a0b-b-"),
        ((0, 1.5, 0), (0.5, 0, 0.5), "Pm-3m", "a0a0a0"),  # below the 2° threshold
        # two equal tilts of one kind, the third different: the same system whichever is larger
        ((0, 0, 0), (10, 5, 5), "C2/c", "a-b-b-"),
        ((0, 0, 0), (5, 10, 10), "C2/c", "a-b-b-"),
        ((0, 0, 0), (10, 10, 5), "C2/c", "a-a-c-"),
        ((10, 5, 5), (0, 0, 0), "Immm", "a+b+b+"),
        ((10, 10, 5), (0, 0, 0), "Immm", "a+a+c+"),
        ((6, 6, 6), (0, 0, 0), "Im-3", "a+a+a+"),
        ((0, 5, 9), (0, 0, 0), "Immm", "a0b+c+"),
        ((0, 6, 6), (0, 0, 0), "I4/mmm", "a0b+b+"),
        ((0, 6, 0), (0, 0, 9), "Cmcm", "a0b+c-"),
        ((0, 0, 0), (0, 5, 9), "C2/m", "a0b-c-"),
        ((6, 6, 0), (0, 0, 9), "P42/nmc", "a+a+c-"),
        ((4, 7, 0), (0, 0, 9), "Pmmn", "a+b+c-"),
        ((8, 0, 0), (0, 5, 9), "P21/m", "a+b-c-"),
        ((0, 0, 0), (4, 7, 10), "P-1", "a-b-c-"),
        # 6 ≈ 7.5 and 7.5 ≈ 9.4 (within 25 %), but 6 and 9.4 are not: no chained "a-a-a-";
        # larger tilts group first (9.4 with 7.5), 6 is the odd axis
        ((0, 0, 0), (6, 7.5, 9.4), "C2/c", "a-b-b-"),
        ((0, 0, 0), (9.4, 7.5, 6), "C2/c", "a-a-c-"),
    ],
)
def test_classify_tilts(m, r, phase, glazer):
    res = classify_tilts(m, r, threshold_deg=2.0)
    assert res["phase"] == phase
    assert res["glazer"] == glazer


@pytest.mark.parametrize(("m", "r"), [((0, 0, 0), (6, 7.5, 9.4)), ((0, 5, 0), (8, 0, 8.5)),
                                      ((4, 7, 0), (0, 0, 9)), ((0, 0, 0), (10, 5, 5.5))])
def test_classify_tilts_does_not_depend_on_axis_order(m, r):
    """Relabelling the axes permutes the per-axis letters' groups and leaves the pattern and
    phase alone; the per-axis string groups the axes the way the pattern does."""
    import itertools

    ref = classify_tilts(m, r, threshold_deg=2.0)

    def partition(glazer, perm=(0, 1, 2)):
        letters = [glazer[2 * i] for i in range(3)]
        return {frozenset(perm[k] for k in range(3) if letters[k] == x) for x in letters}

    for perm in itertools.permutations(range(3)):
        res = classify_tilts([m[p] for p in perm], [r[p] for p in perm], threshold_deg=2.0)
        assert (res["pattern"], res["phase"]) == (ref["pattern"], ref["phase"])
        assert partition(res["glazer"], perm) == partition(ref["glazer"])
        assert sorted(res["glazer"][2 * i + 1] for i in range(3)) == sorted(ref["glazer"][2 * i + 1] for i in range(3))


@pytest.mark.parametrize(
    ("temps", "rate", "dt", "n_ramp"),
    [((300.0, 1800.0), 1.0, 2.0, 750_000), ((1800.0, 300.0), 10.0, 1.0, 150_000), ((300.0, 700.0), None, 2.0, 40)],
)
def test_heating_ramp_from_rate_or_steps(temps, rate, dt, n_ramp):
    """Ramp length from a rate in K/ps (timestep in fs), the rate reported back, and the
    thermostat target per step: t0 through the equilibration, then linear, reaching t1 on
    the last ramp step (cooling too)."""
    from ase_born.workflows.heating import HeatingConfig

    cfg = HeatingConfig(temperatures_K=temps, heating_rate_K_per_ps=rate, ramp_steps=40,
                        timestep_fs=dt, equilibration_steps=7)
    assert cfg.n_ramp_steps == n_ramp and cfg.total_steps == 7 + n_ramp
    span = abs(temps[1] - temps[0])
    assert cfg.rate_K_per_ps == pytest.approx(rate if rate else span / (40 * dt / 1000.0))
    t0, t1 = temps
    assert [cfg.target_temperature(s) for s in (0, 6)] == [t0, t0]
    assert cfg.target_temperature(7) == pytest.approx(t0 + (t1 - t0) / n_ramp)
    assert cfg.target_temperature(7 + n_ramp // 2 - 1) == pytest.approx(t0 + (t1 - t0) * (n_ramp // 2) / n_ramp)
    assert cfg.target_temperature(7 + n_ramp - 1) == t1
    assert cfg.target_temperature(7 + n_ramp + 5) == t1


def test_transition_helpers():
    t = [300, 500, 700, 900, 1100]
    phases = ["Pnma", "Pnma", "I4/mcm", "Pnma", "Pm-3m"]
    tr = estimate_transitions(t, phases)
    assert [(x["from"], x["to"], x["temperature_K"]) for x in tr] == [
        ("Pnma", "I4/mcm", 600.0),
        ("I4/mcm", "Pnma", 800.0),
        ("Pnma", "Pm-3m", 1000.0),
    ]
    assert order_parameter_vanishing(t, [8, 6, 3, 1, 0.5], 2.0) == 800.0
    assert order_parameter_vanishing(t, [8, 6, 3, 3, 3], 2.0) is None


def test_b_site_and_anion_are_inferred_from_the_composition():
    """Not only titanates: Pnma CaZrO3 (the seed's set C; Ti -> Zr, cell +5 %) is analysed
    without naming its B site, with the same tilt angles as the CaTiO3 it was made from."""
    pn = pnma_catio3()
    assert perovskite_sites(pn) == ("Ti", "O")
    czo = pn.copy()
    czo.symbols[czo.symbols == "Ti"] = "Zr"
    czo.set_cell(czo.cell * 1.05, scale_atoms=True)
    assert perovskite_sites(czo) == ("Zr", "O")
    ops = TiltAnalyzer(czo).order_parameters(czo)
    ref = TiltAnalyzer(pn).order_parameters(pn)
    for k in ("M", "R"):
        np.testing.assert_allclose(ops[k], ref[k], atol=1e-8)
    np.testing.assert_allclose(TiltAnalyzer(czo, b_site="Zr").order_parameters(czo)["R"], ref["R"],
                               atol=1e-8)
    assert perovskite_sites(bulk("Cu", "fcc", a=3.6, cubic=True)) is None


def test_non_perovskite_and_untiltable_cells_are_rejected():
    with pytest.raises(ValueError, match="perovskite"):
        TiltAnalyzer(bulk("Cu", "fcc", a=3.6, cubic=True))
    ana = TiltAnalyzer(cubic_catio3())  # one formula unit: no zone-boundary pattern fits
    assert not ana.commensurate["R"].any() and not ana.commensurate["M"].any()


def test_space_group_and_supercell_parsing():
    assert space_group(pnma_catio3())[1] == 62
    assert (
        parse_supercell("2,1,2")
        == parse_supercell("2x1x2")
        == parse_supercell([2, 1, 2])
        == (2, 1, 2)
    )
    assert parse_supercell(2) == (2, 2, 2)
    for bad in ("0,1,1", "a,b,c", [1, 2], "-1,1,1", [1.5, 1, 1]):
        with pytest.raises(ValueError, match="supercell"):
            parse_supercell(bad)
    with pytest.raises(ValueError, match="even repeats"):
        glazer_perovskite((0, 0, 5), "00-", repeat=(1, 1, 1))


def test_window_averager_means_fractional_positions_and_cell(tmp_path):
    """The heating run's window average: mean cell, and the reference sites plus the mean
    fractional displacement with each frame's rigid shift removed and its periodic jumps
    undone; a window change writes the finished window and starts a new sum."""
    import ase.io
    from ase import Atoms

    from ase_born.workflows.heating import WindowAverager

    cell0 = np.array([[4.0, 0.0, 0.0], [0.3, 5.0, 0.0], [0.0, -0.2, 6.0]])
    s0 = np.array([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5], [0.8, 0.1, 0.6], [0.3, 0.7, 0.9]])
    ref = Atoms("CaTiO2", scaled_positions=s0, cell=cell0, pbc=True)
    rng = np.random.default_rng(3)
    d = rng.normal(scale=0.01, size=(3, 4, 3))
    d -= d.mean(axis=1, keepdims=True)  # displacements without a rigid part
    shifts = np.array([[0.05, -0.02, 0.01], [-0.03, 0.04, 0.0], [0.0, 0.0, -0.06]])
    strains = ([0.01, 0.0, -0.01], [0.0, 0.02, 0.0], [-0.01, 0.01, 0.03])
    cells = [cell0 @ (np.eye(3) + np.diag(x)) for x in strains]
    jump = np.zeros((4, 3))
    jump[3, 2] = 1.0  # atom 3 crossed the upper z face (positions wrapped)
    frames = []
    for f in range(3):
        a = ref.copy()
        a.set_cell(cells[f])
        a.set_scaled_positions(s0 + d[f] + shifts[f] - (jump if f == 1 else 0.0))
        frames.append(a)
    other = ref.copy()
    other.set_cell(cell0 * 1.1)
    other.set_scaled_positions(s0 + 0.02)  # a pure rigid shift: the average is the reference

    out = tmp_path / "w.extxyz"
    with open(out, "w") as fh:
        av = WindowAverager(ref, np.array([100.0, 150.0, 200.0]))
        for f, t in zip(frames, (110.0, 120.0, 149.0)):
            av.add(f, t, fh)
        av.add(other, 160.0, fh)  # leaves window 0: its average is written
        av.flush(fh)
    w0, w1 = ase.io.read(out, index=":")
    np.testing.assert_allclose(w0.cell.array, np.mean(cells, axis=0), atol=1e-7)
    np.testing.assert_allclose(w0.get_scaled_positions(wrap=False), s0 + d.mean(0), atol=1e-7)
    assert w0.info["window"] == 0 and w0.info["n_samples"] == 3
    np.testing.assert_allclose(w0.info["range_K"], [100.0, 150.0])
    np.testing.assert_allclose(w1.cell.array, cell0 * 1.1, atol=1e-7)
    np.testing.assert_allclose(w1.get_scaled_positions(wrap=False), s0, atol=1e-7)
    assert w1.info["window"] == 1 and w1.info["n_samples"] == 1


def test_heating_logs_the_ionic_polarization_along_the_field(tmp_path):
    """heat_log.csv's P columns are the calculator's ionic polarization in C/m² (e/Å² ×
    16.0218), and a field along +z polarizes the stand-in along +z (cold, so the thermal
    noise ~0.03 C/m² is far below ⟨Pz⟩ ≈ 0.2 C/m² at 2e8 V/m)."""
    import ase.io

    from ase_born.conventions import C_PER_M2_PER_E_PER_A2
    from ase_born.workflows.common import make_field_calculator
    from ase_born.workflows.heating import HeatingConfig, run_heating
    from ase_born.workflows.rundir import read_csv
    from ase_born.workflows.standins import standin_born_model, standin_force_field

    assert C_PER_M2_PER_E_PER_A2 == pytest.approx(16.0218, rel=1e-5)
    field = (0.0, 0.0, 0.02)  # V/Å
    cfg = HeatingConfig(
        supercell=(1, 1, 1),
        temperatures_K=(10.0,),
        ramp_steps=120,
        equilibration_steps=0,
        field_V_per_A=field,
        log_every=4,
        traj_every=40,
        checkpoint_every=1000,
    )
    out = tmp_path / "heat"
    run_heating(
        cfg, standin_force_field, standin_born_model, str(out), progress=False, log=lambda m: None
    )
    log = read_csv(out / "heat_log.csv")
    ref = ase.io.read(out / "reference.extxyz")
    calc = make_field_calculator(standin_force_field, standin_born_model, ref)
    calc.set(field=field)
    frames = ase.io.read(out / "trajectory.extxyz", index=":")
    assert [f.info["step"] for f in frames] == [40, 80, 120]
    for f in frames:
        row = int(np.nonzero(log["step"] == f.info["step"])[0][0])
        p = np.asarray(calc.get_property("ionic_polarization", f)) * 16.0218
        got = [log[f"P{x}_C_per_m2"][row] for x in "xyz"]
        np.testing.assert_allclose(got, p, rtol=1e-4, atol=1e-6)
    assert abs(p[2]) > 0.05  # the logged frame is polarized: the comparison has teeth
    pz = log["Pz_C_per_m2"]
    assert np.mean(pz) > 0.1
    assert np.mean(pz) > 5 * max(abs(np.mean(log["Px_C_per_m2"])), abs(np.mean(log["Py_C_per_m2"])))


def _synthetic_heat_log(path, m_y, r_x, r_z, t_start=300.0, t_end=700.0):
    """A heat_log.csv of len(m_y) rows, a ramp t_start -> t_end, with the given tilt columns (°)."""
    from ase_born.workflows.heating import LOG_COLUMNS
    from ase_born.workflows.rundir import CsvLog

    n = len(m_y)
    steps = np.arange(1, n + 1) * 10
    cols = {c: np.zeros(n) for c in LOG_COLUMNS}
    target = t_start + (t_end - t_start) * steps / steps[-1]
    cols.update(step=steps, time_ps=steps * 2e-3, temperature_target_K=target)
    cols["temperature_K"] = cols["temperature_target_K"]
    for c in ("a_p_A", "b_p_A", "c_p_A"):
        cols[c] = np.full(n, 3.85)
    cols["v_per_fu_A3"] = np.full(n, 3.85**3)
    cols.update(My_deg=np.asarray(m_y, float), Rx_deg=np.asarray(r_x, float), Rz_deg=np.asarray(r_z, float))
    cols["Mz_deg"] = np.full(n, np.nan)  # an axis the cell cannot hold: ignored, not zero-filled
    with open(path, "w") as fh:
        log = CsvLog(fh, LOG_COLUMNS, write_header=True)
        for i in range(n):
            log.write([cols[c][i] for c in LOG_COLUMNS])


def test_heating_windows_flag_tilts_whose_sign_flips_within_a_window(tmp_path):
    """Window means classify an ordered pattern; the RMS keeps the amplitude of a flipping tilt.

    300-500 K: a−b+a− (M +8° about y, R 6° about x and z) → Pnma, nothing flagged. 500-700 K:
    the in-phase tilt flips sign every row (domains / hopping): its window mean vanishes (label
    a−b0a−, Imma), its RMS stays 8°, its order |mean|/RMS drops to ~0, and the window is flagged.
    """
    import ase.io

    from ase_born.workflows.heating import HeatingConfig, analyze_heating, format_heating_report
    from ase_born.workflows.rundir import read_csv

    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.1, size=(3, 40))
    m_y = np.where(np.arange(40) < 20, 8.0, 8.0 * (-1.0) ** np.arange(40)) + noise[0]
    _synthetic_heat_log(tmp_path / "heat_log.csv", m_y, 6.0 + noise[1], -6.0 + noise[2])
    ase.io.write(tmp_path / "reference.extxyz", pnma_catio3(), format="extxyz")
    cfg = HeatingConfig(supercell=(1, 1, 1), temperatures_K=(300.0, 700.0), ramp_steps=400,
                        equilibration_steps=0, log_every=10, window_K=200.0)
    res = analyze_heating(str(tmp_path), cfg)
    low, high = res["windows"]
    assert (low["n_log"], high["n_log"]) == (19, 21)  # the row at exactly 500 K opens window 2
    assert low["phase"] == "Pnma" and low["disordered_tilts"] == []
    assert high["phase"] == "Imma" and high["disordered_tilts"] == ["M"]
    assert abs(high["M_deg"][1]) < 1.0  # the mean of a flipping tilt
    for w in (low, high):
        assert w["M_rms_deg"] == pytest.approx(8.0, abs=0.1)  # NaN Mz ignored
        assert w["R_rms_deg"] == pytest.approx(np.hypot(6.0, 6.0), abs=0.1)
        assert np.isnan(w["M_deg"][2])
    csv = read_csv(tmp_path / "heat_windows.csv")
    np.testing.assert_allclose(csv["M_rms_deg"], [low["M_rms_deg"], high["M_rms_deg"]])
    text = format_heating_report(res)
    assert low["M_order"] > 0.95 and low["R_order"] > 0.95
    assert high["M_order"] < 0.1 and high["R_order"] > 0.95
    rows = [line.split() for line in text.splitlines()[2:4]]  # after the title and header
    # ..., M ord, R ord, Glazer, phase, spglib of the averaged structure
    assert rows[0][-3:-1] == ["a-b+a-", "Pnma"] and float(rows[0][-5]) > 0.95
    assert rows[1][-3:-1] == ["a-b0a-", "Imma"] and float(rows[1][-5]) < 0.1
    assert "axis or sign changes" in text


def test_a_cooling_run_reports_its_phase_changes_from_high_to_low_temperature(tmp_path):
    """700 -> 300 K: I4/mcm (a0a0c−, R about z only) first, Pnma (a−b+a−) below 500 K.

    The windows stay in increasing temperature; the transition reads I4/mcm -> Pnma, the
    order the run met them (a heating-order report would say Pnma -> I4/mcm).
    """
    import ase.io

    from ase_born.workflows.heating import HeatingConfig, analyze_heating, format_heating_report

    first = np.arange(40) < 20  # the hot half of the run
    m_y = np.where(first, 0.0, 8.0)
    _synthetic_heat_log(tmp_path / "heat_log.csv", m_y, np.where(first, 0.0, 6.0), np.full(40, 6.0),
                        t_start=700.0, t_end=300.0)
    ase.io.write(tmp_path / "reference.extxyz", pnma_catio3(), format="extxyz")
    cfg = HeatingConfig(supercell=(1, 1, 1), temperatures_K=(700.0, 300.0), ramp_steps=400,
                        equilibration_steps=0, log_every=10, window_K=200.0)
    res = analyze_heating(str(tmp_path), cfg)
    assert res["ramp"] == "cooling"
    assert [w["phase"] for w in res["windows"]] == ["Pnma", "I4/mcm"]  # by increasing T
    assert [(t["from"], t["to"]) for t in res["transitions"]] == [("I4/mcm", "Pnma")]
    assert res["transitions"][0]["temperature_K"] == pytest.approx(500.0, abs=15.0)
    # the in-phase tilt is above the threshold below 500 K only: it vanishes above ~500 K
    assert res["M_vanishes_K"] == pytest.approx(500.0, abs=15.0) and res["R_vanishes_K"] is None
    text = format_heating_report(res)
    assert text.startswith("Cooling run") and "transition I4/mcm -> Pnma at ~" in text


def test_a_running_heating_run_is_analysed_up_to_its_torn_last_rows(tmp_path):
    """While the run writes (or after a kill mid-write) heat_log.csv and window_structures.extxyz
    can end in a torn row / frame: the analysis uses what is whole."""
    import ase.io

    from ase_born.workflows.heating import HeatingConfig, analyze_heating

    _synthetic_heat_log(tmp_path / "heat_log.csv", np.full(40, 8.0), np.full(40, 6.0), np.full(40, -6.0))
    with open(tmp_path / "heat_log.csv", "a") as fh:
        fh.write("410,0.82,7")  # a row being written
    ref = pnma_catio3()
    ase.io.write(tmp_path / "reference.extxyz", ref, format="extxyz")
    avg = ref.copy()
    avg.info.update(window=0, n_samples=19, range_K=[300.0, 500.0])
    ase.io.write(tmp_path / "window_structures.extxyz", [avg, avg], format="extxyz")
    text = (tmp_path / "window_structures.extxyz").read_text()
    (tmp_path / "window_structures.extxyz").write_text(text[: len(text) // 2 + 200])  # 2nd torn
    cfg = HeatingConfig(supercell=(1, 1, 1), temperatures_K=(300.0, 700.0), ramp_steps=400,
                        equilibration_steps=0, log_every=10, window_K=200.0)
    res = analyze_heating(str(tmp_path), cfg)
    assert [w["n_log"] for w in res["windows"]] == [19, 21]
    assert [w["n_averaged"] for w in res["windows"]] == [19, 0]
    assert res["windows"][0]["spglib_number"] == 62  # the whole first frame: Pnma
