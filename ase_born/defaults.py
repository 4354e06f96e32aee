"""The embedded default models for CaTiO3 (a MACE force field and an Equivar Born-charge model).

Files live in ``data/models/`` of the repository (installed with ``pip install -e``);
``data/models/defaults.json`` is the machine-readable model card: file names,
SHA-256 hashes (checked on load), the elements each model was trained on, ε∞
shipped with the defaults, and provenance.  ``data/README.md`` is the human card.

``ASE_BORN_DATA`` (read, never written) points to another ``data`` directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

CARD_NAME = "defaults.json"


def data_dir() -> Path:
    """The ``data`` directory holding default models and datasets."""
    env = os.environ.get("ASE_BORN_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "data"


def models_dir() -> Path:
    return data_dir() / "models"


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_card() -> dict[str, Any]:
    """The parsed ``defaults.json`` card; ``FileNotFoundError`` if no defaults are installed."""
    path = models_dir() / CARD_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no default models installed ({path} missing). Build them with the recipes in "
            "scripts/distill_mace/ and examples/configs/, or pass explicit model files."
        )
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"model card {path} is not valid JSON: {exc}") from None
    if not isinstance(card, dict):
        raise ValueError(f"model card {path} must hold a JSON object, not {type(card).__name__}")  # noqa: TRY004
    return card


def available() -> bool:
    """True when a model card ships BOTH default models (so :func:`load_default_calculator` can work)."""
    try:
        card = model_card()
    except (FileNotFoundError, ValueError):
        return False
    return bool(card.get("force_field")) and bool(card.get("born_model"))


def checked_file(entry: dict[str, Any]) -> Path:
    """Path of a card entry's model file, after checking it exists and has the card's SHA-256."""
    path = models_dir() / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"default model file missing: {path}")
    digest = sha256(path)
    if digest != entry["sha256"]:
        raise OSError(f"{path}: SHA-256 {digest} does not match the model card ({entry['sha256']}); file corrupted?")
    return path


def load_force_field(device: str = "cpu", dtype: str = "float64"):
    """The default MACE force field as an ASE calculator (``mace.calculators.MACECalculator``).

    MACE's calculator sets torch's global default dtype; it is restored
    (:func:`ase_born.workflows.models.mace_calculator`), so loading the defaults has no
    global side effect.
    """
    from ase_born.workflows.models import mace_calculator

    return mace_calculator(checked_file(model_card()["force_field"]), device=device, dtype=dtype)


def load_born_model(device: str = "cpu", dtype: str = "float64"):
    """The default Equivar Born-charge model (:class:`~ase_born.models.EquivarCalculator`)."""
    from ase.data import atomic_numbers

    from ase_born.models import EquivarCalculator

    card = model_card()
    if not card.get("born_model"):
        raise FileNotFoundError(
            "no default Born-charge model is shipped yet (data/models/defaults.json has born_model: null; "
            "it is trained once the project's DFPT dataset has a training split). Pass your own Equivar "
            "model (EquivarCalculator('model.pt')) or FixedBornCharges."
        )
    path = checked_file(card["born_model"])
    calc = EquivarCalculator(str(path), device=device, dtype=dtype)
    # the card's elements: the calculator warns once per element outside them
    calc.model.elements = tuple(sorted(atomic_numbers[el] for el in card["born_model"]["elements"]))
    return calc


def default_epsilon_inf() -> np.ndarray | None:
    """ε∞ (3x3) shipped with the defaults, or ``None``."""
    eps = model_card().get("epsilon_inf")
    if eps is None:
        return None
    try:
        value = np.asarray(eps["value"], dtype=float).reshape(3, 3)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{models_dir() / CARD_NAME}: epsilon_inf must be {{'value': 3x3 numbers, ...}}, "
            f"got {eps!r} ({exc})"
        ) from None
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{models_dir() / CARD_NAME}: epsilon_inf has non-finite values: {eps!r}")
    return value


def default_pressure_GPa() -> float:
    """Volume correction of the default force field (GPa; 0 when none is shipped).

    The card's ``pressure_correction_GPa`` comes from ``scripts/distill_mace/validate_physics.py
    --checks pressure``: the hydrostatic pressure at which the relaxed Pnma cell has the
    experimental volume where Pnma is a local minimum there (a MACE distilled from a PBE
    teacher: +2.3 % volume, unstable polar Γ modes at its own volume), and 0 where Pnma is a
    minimum only at the model's own volume (fine-tuned on the PBEsol DFPT frames).  The ``ase-born``
    workflow commands (``heat``, ``dielectric``, ``pe-curve``) apply it as the external
    pressure when they run on the default force field and no pressure is given (the classic
    volume correction of first-principles perovskite simulations); the Python ``run_*``
    functions take their config's ``pressure_GPa`` as given (default 0): pass this value.
    """
    try:
        entry = model_card().get("force_field") or {}
    except FileNotFoundError:
        return 0.0
    corr = entry.get("pressure_correction_GPa")
    if corr is None:
        return 0.0
    value = corr.get("value") if isinstance(corr, dict) else None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"model card {models_dir() / CARD_NAME}: force_field.pressure_correction_GPa must be "
            f'an object with a numeric "value" (GPa), not {corr!r}'
        ) from None


def load_default_calculator(device: str = "cpu", dtype: str = "float64", **kwargs):
    """``BornFieldCalculator`` (zero field) from the shipped MACE and Equivar models.

    Parameters
    ----------
    device : str
        ``"cpu"`` or ``"cuda"``; both models are put there.
    dtype : str
        ``"float64"`` (default, for energy conservation) or ``"float32"``.
    **kwargs
        Passed to :class:`~ase_born.calculators.field.BornFieldCalculator`
        (``field``, ``reference``, ``mode``, ...); ``epsilon_inf`` defaults to
        the shipped value, ``device`` / ``dtype`` (the conservative mode's torch terms) to
        the models'.
    """
    from ase_born.calculators.field import BornFieldCalculator

    if "epsilon_inf" not in kwargs:  # the card is read only when needed (a bad entry must not
        kwargs["epsilon_inf"] = default_epsilon_inf()  # block a caller's own ε∞)
    kwargs.setdefault("device", device)  # the conservative mode's field terms: with the models
    kwargs.setdefault("dtype", dtype)
    born = load_born_model(device=device, dtype=dtype)  # first: fails fast if none is shipped
    ff = load_force_field(device=device, dtype=dtype)
    return BornFieldCalculator(force_field=ff, born_model=born, **kwargs)


def describe() -> str:
    """Text for ``ase-born info``."""
    try:
        card = model_card()
    except (FileNotFoundError, ValueError) as exc:
        return f"default models: {exc}"
    lines = [f"default models in {models_dir()}:"]
    for key in ("force_field", "born_model"):
        e = card.get(key)
        if isinstance(e, dict):
            path = models_dir() / str(e.get("file", ""))
            if not e.get("file") or not path.is_file():
                state = "MISSING"
            else:  # what the loaders check: a file whose hash is not the card's is refused
                state = "present, SHA-256 OK" if sha256(path) == e.get("sha256") else "SHA-256 MISMATCH"
            lines.append(f"  {key}: {e.get('file')} ({state}), elements {e.get('elements')}, "
                         f"{e.get('summary', '')}")
    corr = (card.get("force_field") or {}).get("pressure_correction_GPa") if isinstance(card.get("force_field"), dict) else None
    if isinstance(corr, dict):
        lines.append(f"  pressure correction (applied by the ase-born workflow commands): {corr.get('value')} GPa; {corr.get('source', '')}")
    if isinstance(card.get("epsilon_inf"), dict):
        lines.append(f"  epsilon_inf: {card['epsilon_inf'].get('source', '')}")
    lines.append("  model card: data/README.md")
    return "\n".join(lines)
