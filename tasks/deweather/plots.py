"""Pictures of a restorer at work: input | restored | clean triptychs, and the per-token expert map over an image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def expert_colors(num_experts: int) -> np.ndarray:
    """One RGB colour per expert [E, 3] in [0, 1] (matplotlib's tab10, then tab20)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if num_experts <= 10 else "tab20"]
    return np.array([cmap(e % cmap.N)[:3] for e in range(num_experts)])


def expert_map_rgb(experts: torch.Tensor, size: tuple[int, int], num_experts: int) -> np.ndarray:
    """A map of expert ids [rows, cols] as an RGB image [H, W, 3] uint8 of ``size`` (H, W), each token's patch in
    its expert's colour."""
    grid = expert_colors(num_experts)[experts.cpu().numpy()]  # [rows, cols, 3]
    height, width = size
    rows, cols = experts.shape
    patch = -(-height // rows), -(-width // cols)
    up = grid.repeat(patch[0], axis=0).repeat(patch[1], axis=1)[:height, :width]
    return (up * 255).round().astype(np.uint8)


def _rgb(image: torch.Tensor) -> np.ndarray:
    return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def save_triptychs(path: Path, rows, num_experts: int = 0) -> Path:
    """One row per (degraded, restored, clean, experts or None) image [3, H, W] (experts [rows, cols]): input |
    restored | clean (| the expert map over the input), as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_map = any(row[3] is not None for row in rows)
    columns = ["input", "restored", "clean"] + (["experts"] if with_map else [])
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.2 * len(columns), 2.2 * len(rows)), squeeze=False)
    for i, (degraded, restored, clean, experts) in enumerate(rows):
        panels = [_rgb(degraded), _rgb(restored), _rgb(clean)]
        if experts is not None:
            overlay = expert_map_rgb(experts, degraded.shape[-2:], num_experts) / 255.0
            panels.append(0.45 * panels[0] + 0.55 * overlay)
        for j, panel in enumerate(panels):
            axes[i, j].imshow(panel)
        for j in range(len(columns)):
            axes[i, j].set_axis_off()
            if i == 0:
                axes[i, j].set_title(columns[j], fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
