"""scripts/update_model_card.py: a new force-field file drops the old file's volume correction;
``--pressure-from`` sets it only from a report of the card's own file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ase_born import defaults

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    if not defaults.available():
        pytest.skip("no default models installed")
    models = tmp_path / "models"
    models.mkdir()
    card = json.loads((REPO / "data" / "models" / "defaults.json").read_text())
    shutil.copy(REPO / "data" / "models" / card["force_field"]["file"], models)
    monkeypatch.setenv("ASE_BORN_DATA", str(tmp_path))
    return models, card


def test_new_force_field_drops_the_volume_correction(data_copy, load_script, capsys):
    models, card = data_copy
    mod = load_script("update_model_card")
    # the old file's correction (the distilled version 2 had 4.12 GPa; the shipped one has 0)
    card["force_field"]["pressure_correction_GPa"] = {"value": 4.12, "source": "old file's check"}
    real_sha = card["force_field"]["sha256"]
    card["force_field"]["sha256"] = "0" * 64  # the card describes another (older) file
    (models / "defaults.json").write_text(json.dumps(card))
    mod.main(["--force-field"])
    new = json.loads((models / "defaults.json").read_text())
    assert new["force_field"]["sha256"] == real_sha
    assert "pressure_correction_GPa" not in new["force_field"]
    assert defaults.default_pressure_GPa() == 0.0
    out = capsys.readouterr().out
    assert "volume correction removed" in out
    assert "NOTE new file, but its summary still describes the old one" in out
    assert new["force_field"]["summary"] == card["force_field"]["summary"]
    # with the new file's summary
    new["force_field"]["sha256"] = "0" * 64
    (models / "defaults.json").write_text(json.dumps(new))
    mod.main(["--force-field", "--summary", "MACE fine-tuned on 50 DFT structures"])
    new = json.loads((models / "defaults.json").read_text())
    assert new["force_field"]["summary"] == "MACE fine-tuned on 50 DFT structures"
    assert "still describes the old one" not in capsys.readouterr().out
    # the same file again keeps a correction that was set for it
    new["force_field"]["pressure_correction_GPa"] = {"value": 1.5, "source": "x"}
    (models / "defaults.json").write_text(json.dumps(new))
    mod.main(["--force-field"])
    assert defaults.default_pressure_GPa() == 1.5


def test_pressure_from_a_report_of_the_cards_own_file(data_copy, load_script, tmp_path):
    models, card = data_copy
    mod = load_script("update_model_card")
    del card["force_field"]["pressure_correction_GPa"]
    (models / "defaults.json").write_text(json.dumps(card))
    report = {
        "model": {"file": card["force_field"]["file"], "sha256": card["force_field"]["sha256"]},
        "pressure": {"pressure_correction_GPa": -2.72, "experimental_volume_A3": 223.68,
                     "lowest_optical_THz": -2.4, "local_minimum": False,
                     "command": "python scripts/distill_mace/validate_physics.py --checks pressure"},
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    mod.main(["--pressure-from", str(path)])
    entry = json.loads((models / "defaults.json").read_text())["force_field"]["pressure_correction_GPa"]
    assert entry["value"] == -2.72 and defaults.default_pressure_GPa() == -2.72
    assert "NOT a local minimum" in entry["source"] and str(path) in entry["source"]
    # a report of another file, or one without the pressure check, is refused
    path.write_text(json.dumps({**report, "model": {"sha256": "f" * 64}}))
    with pytest.raises(SystemExit, match="checks another file"):
        mod.main(["--pressure-from", str(path)])
    path.write_text(json.dumps({"model": report["model"]}))
    with pytest.raises(SystemExit, match="no pressure check"):
        mod.main(["--pressure-from", str(path)])


def test_pressure_from_a_report_that_keeps_the_models_own_volume(data_copy, load_script, tmp_path):
    """A PBEsol-volume model stable at 0 GPa and polar at the experimental volume: the card
    says so and the workflows apply no correction."""
    models, card = data_copy
    mod = load_script("update_model_card")
    (models / "defaults.json").write_text(json.dumps(card))
    report = {
        "model": {"file": card["force_field"]["file"], "sha256": card["force_field"]["sha256"]},
        "pressure": {"pressure_correction_GPa": 0.0, "experimental_volume_pressure_GPa": -3.0,
                     "experimental_volume_A3": 223.68, "volume_A3": 219.9,
                     "lowest_optical_THz": 1.36, "local_minimum": True,
                     "at_experimental_volume": {"lowest_optical_THz": -2.3, "local_minimum": False}},
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    mod.main(["--pressure-from", str(path)])
    entry = json.loads((models / "defaults.json").read_text())["force_field"]["pressure_correction_GPa"]
    assert entry["value"] == 0.0 and defaults.default_pressure_GPa() == 0.0
    assert entry["source"].startswith("none:") and "-3.00 GPa" in entry["source"]
    assert "-2.30 THz" in entry["source"] and "a local minimum" in entry["source"]
