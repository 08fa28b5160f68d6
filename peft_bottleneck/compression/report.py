"""The layer-importance report: scores as JSON and a plot of every method's scores per layer."""

from __future__ import annotations

import json
import os


def write_report(result: dict, output_dir: str) -> None:
    """``layer_importance.json`` and ``layer_importance.png`` (each method's scores, scaled to [0, 1])."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "layer_importance.json"), "w") as f:
        json.dump(result, f, indent=2)
    from matplotlib.figure import Figure  # no pyplot: the caller's backend and figures are left alone

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for method, values in result["scores"].items():
        low, high = min(values), max(values)
        scaled = [(v - low) / (high - low) if high > low else 0.5 for v in values]
        ax.plot(range(len(values)), scaled, marker="o", label=method)
    ax.set_xlabel(f"layer of {result['stack']}")
    ax.set_ylabel("importance (scaled to [0, 1])")
    ax.set_title("Layer importance")
    ax.set_xticks(range(result["layers"]))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "layer_importance.png"), dpi=120)


