"""Overlay figures with the top attention gate's map beside each prediction.

A row per held-out case: the image with the ground truth, each method's prediction, and,
for each method whose model has attention gates, the map of its top gate (gate 0 of the
finest attention position, :func:`unimri.infer.attention.top_gate`) over the image. The
maps come from the trained fold model run on the whole case as prediction runs it
(:func:`unimri.infer.attention.predict_with_attention`); for 3D cases the view is the slice
with the most ground-truth foreground along the model's slice axis, as in the other
overlays.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
from torch import nn

from unimri.runtime.inference import InferenceSpec


def top_gate_view(model: nn.Module, spec: InferenceSpec, case: Any) -> tuple[str, np.ndarray] | None:
    """(gate name, its map as the case's 2D view (H, W) in [0, 1]) or None without gates."""
    from unimri.infer.attention import predict_with_attention, top_gate
    from unimri.runtime.scoring import normalized_image

    _, maps = predict_with_attention(model, normalized_image(case, spec.normalize), spec)
    name = top_gate(maps)
    if name is None:
        return None
    view = maps[name].numpy()
    if view.ndim == 3:
        axis = spec.slice_axis % 3
        label = np.asarray(case.label)
        k = int((label > 0).sum(axis=tuple(a for a in range(3) if a != axis)).argmax())
        view = np.take(view, k, axis)
    return name, view


def plot_overlays_with_attention(rows: Sequence[Mapping[str, Any]], path: str, title: str = "") -> str:
    """``rows[i]`` = {"case_id", "image" (H, W), "label" (H, W), "predictions": {method: (H, W)},
    "attention": {method: (gate name, (H, W) map)}}: ground truth (green contour), predictions
    (red), then each method's attention map (colour scale 0-1) with the ground-truth contour."""
    from unimri.runtime.plots import _plt, _save, draw_overlay_panel

    if not rows:
        raise ValueError("plot_overlays_with_attention: rows is empty")
    plt = _plt()
    methods = list(rows[0]["predictions"])
    gated = [m for m in methods if m in rows[0].get("attention", {})]
    ncols = 1 + len(methods) + len(gated)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.6 * ncols + 0.6, 2.6 * len(rows)), squeeze=False)
    shown = None
    for r, row in enumerate(rows):
        image = np.asarray(row["image"], np.float32).T
        truth = (np.asarray(row["label"]) > 0).T
        panels = [("ground truth", "mask", truth)]
        panels += [(m, "mask", (np.asarray(row["predictions"][m]) > 0).T) for m in methods]
        panels += [(f"{m}:\nattention {row['attention'][m][0]}", "map", np.asarray(row["attention"][m][1]).T)
                   for m in gated]
        for c, (name, kind, values) in enumerate(panels):
            ax = axes[r][c]
            draw_overlay_panel(ax, image, values if kind == "mask" else None,
                               tint=(0.1, 0.9, 0.1) if c == 0 else (0.95, 0.15, 0.1),
                               truth=truth if c > 0 else None, title=name if r == 0 else "",
                               ylabel=str(row["case_id"]) if c == 0 else "", title_size=7)
            if kind == "map":
                shown = ax.imshow(values, cmap="inferno", vmin=0, vmax=1, alpha=0.6, origin="lower")
    if shown is not None:
        fig.colorbar(shown, ax=axes[:, -1].tolist(), fraction=0.05, label="attention α")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def add_attention(rows: Sequence[Mapping[str, Any]], cases: Sequence[Any],
                  models: Mapping[str, tuple[nn.Module, InferenceSpec]]) -> list[dict[str, Any]]:
    """``rows`` (one per case of ``cases``, same order) with ``"attention"``: the top gate's
    view for every method of ``models`` that has gates."""
    out = []
    for row, case in zip(rows, cases):
        attention = {}
        for method, (model, spec) in models.items():
            view = top_gate_view(model, spec, case)
            if view is not None:
                attention[method] = view
        out.append({**row, "attention": attention})
    return out


def _fold_of(run_dir: str, case_id: str) -> int | None:
    """The fold whose scored cases hold ``case_id`` (``test``, or ``val`` where a split has no test set)."""
    folds = json.load(open(os.path.join(run_dir, "folds.json")))["folds"]
    for key in ("test", "val"):
        for k, fold in enumerate(folds):
            if case_id in fold.get(key, ()):
                return k
    return None


def example_rows(cells: Sequence[Any]) -> list[dict[str, Any]]:
    """The overlay rows of one model's cells: the example cases of its first cell's first
    seed that every cell has a prediction of, with each cell's prediction."""
    by_cell = [{e["case_id"]: e for e in c.result.examples} for c in cells]
    rows = []
    for ex in cells[0].result.examples if cells else []:
        if all(ex["case_id"] in found for found in by_cell):
            rows.append({"case_id": ex["case_id"], "image": ex["image"], "label": ex["label"],
                         "predictions": {c.variant: found[ex["case_id"]]["prediction"]
                                         for c, found in zip(cells, by_cell)}})
    return rows


def write_attention_overlays(cells: Sequence[Any], out_dir: str) -> list[str]:
    """``overlays_<model>.png`` with the top gate's map added (:func:`example_rows`), for
    every model of a study whose cells include one with attention. Returns the paths."""
    from unimri.infer.predict import load_trained_model
    from unimri.studies.reports import MODEL_TITLES
    from unimri.train.experiment import load_experiment_cases

    written = []
    for model_name in dict.fromkeys(c.model for c in cells):
        mine = [c for c in cells if c.model == model_name]
        if not any(c.result.config.attention for c in mine):
            continue
        rows = example_rows(mine)
        if not rows:
            continue
        first = mine[0].result
        cases = {c.case_id: c for c in load_experiment_cases(first.config)}
        folds = [_fold_of(first.out_dir, row["case_id"]) for row in rows]
        keep = [(row, cases[row["case_id"]], f) for row, f in zip(rows, folds) if f is not None]
        if not keep:
            continue
        with_maps = []
        for row, case, fold in keep:
            models = {c.variant: load_trained_model(os.path.join(c.result.out_dir, f"fold{fold}", "model.pt"))[:2]
                      for c in mine if c.result.config.attention}
            with_maps += add_attention([row], [case], models)
        title = MODEL_TITLES.get(model_name, model_name)
        written.append(plot_overlays_with_attention(
            with_maps, os.path.join(out_dir, f"overlays_{model_name}.png"),
            title=f"{title}: ground truth (green) vs prediction (red); top attention gate"))
    return written
