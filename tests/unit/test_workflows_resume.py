"""Resume after a kill: the workflows continue from their last checkpoint and end where an
uninterrupted run with the same seed ends (subprocess SIGKILL for the MD workflows)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ase_born.workflows.rundir import read_csv

CLI = [sys.executable, "-m", "ase_born.cli.main"]
STANDIN = ["--force-field", "standin", "--born-model", "standin", "--no-progress"]


def _run(args, out):
    subprocess.run(
        [*CLI, *args, "--out", str(out)], check=True, capture_output=True, text=True, timeout=600
    )


def _run_and_kill(args, out, ready, timeout=300):
    """Start the workflow, SIGKILL it once ``ready(checkpoint)`` is true, return the checkpoint seen."""
    proc = subprocess.Popen(
        [*CLI, *args, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ck_file = Path(out) / "checkpoint.json"
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            if proc.poll() is not None:
                pytest.fail(
                    f"the run finished (rc={proc.returncode}) before it could be killed: {proc.stderr.read()}"
                )
            if ck_file.exists():
                try:
                    ck = json.loads(ck_file.read_text())
                except json.JSONDecodeError:  # pragma: no cover - writes are atomic
                    ck = None
                if ck is not None and ready(ck):
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return ck
            time.sleep(0.05)
        pytest.fail("timed out waiting for a checkpoint")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


DIELECTRIC = [
    "dielectric",
    *STANDIN,
    "--supercell",
    "1,1,1",
    "--temperatures",
    "300",
    "--equilibration-steps",
    "100",
    "--steps",
    "400",
    "--discard-steps",
    "20",
    "--checkpoint-every",
    "50",
    "--traj-every",
    "100",
    "--no-static-check",
    "--seed",
    "7",
    "--epsilon-inf",
    "6",
]


def test_dielectric_resumes_after_kill(tmp_path):
    ref_dir, cut_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    _run(DIELECTRIC, ref_dir)
    ck = _run_and_kill(
        DIELECTRIC,
        cut_dir,
        lambda c: (c.get("current") or {}).get("key") == "300K_Ey+" and c["current"]["step"] >= 100,
    )
    assert "300K_E0" in ck["completed"]
    assert not (cut_dir / "dielectric.json").exists()
    _run(DIELECTRIC, cut_dir)  # the same command resumes
    a = json.loads((ref_dir / "dielectric.json").read_text())
    b = json.loads((cut_dir / "dielectric.json").read_text())
    for est in ("finite_field", "fluctuation"):
        for q in ("value", "error"):
            np.testing.assert_allclose(
                b["temperatures"][0]["epsilon_ion"][est][q],
                a["temperatures"][0]["epsilon_ion"][est][q],
                rtol=1e-9,
                atol=1e-12,
            )
    # no duplicated or missing rows in the run that was cut
    for run in ("E0", "Ex+", "Ey+", "Ez+"):
        da, db = read_csv(ref_dir / f"md_300K_{run}.csv"), read_csv(cut_dir / f"md_300K_{run}.csv")
        assert np.array_equal(db["step"], np.arange(1, 401))
        np.testing.assert_allclose(db["Pz_e_per_A2"], da["Pz_e_per_A2"], rtol=1e-9, atol=1e-15)
    # the saved reference and field were restored, not re-picked
    ref_a = (ref_dir / "reference.extxyz").read_text()
    assert (cut_dir / "reference.extxyz").read_text() == ref_a


HEAT = [
    "heat",
    *STANDIN,
    "--supercell",
    "1,1,1",
    "--temperatures",
    "300:900",
    "--steps",
    "1200",
    "--equilibration-steps",
    "100",
    "--checkpoint-every",
    "100",
    "--log-every",
    "10",
    "--traj-every",
    "100",
    "--window-K",
    "200",
    "--seed",
    "3",
    "--field-V-per-m",
    "5e7",
    "--field-direction",
    "z",
]


def test_heating_resumes_after_kill(tmp_path):
    ref_dir, cut_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    _run(HEAT, ref_dir)
    ck = _run_and_kill(HEAT, cut_dir, lambda c: (c.get("current") or {}).get("step", 0) >= 500)
    assert not ck.get("done")
    _run(HEAT, cut_dir)
    la, lb = read_csv(ref_dir / "heat_log.csv"), read_csv(cut_dir / "heat_log.csv")
    assert np.array_equal(lb["step"], la["step"])  # no duplicated rows after the resume
    for col in ("temperature_K", "a_p_A", "Rx_deg", "Pz_C_per_m2", "energy_eV"):
        np.testing.assert_allclose(lb[col], la[col], rtol=1e-9, atol=1e-12)
    pa = json.loads((ref_dir / "heat_phases.json").read_text())
    pb = json.loads((cut_dir / "heat_phases.json").read_text())
    assert [w["phase"] for w in pb["windows"]] == [w["phase"] for w in pa["windows"]]
    # the constant field was restored from the checkpoint
    state = json.loads((cut_dir / "checkpoint.json").read_text())
    assert state["done"]


def test_resume_refuses_mixed_settings(tmp_path):
    out = tmp_path / "r"
    args = ["pe-curve", *STANDIN, "--directions", "z", "--n-fields", "3"]
    _run(args, out)
    proc = subprocess.run(
        [*CLI, *args[:-1], "4", "--out", str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "different settings" in proc.stderr and "fields_V_per_m" in proc.stderr


def test_pe_curve_resumes_after_interruption(tmp_path, monkeypatch):
    """Interrupt inside the 4th relaxation (in-process), resume, compare with an uninterrupted run."""
    from ase_born.workflows import harmonic
    from ase_born.workflows.pe_curve import PECurveConfig, run_pe_curve
    from ase_born.workflows.standins import standin_born_model, standin_force_field

    cfg = PECurveConfig(fields_V_per_m=(0.0, 2e7, 5e7, 1e8), directions=("x", "z"), harmonic=False)
    full = run_pe_curve(
        cfg,
        standin_force_field,
        standin_born_model,
        str(tmp_path / "a"),
        progress=False,
        log=lambda m: None,
    )
    real_relax = harmonic.relax
    calls = {"n": 0}

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 5:  # 1 = zero-field relaxation of the cell, then one per point
            raise KeyboardInterrupt
        return real_relax(*args, **kw)

    monkeypatch.setattr(harmonic, "relax", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_pe_curve(
            cfg,
            standin_force_field,
            standin_born_model,
            str(tmp_path / "b"),
            progress=False,
            log=lambda m: None,
        )
    monkeypatch.setattr(harmonic, "relax", real_relax)
    ck = json.loads((tmp_path / "b" / "checkpoint.json").read_text())
    assert len(ck["done"]) == 3
    resumed = run_pe_curve(
        cfg,
        standin_force_field,
        standin_born_model,
        str(tmp_path / "b"),
        progress=False,
        log=lambda m: None,
    )
    np.testing.assert_allclose(
        resumed["epsilon_ion_static"], full["epsilon_ion_static"], rtol=1e-6, atol=1e-6
    )
    rows = read_csv(tmp_path / "b" / "pe_curve.csv")
    assert len(rows["index"]) == 8


def test_settings_lock_includes_model_hashes(tmp_path):
    """The CLI locks the SHA-256 of the model files into settings.json: a resume with another
    file at the same path (or a retrained default) is refused; a directory from before the
    hashes were recorded still resumes."""
    import hashlib

    from ase_born import defaults
    from ase_born.workflows.models import model_sha256
    from ase_born.workflows.rundir import IncompatibleSettingsError, RunDirectory

    f = tmp_path / "born.extxyz"
    f.write_text("first")
    assert model_sha256(f, "born_model") == hashlib.sha256(b"first").hexdigest()
    assert model_sha256("standin", "born_model") is None
    assert model_sha256(None, "born_model") == (defaults.model_card().get("born_model") or {}).get("sha256")

    def settings(path):
        return {"models": {"born_model": str(path), "born_model_sha256": model_sha256(path, "born_model")}}

    RunDirectory(tmp_path / "run", "pe-curve", settings(f))
    (tmp_path / "run" / "pe_curve.csv").write_text("direction\n")  # the run has started
    f.write_text("second")  # retrained in place
    with pytest.raises(IncompatibleSettingsError, match="born_model_sha256"):
        RunDirectory(tmp_path / "run", "pe-curve", settings(f))
    RunDirectory(tmp_path / "old", "pe-curve", {"models": {"born_model": str(f)}})  # no hash recorded
    RunDirectory(tmp_path / "old", "pe-curve", settings(f))


def test_one_process_per_run_directory(tmp_path):
    """A second run on a directory in use is refused (it used to truncate and interleave the
    first one's outputs), also with --overwrite, which must not delete a running directory."""
    from ase_born.workflows.rundir import RunDirectory, RunDirectoryLocked

    with RunDirectory(tmp_path / "run", "heat", {"config": {"a": 1}}) as first:
        first.csv("log.csv", ["step"]).write([1])
        first.save_checkpoint({"step": 1})
        code = (
            "import sys; from ase_born.workflows.rundir import RunDirectory; "
            "RunDirectory(sys.argv[1], 'heat', {'config': {'a': 1}}, overwrite=True)"
        )
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode != 0 and "RunDirectoryLocked" in proc.stderr
        assert f"pid {os.getpid()}" in proc.stderr
        assert (tmp_path / "run" / "log.csv").read_text() == "step\n1\n"  # untouched
        with pytest.raises(RunDirectoryLocked):  # also a second object in the same process
            RunDirectory(tmp_path / "run", "heat", {"config": {"a": 1}})
    again = RunDirectory(tmp_path / "run", "heat", {"config": {"a": 1}})  # released: resumes
    assert again.resumed
    again.release()
    RunDirectory(tmp_path / "run", "heat", {"config": {"a": 1}}, overwrite=True).release()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "settings.json"]


def test_overwrite_removes_links_not_what_they_point_to(tmp_path):
    """--overwrite with a symlink to a directory inside the run directory: the link goes,
    its target stays (rmtree refused the link and stopped halfway, settings.json deleted)."""
    from ase_born.workflows.rundir import RunDirectory

    RunDirectory(tmp_path / "run", "heat", {"config": {"a": 1}}).release()
    keep = tmp_path / "data"
    keep.mkdir()
    (keep / "f.txt").write_text("x")
    (tmp_path / "run" / "link_to_data").symlink_to(keep)
    (tmp_path / "run" / "sub").mkdir()
    RunDirectory(tmp_path / "run", "heat", {"config": {"a": 2}}, overwrite=True).release()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "settings.json"]
    assert (keep / "f.txt").read_text() == "x"


def test_resume_accepts_the_same_files_by_another_path_and_new_analysis_options(tmp_path):
    """Model and structure files are locked by content: another path to the same file
    resumes, another content does not. Options that only change when checkpoints are
    written or how the finished run is analysed may change on resume."""
    from ase_born.workflows.rundir import IncompatibleSettingsError, RunDirectory

    (tmp_path / "sub").mkdir()
    for name, text in (("bm.pt", "weights"), ("s.cif", "cell")):
        (tmp_path / name).write_text(text)

    def settings(root, bm="bm.pt", structure="s.cif", **config):
        import hashlib

        def sha(p):
            return hashlib.sha256((root / p).read_bytes()).hexdigest()

        return {
            "config": {"structure": structure, "symprec": 0.1, "tilt_threshold_deg": 2.0,
                       "checkpoint_every": 500, "window_K": 25.0, **config},
            "models": {"born_model": bm, "born_model_sha256": sha(bm)},
            "structure_sha256": sha(structure),
        }

    RunDirectory(tmp_path / "run", "heat", settings(tmp_path)).release()
    (tmp_path / "run" / "heat_log.csv").write_text("step\n")  # the run has started
    sub = tmp_path / "sub"
    RunDirectory(tmp_path / "run", "heat", settings(sub, "../bm.pt", "../s.cif")).release()
    RunDirectory(tmp_path / "run", "heat",
                 settings(tmp_path, symprec=0.05, tilt_threshold_deg=3.0, checkpoint_every=100)).release()
    with pytest.raises(IncompatibleSettingsError, match="window_K"):  # changes the run itself
        RunDirectory(tmp_path / "run", "heat", settings(tmp_path, window_K=50.0))
    (tmp_path / "bm2.pt").write_text("other weights")
    with pytest.raises(IncompatibleSettingsError, match="born_model_sha256"):
        RunDirectory(tmp_path / "run", "heat", settings(tmp_path, "bm2.pt"))
    (tmp_path / "s2.cif").write_text("other cell")
    with pytest.raises(IncompatibleSettingsError, match="structure"):
        RunDirectory(tmp_path / "run", "heat", settings(tmp_path, structure="s2.cif"))


@pytest.mark.parametrize("workflow", ["heating", "dielectric"])
def test_conservative_mode_with_stale_born_charges_fails_before_writing(tmp_path, workflow):
    """mode='conservative' needs Z* at every step: refused by the config, before settings.json
    is written (it used to fail after relaxing and lock the directory with the bad option)."""
    if workflow == "heating":
        from ase_born.workflows.heating import HeatingConfig as Config
    else:
        from ase_born.workflows.dielectric import DielectricConfig as Config
    with pytest.raises(ValueError, match="born_update_every=1"):
        Config(mode="conservative", born_update_every=2)
    Config(mode="conservative", born_update_every=1)
    Config(mode="direct", born_update_every=2)


def test_a_run_never_starts_among_unrelated_files(tmp_path):
    """`--out .` in a folder of the user's files started a run there, and a later
    `--overwrite` of that run deleted the user's files: a fresh start needs a new or empty
    directory (or one that is a run directory already)."""
    from ase_born.workflows.rundir import IncompatibleSettingsError, RunDirectory

    home = tmp_path / "project"
    (home / "src").mkdir(parents=True)
    (home / "thesis.tex").write_text("years of work")
    for overwrite in (False, True):
        with pytest.raises(IncompatibleSettingsError, match="not a workflow directory"):
            RunDirectory(home, "pe-curve", {"a": 1}, overwrite=overwrite)
    assert (home / "thesis.tex").read_text() == "years of work" and (home / "src").is_dir()
    assert not (home / "settings.json").exists()
    RunDirectory(tmp_path / "empty", "pe-curve", {"a": 1}).release()  # new: fine
    (tmp_path / "empty2").mkdir()
    RunDirectory(tmp_path / "empty2", "pe-curve", {"a": 1}).release()  # empty: fine
    # --out naming a file, or a path below one: one message naming the file (mkdir's
    # "[Errno 17] File exists" / "[Errno 20] Not a directory"; with --overwrite a traceback)
    for out in (home / "thesis.tex", home / "thesis.tex" / "run"):
        for overwrite in (False, True):
            with pytest.raises(IncompatibleSettingsError, match="thesis.tex is a file, so .* cannot be a run"):
                RunDirectory(out, "pe-curve", {"a": 1}, overwrite=overwrite)
    assert (home / "thesis.tex").read_text() == "years of work"


def test_a_start_that_wrote_nothing_does_not_block_the_corrected_command(tmp_path):
    """A start that failed after settings.json (e.g. a model that did not load) left a
    directory that refused the corrected command as 'different settings'."""
    from ase_born.workflows.rundir import IncompatibleSettingsError, RunDirectory

    RunDirectory(tmp_path / "run", "heat", {"born_model": "BORN"}).release()
    rd = RunDirectory(tmp_path / "run", "heat", {"born_model": "standin"})  # nothing to mix: accepted
    rd.release()
    assert json.loads((tmp_path / "run" / "settings.json").read_text())["settings"]["born_model"] == "standin"
    (tmp_path / "run" / "heat_log.csv").write_text("step\n")  # once it has written something
    with pytest.raises(IncompatibleSettingsError, match="born_model"):
        RunDirectory(tmp_path / "run", "heat", {"born_model": "BORN"})


def test_read_csv_leaves_out_a_row_still_being_written(tmp_path):
    """A run in progress (or killed mid-write) can leave a last row without its newline: the
    reader skips it instead of failing on a short row, so a running or killed run can be
    analysed."""
    from ase_born.workflows.rundir import CsvLog

    path = tmp_path / "log.csv"
    with open(path, "w") as fh:
        log = CsvLog(fh, ["step", "T_K", "phase"], write_header=True)
        log.write([10, 300.5, "Pnma"])
        log.write([20, 301.25, "Pnma"])
        fh.write("30,30")  # torn: no third field, no newline
    data = read_csv(path)
    assert data["step"].tolist() == [10.0, 20.0] and data["T_K"].tolist() == [300.5, 301.25]
    assert data["phase"].tolist() == ["Pnma", "Pnma"]
    with open(path, "a") as fh:
        fh.write("2.5,Pnma\n")  # the row completed: read in full
    assert read_csv(path)["T_K"].tolist() == [300.5, 301.25, 302.5]
