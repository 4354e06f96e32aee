"""`ase-born heat | dielectric | pe-curve`: help, end-to-end runs with stand-ins, clear input errors."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest

from ase_born.cli.main import main
from ase_born.cli.workflows import parse_temperatures
from ase_born.dft.sampler import cubic_catio3

STANDIN = ["--force-field", "standin", "--born-model", "standin", "--no-progress"]


@pytest.mark.parametrize("cmd", ["heat", "dielectric", "pe-curve"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert (
        "--force-field" in text
        and "--born-model" in text
        and "--device" in text
        and "--out" in text
    )
    assert "--paper" in text
    if cmd != "pe-curve":
        for opt in (
            "--temperatures",
            "--steps",
            "--timestep-fs",
            "--field-V-per-m",
            "--seed",
            "--supercell",
        ):
            assert opt in text


def test_parse_temperatures():
    assert parse_temperatures("300") == (300.0,)
    assert parse_temperatures("300,600") == (300.0, 600.0)
    assert parse_temperatures("300:900:300") == (300.0, 600.0, 900.0)
    assert parse_temperatures("300:1800", ramp=True) == (300.0, 1800.0)
    with pytest.raises(ValueError, match="temperatures"):
        parse_temperatures("300:1800")
    with pytest.raises(ValueError, match="temperatures"):
        parse_temperatures("hot")


@pytest.fixture
def cubic_file(tmp_path):
    p = tmp_path / "cubic.extxyz"
    ase.io.write(p, cubic_catio3(), format="extxyz")
    return str(p)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["dielectric", "--structure", "no/such/file.cif"], "structure file not found"),
        (["dielectric", "--temperatures", "0"], "positive temperatures"),
        (["dielectric", "--temperatures", "300,-20"], "positive temperatures"),
        (["heat", "--temperatures", "300:-5"], "positive temperatures"),
        (["heat", "--field-V-per-m", "5e7"], "needs a direction"),
        (["heat", "--field-direction", "z"], "without a field magnitude"),
        (["heat", "--field-V-per-m", "5e7", "--field-direction", "0,0,0"], "nonzero"),
        (["dielectric", "--supercell", "2,0,1"], "supercell"),
        (["dielectric", "--epsilon-inf", "5,6"], "epsilon_inf"),
        (["pe-curve", "--fields-V-per-m=-1e7,1e8"], "non-negative"),
        (
            ["dielectric", "--force-field", "missing.model", "--born-model", "standin"],
            "model file not found",
        ),
    ],
)
def test_bad_input_gives_clear_error(argv, match, tmp_path, capsys):
    args = [*argv, "--out", str(tmp_path / "out"), "--no-progress"]
    if "--force-field" not in argv:
        args += ["--force-field", "standin", "--born-model", "standin"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert match in err
    assert err.startswith(f"ase-born {argv[0]}: error:")


def test_supercell_that_breaks_the_reference(cubic_file, tmp_path, capsys):
    """One cubic formula unit cannot host the out-of-phase tilts the heating analysis follows."""
    rc = main(
        [
            "heat",
            *STANDIN,
            "--structure",
            cubic_file,
            "--supercell",
            "1,1,1",
            "--out",
            str(tmp_path / "h"),
        ]
    )
    assert rc == 1
    assert "breaks the reference" in capsys.readouterr().err
    # nothing written: the same --out takes a supercell that works (no "different settings")
    assert not (tmp_path / "h").exists() or not (tmp_path / "h" / "settings.json").exists()
    good = ["heat", *STANDIN, "--structure", cubic_file, "--supercell", "2,2,2", "--steps", "4",
            "--equilibration-steps", "0", "--log-every", "2", "--out", str(tmp_path / "h")]
    assert main(good) == 0
    settings = (tmp_path / "h" / "settings.json").read_text()
    # with --overwrite too: refused before the finished run is removed
    rc = main(["heat", *STANDIN, "--structure", cubic_file, "--supercell", "1,1,1", "--overwrite",
               "--out", str(tmp_path / "h")])
    assert rc == 1 and "breaks the reference" in capsys.readouterr().err
    assert (tmp_path / "h" / "settings.json").read_text() == settings
    assert (tmp_path / "h" / "heat_log.csv").exists()


def test_missing_default_models_error(tmp_path, capsys, monkeypatch):
    """Without default models (ASE_BORN_DATA at an empty directory) the CLI asks for model files."""
    from ase_born import defaults

    empty = tmp_path / "no_data"
    empty.mkdir()
    monkeypatch.setenv("ASE_BORN_DATA", str(empty))
    assert defaults.data_dir() == empty
    assert not defaults.available()
    assert main(["dielectric", "--out", str(tmp_path / "d"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "no default models installed" in err
    assert "--force-field PATH" in err and "--born-model PATH" in err
    assert "'standin'" in err


def test_heat_end_to_end(tmp_path, capsys):
    out = tmp_path / "heat"
    rc = main(
        [
            "heat",
            *STANDIN,
            "--supercell",
            "1,1,1",
            "--temperatures",
            "300:700",
            "--steps",
            "300",
            "--equilibration-steps",
            "50",
            "--log-every",
            "10",
            "--traj-every",
            "50",
            "--window-K",
            "200",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "Pnma" in text and "1512 K" in text
    for name in (
        "heat_log.csv",
        "trajectory.extxyz",
        "heat_windows.csv",
        "heat_phases.json",
        "heat.png",
        "window_structures.extxyz",
        "reference.extxyz",
        "settings.json",
    ):
        assert (out / name).exists(), name
    res = json.loads((out / "heat_phases.json").read_text())
    assert [w["phase"] for w in res["windows"]] == ["Pnma", "Pnma"]
    # the ramp: target 300 K through the 50 equilibration steps, then linear to 700 K over
    # the 300 ramp steps (logged after each step s1: the target of step s1 - 1 -> s1)
    from ase.geometry import cellpar_to_cell

    from ase_born.workflows.rundir import read_csv

    log = read_csv(out / "heat_log.csv")
    steps = log["step"].astype(int)
    assert steps.tolist() == list(range(10, 351, 10))
    want = np.where(steps <= 50, 300.0, 300.0 + 400.0 * (steps - 50) / 300.0)
    np.testing.assert_allclose(log["temperature_target_K"], want, atol=1e-9)
    np.testing.assert_allclose(log["time_ps"], steps * 1e-3 * 2.0, atol=1e-12)  # 2 fs steps
    hot, cold = log["temperature_K"][-8:].mean(), log["temperature_K"][steps <= 50].mean()
    assert hot > cold + 150  # the thermostat follows the ramp (~640 K against ~300 K)
    # volume per formula unit: 20 atoms = 4 CaTiO3
    cellpar = np.stack([log[k] for k in ("a_A", "b_A", "c_A", "alpha_deg", "beta_deg", "gamma_deg")], 1)
    vols = [abs(np.linalg.det(cellpar_to_cell(c))) for c in cellpar]
    np.testing.assert_allclose(log["v_per_fu_A3"], np.array(vols) / 4, rtol=1e-5)
    # windows 300-500 and 500-700 K hold only ramp rows: 14 (steps 60-190) and 16 (200-350)
    assert [w["n_log"] for w in res["windows"]] == [14, 16]
    assert [w["n_averaged"] for w in res["windows"]] == [14, 16]
    # the finished run is analysed again with other analysis options (no MD is redone)
    n_rows = (out / "heat_log.csv").read_text().count("\n")
    rc = main(["heat", *STANDIN, "--supercell", "1,1,1", "--temperatures", "300:700", "--steps", "300",
               "--equilibration-steps", "50", "--log-every", "10", "--traj-every", "50",
               "--window-K", "200", "--tilt-threshold-deg", "30", "--out", str(out)])
    assert rc == 0 and (out / "heat_log.csv").read_text().count("\n") == n_rows
    res = json.loads((out / "heat_phases.json").read_text())
    assert res["tilt_threshold_deg"] == 30.0
    assert [w["phase"] for w in res["windows"]] == ["Pm-3m", "Pm-3m"]  # no tilt above 30°
    assert res["supercell_axes"][1].startswith("b")
    header = (out / "heat_log.csv").read_text().splitlines()[0]
    for col in (
        "temperature_K",
        "pressure_GPa",
        "a_p_A",
        "b_p_A",
        "c_p_A",
        "v_per_fu_A3",
        "My_deg",
        "Rx_deg",
        "Pz_C_per_m2",
    ):
        assert col in header
    # heat_phases.json is standard JSON: the tilt components this 20-atom cell cannot hold
    # are null, not Python's NaN token (jq / JavaScript reject it)
    text = (out / "heat_phases.json").read_text()
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))
    assert any(x is None for w in strict["windows"] for x in w["M_deg"] + w["R_deg"])
    # analysed with other windows than the run's: no averaged structure of another window is
    # attached (they were matched by index)
    from ase_born.workflows.heating import HeatingConfig, analyze_heating

    cfg = HeatingConfig(supercell=(1, 1, 1), temperatures_K=(300.0, 700.0), ramp_steps=300,
                        equilibration_steps=50, log_every=10, traj_every=50, window_K=100.0)
    other = analyze_heating(str(out), cfg)
    assert [w["range_K"] for w in other["windows"]] == [[300, 400], [400, 500], [500, 600], [600, 700]]
    assert [w["n_averaged"] for w in other["windows"]] == [0, 0, 0, 0]
    same = analyze_heating(str(out), cfg.replace(window_K=200.0))
    assert [w["n_averaged"] for w in same["windows"]] == [14, 16]
    # `heat --analyze`: the same from the command line, the run's own settings (no MD, no
    # models), analysis options only
    capsys.readouterr()
    assert main(["heat", "--analyze", "--out", str(out), "--window-K", "100"]) == 0
    assert "Heating run, 20 atoms" in capsys.readouterr().out
    res = json.loads((out / "heat_phases.json").read_text())
    assert [w["range_K"] for w in res["windows"]] == [[300, 400], [400, 500], [500, 600], [600, 700]]
    # analysis options not given come from settings.json, the run's start (2°), not from the
    # 30° re-analysis above
    assert res["tilt_threshold_deg"] == 2.0 and [w["phase"] for w in res["windows"]] == ["Pnma"] * 4
    assert (out / "heat_log.csv").read_text().count("\n") == n_rows
    assert main(["heat", "--analyze", "--out", str(out), "--steps", "10", "--dtype", "float32"]) == 1
    assert "--dtype, --steps would change the run" in capsys.readouterr().err
    assert main(["heat", "--analyze", "--out", str(tmp_path / "none")]) == 1
    assert "no heating run" in capsys.readouterr().err


def test_pe_curve_end_to_end(tmp_path, capsys):
    out = tmp_path / "pe"
    rc = main(["pe-curve", *STANDIN, "--directions", "x,z", "--n-fields", "4", "--out", str(out)])
    assert rc == 0
    assert "static ε_ion" in capsys.readouterr().out
    res = json.loads((out / "pe_curve.json").read_text())
    assert len(res["directions"]) == 2 and (out / "pe_curve.png").exists()


@pytest.mark.parametrize(
    ("extra", "rate", "ramp"),
    [
        (["--steps", "1000"], None, 1000),  # --steps wins over the preset's 1 K/ps
        (["--heating-rate-K-per-ps", "50"], 50.0, None),
        ([], 1.0, None),  # the preset alone
        (["--temperatures", "1500"], None, None),  # one temperature: no ramp, no rate
        (["--temperatures", "1500", "--steps", "1000"], None, None),
    ],
)
def test_paper_preset_yields_to_explicit_ramp_options(extra, rate, ramp, monkeypatch, tmp_path):
    """``heat --paper --steps N`` ramps over N steps (explicit options win over the preset)."""
    from ase_born.workflows import heating

    seen = {}

    def fake_run(cfg, *args, **kw):
        seen["cfg"] = cfg
        raise RuntimeError("stop here")

    monkeypatch.setattr(heating, "run_heating", fake_run)
    rc = main(["heat", *STANDIN, "--paper", *extra, "--out", str(tmp_path / "h")])
    assert rc == 1 and "cfg" in seen
    cfg = seen["cfg"]
    assert cfg.heating_rate_K_per_ps == rate
    if ramp is not None:
        assert cfg.n_ramp_steps == ramp


@pytest.mark.parametrize(
    ("models", "shipped"),
    [
        (["--force-field", "standin"], True),  # own force field, default Born model
        (["--born-model", "standin", "--force-field", "standin"], False),
    ],
)
def test_default_epsilon_inf_follows_the_default_born_model(models, shipped, monkeypatch, tmp_path):
    """The shipped ε∞ (DFPT of pnma_eq, like the default Born model's training data) is used
    whenever the default Born model is, whatever the force field; never with another
    Born model (its ε∞ is unknown unless given)."""
    from ase_born import defaults
    from ase_born.workflows import dielectric

    if not defaults.available():
        pytest.skip("no default models installed")
    seen = {}

    def fake_run(cfg, *args, **kw):
        seen["cfg"] = cfg
        raise RuntimeError("stop here")

    monkeypatch.setattr(dielectric, "run_dielectric", fake_run)
    rc = main(["dielectric", *models, "--no-progress", "--out", str(tmp_path / "d")])
    assert rc == 1 and "cfg" in seen
    eps = seen["cfg"].epsilon_inf
    if shipped:
        assert eps is not None
        assert list(eps) == pytest.approx(defaults.default_epsilon_inf().ravel().tolist())
    else:
        assert eps is None


@pytest.mark.parametrize(
    ("cmd", "extra", "want"),
    [
        ("heat", ["--field-direction", "-z"], (0.0, 0.0, -0.005)),
        ("heat", ["--field-direction", "y"], (0.0, 0.005, 0.0)),
        ("dielectric", [], 0.005),
    ],
)
def test_field_in_V_per_m_reaches_the_workflow_in_V_per_A(cmd, extra, want, monkeypatch, tmp_path):
    """--field-V-per-m 5e7 is 0.005 V/Å (1 V/Å = 1e10 V/m), with its sign from the direction;
    a wrong factor (V/cm) or a lost sign would pass every end-to-end test, which compare runs
    made through the same conversion."""
    from ase_born.workflows import dielectric, heating

    seen = {}

    def fake_run(cfg, *args, **kw):
        seen["cfg"] = cfg
        raise RuntimeError("stop here")

    monkeypatch.setattr(heating, "run_heating", fake_run)
    monkeypatch.setattr(dielectric, "run_dielectric", fake_run)
    rc = main([cmd, *STANDIN, "--field-V-per-m", "5e7", *extra, "--out", str(tmp_path / "w")])
    assert rc == 1 and "cfg" in seen
    got = seen["cfg"].field_V_per_A
    assert (tuple(got) if cmd == "heat" else got) == pytest.approx(want, abs=1e-15)


def test_negative_directions_point_the_other_way():
    from ase_born.workflows.common import field_vector, parse_direction

    assert parse_direction("-x").tolist() == [-1.0, 0.0, 0.0]
    assert parse_direction("+y").tolist() == [0.0, 1.0, 0.0]
    assert parse_direction("-1,1,0") == pytest.approx([-2**-0.5, 2**-0.5, 0.0])
    assert field_vector(0.01, "-z").tolist() == [0.0, 0.0, -0.01]


def test_negative_direction_values_parse_with_or_without_equals(monkeypatch, tmp_path):
    """``--field-direction -x`` and ``--directions -x,y`` are values, not options (argparse
    stopped with "expected one argument"; only the "=" form worked)."""
    from ase_born.cli.main import attach_negative_values

    assert attach_negative_values(["heat", "--field-direction", "-x", "--steps", "5"]) == [
        "heat", "--field-direction=-x", "--steps", "5"]
    assert attach_negative_values(["pe-curve", "--directions", "-1,1,0"]) == [
        "pe-curve", "--directions=-1,1,0"]
    # another option after it stays an option (argparse then reports the missing value)
    assert attach_negative_values(["heat", "--field-direction", "--steps", "5"]) == [
        "heat", "--field-direction", "--steps", "5"]
    # abbreviations argparse accepts are values too, and reach the parsed arguments
    from ase_born.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(attach_negative_values(["heat", "--field-dir", "-x"])).field_direction == "-x"
    assert parser.parse_args(attach_negative_values(["pe-curve", "--direction", "-x,y"])).directions == "-x,y"
    assert attach_negative_values(["heat", "--steps", "-5"]) == ["heat", "--steps", "-5"]  # not a direction option


def test_isothermal_heat_run_averages_production_only(tmp_path):
    """One temperature: windows and averaged structures hold the production rows only, as
    in a ramp (the equilibration rows were averaged too)."""
    from ase_born.workflows.heating import HeatingConfig, run_heating
    from ase_born.workflows.standins import standin_born_model, standin_force_field

    cfg = HeatingConfig(supercell=(1, 1, 1), temperatures_K=(300.0,), ramp_steps=40,
                        equilibration_steps=20, log_every=4, traj_every=40, checkpoint_every=1000)
    res = run_heating(cfg, standin_force_field, standin_born_model, str(tmp_path / "iso"),
                      progress=False, log=lambda m: None)
    (w,) = res["windows"]
    assert w["n_log"] == 10 and w["n_averaged"] == 10  # steps 24..60, not 4..60
