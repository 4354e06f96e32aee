"""The shipped default models: file integrity (hash in the card) and a reference evaluation."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ase_born import defaults
from ase_born.dft.sampler import pnma_catio3


@pytest.fixture(scope="module")
def card():
    try:
        return defaults.model_card()
    except FileNotFoundError:
        pytest.skip("no default models in this checkout")


def test_card_hashes_match_files(card):
    for key in ("force_field", "born_model"):
        entry = card.get(key)
        if entry:
            assert defaults.sha256(defaults.models_dir() / entry["file"]) == entry["sha256"], key


def test_corrupted_file_is_refused(card, tmp_path, monkeypatch):
    entry = dict(card["force_field"])
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / entry["file"]).write_bytes(b"not a model")
    (tmp_path / "models" / "defaults.json").write_text(json.dumps({**card, "force_field": entry}))
    monkeypatch.setenv("ASE_BORN_DATA", str(tmp_path))
    with pytest.raises(OSError, match="does not match the model card"):
        defaults.load_force_field()


def test_default_mace_reproduces_reference_numbers(card):
    torch = pytest.importorskip("torch")
    before = torch.get_default_dtype()
    calc = defaults.load_force_field(device="cpu", dtype="float64")
    assert torch.get_default_dtype() == before  # no global side effect left behind
    ref = card["force_field"]["reference_check"]
    atoms = pnma_catio3()
    atoms.rattle(0.05, seed=1)
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(ref["energy_eV"], abs=1e-6)
    np.testing.assert_allclose(atoms.get_forces()[:3], ref["forces_first3"], atol=1e-6)
    np.testing.assert_allclose(atoms.get_stress(), ref["stress"], atol=1e-7)
    # physics sanity: forces sum to ~zero (translation invariance)
    assert np.abs(atoms.get_forces().sum(axis=0)).max() < 1e-4


def test_loading_mace_leaves_the_environment_alone(card):
    """``import mace`` writes TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (torch.load's safe mode off
    process-wide); the loader undoes it.  A fresh interpreter, so no earlier import hides it."""
    code = (
        "import os, sys, torch\n"
        "from ase_born import defaults\n"
        "calc = defaults.load_force_field(device='cpu', dtype='float64')\n"
        "assert 'mace' in sys.modules, 'mace was not imported'\n"
        "print(repr(os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD')), torch.get_default_dtype())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split()[-2:] == ["None", "torch.float32"], out.stdout + out.stderr


def test_default_calculator_needs_born_model(card):
    if card.get("born_model"):
        calc = defaults.load_default_calculator(device="cpu")
        atoms = pnma_catio3()
        atoms.calc = calc
        z = calc.get_property("born_effective_charges", atoms)
        assert z.shape == (20, 3, 3) and np.abs(z.sum(axis=0)).max() < 1e-10
        # the stored reference evaluation of the shipped Born model
        ref = card["born_model"]["reference_check"]
        rattled = pnma_catio3()
        rattled.rattle(0.05, seed=1)
        z_ref = defaults.load_born_model(device="cpu").get_born_charges(rattled)
        np.testing.assert_allclose(z_ref[:3], ref["born_charges_first3"], atol=1e-6)
        assert np.abs(z_ref.sum(axis=0)).max() < 1e-10  # acoustic sum rule enforced
        np.testing.assert_allclose(calc.parameters["epsilon_inf"], defaults.default_epsilon_inf())
        # the loader warns clearly for elements the default model never saw (card's elements)
        ba = pnma_catio3()
        ba.numbers[ba.numbers == 20] = 56
        with pytest.warns(UserWarning, match=r"trained on \['O', 'Ca', 'Ti'\] only.*\['Ba'\]"):
            defaults.load_born_model(device="cpu").get_born_charges(ba)
    else:
        with pytest.raises(FileNotFoundError, match="no default Born-charge model"):
            defaults.load_default_calculator(device="cpu")


def test_pressure_correction_from_card(card, tmp_path, monkeypatch):
    corr = (card.get("force_field") or {}).get("pressure_correction_GPa")
    expected = 0.0 if corr is None else corr["value"]
    assert defaults.default_pressure_GPa() == expected
    # a card without the entry (e.g. a user's own force field): no correction
    (tmp_path / "models").mkdir()
    ff = {k: v for k, v in card["force_field"].items() if k != "pressure_correction_GPa"}
    (tmp_path / "models" / "defaults.json").write_text(json.dumps({**card, "force_field": ff}))
    monkeypatch.setenv("ASE_BORN_DATA", str(tmp_path))
    assert defaults.default_pressure_GPa() == 0.0
    # a malformed entry is a clear error naming the card, not a KeyError/TypeError
    for bad in ({"source": "x"}, {"value": "n/a"}, 1.5, [1.5]):
        ff_bad = {**ff, "pressure_correction_GPa": bad}
        (tmp_path / "models" / "defaults.json").write_text(json.dumps({**card, "force_field": ff_bad}))
        with pytest.raises(ValueError, match=r"defaults\.json: force_field\.pressure_correction_GPa"):
            defaults.default_pressure_GPa()


def test_info_reports_unreadable_cards_and_hash_mismatches(tmp_path, monkeypatch):
    """`ase-born info` never crashes on a bad card: invalid JSON or a non-object card is one
    clear line (and `available()` is False); a model file whose hash is not the card's is
    reported as such, not as present; the listed folder follows ASE_BORN_DATA."""
    from ase_born.cli import info

    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("ASE_BORN_DATA", str(tmp_path))
    assert info.models_dir() == defaults.models_dir() == models
    for text, match in (("{not json", "not valid JSON"), ("[1, 2]", "must hold a JSON object")):
        (models / defaults.CARD_NAME).write_text(text)
        assert not defaults.available()
        assert match in defaults.describe() and defaults.describe().count("\n") == 0
    (models / "ff.model").write_bytes(b"garbage")
    card = {"force_field": {"file": "ff.model", "sha256": "0" * 64, "pressure_correction_GPa": {}},
            "born_model": {"sha256": "1" * 64}, "epsilon_inf": [[1.0]]}
    (models / defaults.CARD_NAME).write_text(json.dumps(card))
    text = defaults.describe()
    assert "ff.model (SHA-256 MISMATCH)" in text and "born_model: None (MISSING)" in text
    card["force_field"]["sha256"] = defaults.sha256(models / "ff.model")
    (models / defaults.CARD_NAME).write_text(json.dumps(card))
    assert "ff.model (present, SHA-256 OK)" in defaults.describe()


def test_malformed_epsilon_inf_in_the_card_is_an_error_not_a_missing_value(card, tmp_path, monkeypatch):
    """A broken ε∞ entry used to make the dielectric workflow silently report ε_ion only."""
    from ase_born.cli.main import main
    from ase_born.workflows import models

    (tmp_path / "models").mkdir()
    monkeypatch.setenv("ASE_BORN_DATA", str(tmp_path))
    no_eps = {k: v for k, v in card.items() if k != "epsilon_inf"}
    (tmp_path / "models" / "defaults.json").write_text(json.dumps(no_eps))
    assert defaults.default_epsilon_inf() is None and models.default_epsilon_inf() is None
    for bad in ({"value": [6.0, 6.0]}, {"source": "x"}, {"value": [[float("nan")] * 3] * 3}):
        (tmp_path / "models" / "defaults.json").write_text(json.dumps({**card, "epsilon_inf": bad}))
        for fn in (defaults.default_epsilon_inf, models.default_epsilon_inf):
            with pytest.raises(ValueError, match=r"defaults\.json: epsilon_inf"):
                fn()
    assert main(["dielectric", "--force-field", "standin", "--out", str(tmp_path / "d")]) == 1
    # the caller's own ε∞ does not read the broken entry (models replaced: only the card matters)
    from ase.calculators.emt import EMT

    from ase_born import FixedBornCharges

    monkeypatch.setattr(defaults, "load_born_model", lambda **kw: FixedBornCharges(np.zeros((5, 3, 3))))
    monkeypatch.setattr(defaults, "load_force_field", lambda **kw: EMT())
    calc = defaults.load_default_calculator(epsilon_inf=6.0 * np.eye(3))
    np.testing.assert_array_equal(calc.parameters["epsilon_inf"], 6.0 * np.eye(3))


def test_default_force_field_loads_without_a_default_born_model(card, tmp_path, monkeypatch):
    """The default MACE with one's own Born model needs no shipped Born model (it used to go
    through load_default_calculator, which loads the Equivar model first)."""
    import shutil

    from ase_born.workflows import models

    (tmp_path / "models").mkdir()
    shutil.copy(defaults.models_dir() / card["force_field"]["file"], tmp_path / "models")
    (tmp_path / "models" / "defaults.json").write_text(json.dumps({**card, "born_model": None}))
    monkeypatch.setenv("ASE_BORN_DATA", str(tmp_path))
    ff = models.load_force_field(None)
    assert type(ff).__name__ == "MACECalculator"
    with pytest.raises(RuntimeError, match="no default Born-charge model"):
        models.load_born_model(None)


def test_loading_the_defaults_emits_no_user_warning(card):
    """A fresh process loading the default force field first (as the CLI does) prints no
    UserWarning (e3nn warned about the environment flag mace-torch sets while importing it)."""
    code = ("from ase_born.defaults import load_force_field, load_default_calculator; "
            "load_force_field(); load_default_calculator()")
    proc = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_default_calculator_puts_its_field_terms_with_the_models(card):
    """device/dtype reach the BornFieldCalculator too (its conservative-mode torch terms)."""
    calc = defaults.load_default_calculator(device="cpu", dtype="float32")
    assert (calc.device, calc.dtype) == ("cpu", "float32")
    assert defaults.load_default_calculator(dtype="float32", device="cpu").dtype == "float32"
