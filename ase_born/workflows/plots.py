"""PNG figures of the workflows (matplotlib's object API with the Agg canvas; no global state)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

_AX = "xyz"


def _figure(
    nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.8), sharex: bool = False
):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharex=sharex, squeeze=False)
    return fig, axes


def plot_dielectric(results: dict[str, Any], path: str | os.PathLike) -> None:
    """ε_xx, ε_yy, ε_zz vs T (seed Fig. 5): MD finite field (filled), fluctuation (open squares),
    0 K harmonic (open circles at T = 0)."""
    fig, axes = _figure()
    ax = axes[0, 0]
    total = results.get("epsilon_inf") is not None
    q = "epsilon_total" if total else "epsilon_ion"
    temps = [tr["temperature_K"] for tr in results["temperatures"]]
    span = max([*temps, 100.0])
    for b in range(3):
        color = f"C{b}"
        label = f"$\\varepsilon_{{{_AX[b]}{_AX[b]}}}$"
        shift = (b - 1) * 0.008 * span  # small horizontal offsets so error bars do not overlap
        for est, marker, filled, dx in (
            ("finite_field", "o", True, shift),
            ("fluctuation", "s", False, shift + 0.025 * span),
        ):
            vals, errs, ts = [], [], []
            for t, tr in zip(temps, results["temperatures"]):
                block = tr.get(q, tr["epsilon_ion"]).get(est)
                if block is None:
                    continue
                vals.append(np.asarray(block["value"])[b, b])
                errs.append(np.asarray(block["error"])[b, b])
                ts.append(t + dx)
            if vals:
                ax.errorbar(
                    ts,
                    vals,
                    yerr=np.nan_to_num(errs),
                    fmt=marker,
                    color=color,
                    capsize=3,
                    mfc=color if filled else "none",
                    label=f"{label} {'finite field' if est == 'finite_field' else 'fluctuation'}",
                )
        h = results.get("zero_kelvin", {}).get("harmonic")
        if h is not None:
            m = np.asarray(h.get(q, h["epsilon_ion"]))
            ax.plot(
                [0.0], [m[b, b]], "o", ms=9, mfc="none", color=color, label=f"{label} 0 K harmonic"
            )
    ax.set_xlabel("T (K)")
    ax.set_ylabel("ε = ε∞ + ε_ion" if total else "ε_ion (ionic part)")
    ax.set_xlim(left=-50)
    ax.set_title(f"Dielectric tensor, {results.get('n_atoms', '?')}-atom cell")
    ax.legend(fontsize=7, ncol=3)
    fig.savefig(path, dpi=120)


def plot_heating(
    log: dict[str, np.ndarray], analysis: dict[str, Any], path: str | os.PathLike
) -> None:
    """Pseudo-cubic lattice parameters and tilt amplitudes vs T (seed Fig. 4)."""
    from ase_born.workflows.analysis import EXPERIMENTAL_TRANSITIONS_K

    fig, axes = _figure(2, 1, figsize=(7.0, 7.0), sharex=True)
    ax, ax2 = axes[0, 0], axes[1, 0]
    t = log["temperature_target_K"]
    names = ("a_p", "b_p", "c_p")
    for i, n in enumerate(names):
        ax.plot(t, log[f"{n}_A"], color=f"C{i}", lw=0.5, alpha=0.35)
    ax.plot(t, log["v_per_fu_A3"] ** (1.0 / 3.0), color="0.5", lw=0.5, alpha=0.35)
    win = analysis.get("windows", [])
    if win:
        tw = [w["temperature_K"] for w in win]
        for i, n in enumerate(names):
            ax.plot(
                tw,
                [w[f"{n}_A"] for w in win],
                "o-",
                color=f"C{i}",
                ms=3,
                label=f"{n} (along {('a, x', 'b, y', 'c, z')[i]})",
            )
        ax.plot(
            tw,
            [w["v_per_fu_A3"] ** (1.0 / 3.0) for w in win],
            "o-",
            color="0.4",
            ms=3,
            label="V$^{1/3}$ per f.u.",
        )
    for j, (label, tk) in enumerate(EXPERIMENTAL_TRANSITIONS_K.items()):
        for a in (ax, ax2):
            a.axvline(tk, color="k", ls="--", lw=0.8)
        ax.text(
            tk,
            0.99 - 0.09 * j,
            f" exp. {label}\n {tk:g} K",
            transform=ax.get_xaxis_transform(),
            fontsize=6,
            va="top",
            ha="left",
            bbox={"facecolor": "white", "alpha": 0.7, "lw": 0},
        )
    for tr in analysis.get("transitions", []):
        for a in (ax, ax2):
            a.axvline(tr["temperature_K"], color="C3", ls=":", lw=1.0)
    ax.set_ylabel("pseudo-cubic lattice parameter (Å)")
    ax.legend(fontsize=7)
    for comp, style in (("M", "-"), ("R", "--")):
        for i in range(3):
            key = f"{comp}{_AX[i]}_deg"
            if key in log and np.any(np.isfinite(log[key])):
                ax2.plot(
                    t,
                    np.abs(log[key]),
                    style,
                    color=f"C{i}",
                    lw=0.6,
                    label=f"|{comp}| about pseudo-cubic {_AX[i]}",
                )
    # per window the RMS tilt-vector length: the amplitude whatever the axis (older analyses
    # have none)
    for comp, marker in (("M", "o-"), ("R", "s--")):
        pts = [(w["temperature_K"], w[f"{comp}_rms_deg"]) for w in win if f"{comp}_rms_deg" in w]
        if pts:
            ax2.plot(*zip(*pts), marker, color="k", ms=3, lw=1.0, label=f"{comp} RMS per window")
    thr = analysis.get("tilt_threshold_deg")
    if thr is not None:
        ax2.axhline(thr, color="0.5", lw=0.6)
    ax2.set_xlabel("T (K)")
    ax2.set_ylabel("tilt amplitude (deg)")
    ax2.legend(fontsize=7, ncol=2)
    transitions = analysis.get("transitions", [])
    phases = ", ".join(
        f"{tr['from']}→{tr['to']} {tr['temperature_K']:.0f} K" for tr in transitions[:2]
    )
    if len(transitions) > 2:  # a title that fits the figure; all of them in heat_phases.json
        phases += f"\nand {len(transitions) - 2} more phase changes (heat_phases.json)"
    ax.set_title(
        f"{analysis.get('ramp', 'heating').capitalize()} run, {analysis.get('n_atoms', '?')} atoms"
        + (f"; {phases}" if phases else ""),
        fontsize=9,
    )
    fig.savefig(path, dpi=120)


def plot_pe_curve(results: dict[str, Any], path: str | os.PathLike) -> None:
    """P along the field vs E per direction, with the small-field linear fit (seed Fig. 3)."""
    fig, axes = _figure()
    ax = axes[0, 0]
    for c, d in enumerate(results["directions"]):
        e = np.asarray(d["field_V_per_m"])
        p = np.asarray(d["P_parallel_C_per_m2"])
        ax.plot(e, p, "o-", color=f"C{c}", label=f"E ∥ {d['direction']}")
        ax.plot(e, d["slope_C_per_m2_per_V_per_m"] * e, ":", color=f"C{c}", lw=1)
        on = d.get("nonlinearity_onset_V_per_m")
        if on is not None:
            ax.axvline(on, color=f"C{c}", ls="--", lw=0.6)
    ax.set_xlabel("E (V/m)")
    ax.set_ylabel("P ∥ E (C/m²)")
    ax.set_title(
        "Static polarization (dotted: small-field slope; dashed: onset of nonlinearity)", fontsize=9
    )
    ax.legend()
    fig.savefig(path, dpi=120)


__all__ = ["plot_dielectric", "plot_heating", "plot_pe_curve"]
