"""The CLI's one-line error reporting: which failures it catches, which it lets through."""

from __future__ import annotations

import argparse

import pytest

from ase_born.cli._errors import reports_errors


def _raiser(exc):
    def body(args):
        if exc is not None:
            raise exc

    return body


ARGS = argparse.Namespace(command="demo")


@pytest.mark.parametrize("exc", [ValueError("bad value"), FileNotFoundError("no such file x.yaml")])
def test_expected_errors_become_one_line_and_status_1(exc, capsys):
    assert reports_errors(_raiser(exc))(ARGS) == 1
    err = capsys.readouterr().err
    assert err == f"ase-born demo: error: {exc}\n"


def test_success_returns_0_and_also_extends_the_caught_types(capsys):
    assert reports_errors(_raiser(None))(ARGS) == 0
    # RuntimeError is not expected by default (a bug keeps its traceback) ...
    with pytest.raises(RuntimeError):
        reports_errors(_raiser(RuntimeError("unstable")))(ARGS)
    # ... but a command may declare it (the MD workflows: an unstable run)
    assert reports_errors(_raiser(RuntimeError("unstable")), also=(RuntimeError,))(ARGS) == 1
    assert "demo: error: unstable" in capsys.readouterr().err
    with pytest.raises(KeyError):
        reports_errors(_raiser(KeyError("k")), also=(RuntimeError,))(ARGS)


def test_decorator_form_keeps_the_function_name():
    @reports_errors
    def my_command(args):
        return 3

    assert my_command.__name__ == "my_command"
    assert my_command(ARGS) == 3


def _run_cli(argv, capsys):
    from ase_born.cli.main import main

    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse rejects a value
        rc = exc.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["dft", "run", "P", "--ecut-Ha", "-5"], "--ecut-Ha: expected a positive number, got -5"),
    (["dft", "run", "P", "--kpt-density", "0"], "--kpt-density: expected a positive number, got 0"),
    (["dft", "run", "P", "--ranks", "0"], "--ranks: expected a positive integer, got 0"),
    (["dft", "run", "P", "--max-attempts", "0"], "--max-attempts: expected a positive integer, got 0"),
    (["dft", "run", "P", "--hours", "-1"], "--hours: expected a positive number, got -1"),
    (["dft", "run", "P", "--hours", "nan"], "--hours: expected a positive number, got nan"),
    (["dft", "plan", "--n-cubic", "-1"], "--n-cubic: expected a non-negative integer, got -1"),
    (["evaluate", "m.pt", "d.xyz", "--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
    (["convert", "BORN", "-o", "x.xyz", "--symprec", "-1"], "--symprec: expected a positive number, got -1"),
    # fields in V/m are named in V/m (the calculator's "V/Å ... passed as V/Å" message misled)
    (["dielectric", "--field-V-per-m", "2e10"], "--field-V-per-m: 2e10 V/m is above 1e+10 V/m (1 V/Å)"),
    (["dielectric", "--field-V-per-m", "0"], "--field-V-per-m: expected a positive field in V/m, got 0"),
    (["pe-curve", "--field-V-per-m=-1e8"], "--field-V-per-m: expected a positive field in V/m, got -1e8"),
    (["heat", "--field-V-per-m=-5e7"], "--field-V-per-m: expected a field >= 0 in V/m, got -5e7"),
])
def test_bad_numbers_are_refused_by_the_parser(argv, message, capsys):
    """A typo (--ecut-Ha -5) was recorded in the work directory's settings and blocked it
    for good; --symprec -1 crashed the interpreter inside spglib."""
    rc, err = _run_cli(argv, capsys)
    assert rc == 2 and message in err


def test_cli_input_errors_are_one_line(tmp_path, capsys, monkeypatch):
    """Each of these was a traceback (or a silent success)."""
    from ase_born.io.extxyz import write_frames
    from ase_born.models.benchmark import catio3_pnma

    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.txt").write_text("junk junk\n")
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    plan = catio3_pnma()
    plan.info.update(structure_id="p0", kind="pnma20", split="train")
    write_frames(tmp_path / "plan.extxyz", [plan])
    cases = [
        (["evaluate", "junk.txt", "plan.extxyz"], "junk.txt is not an Equivar model file"),
        (["train", "junk.txt"], "must be a YAML mapping"),
        (["train", "bad.yaml"], "bad.yaml: not valid YAML"),
        (["heat", "--force-field", "standin", "--born-model", "standin", "--device", "gpu", "--out", "h"],
         "unknown torch device 'gpu'"),
        (["dft", "run", "plan.extxyz", "--output", "o.extxyz", "--workdir", "w", "--only", "p0", "NOSUCH"],
         "structure IDs not in the plan plan.extxyz: NOSUCH"),
        (["dft", "run", "plan.extxyz", "--output", "o.extxyz", "--workdir", "w", "--first", "p1"],
         "structure IDs not in the plan plan.extxyz: p1"),
        (["dft", "plan", "--out", "junk.txt/p.extxyz"], "File exists"),
    ]
    for argv, message in cases:
        rc, err = _run_cli(argv, capsys)
        assert rc == 1 and message in err and "Traceback" not in err, (argv, err)
        assert err.count("\n") == 1 or argv[0] == "train", (argv, err)
    assert not (tmp_path / "w").exists()  # the unknown ID was refused before anything was written


def test_an_equivar_file_as_force_field_is_named_as_such(tmp_path, capsys):
    """It was an AttributeError traceback ('dict' object has no attribute 'to') from MACE."""
    from ase_born import defaults

    if not defaults.available():
        pytest.skip("no default models installed")
    equivar = defaults.models_dir() / defaults.model_card()["born_model"]["file"]
    rc, err = _run_cli(["heat", "--force-field", str(equivar), "--born-model", "standin",
                        "--out", str(tmp_path / "h")], capsys)
    assert rc == 1 and "is not a MACE model file: it holds a dict" in err and "Traceback" not in err
