"""Figures of the data stages. Each function returns the figure and saves it as PNG."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from emovit.io import atomic_savefig

SPLIT_COLORS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def label_scatter(songs: pd.DataFrame, output_dir: str, name: str = "labels_scatter.png"):
    """Valence-arousal plane of the song labels ([-1, 1] scale)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(songs["valence"], songs["arousal"], s=8, alpha=0.6)
    _va_axes(ax)
    ax.set_title(f"Song labels (n = {len(songs)})")
    atomic_savefig(fig, os.path.join(output_dir, name))
    return fig


def example_spectrograms(mels: np.ndarray, labels: pd.DataFrame, params, output_dir: str,
                         name: str = "example_spectrograms.png"):
    """A few log-mels (k, n_mels, T) in dB, titled with their song id and labels."""
    k = len(mels)
    fig, axes = plt.subplots(1, k, figsize=(4 * k, 3.2), squeeze=False)
    seconds = params.num_frames * params.hop_length / params.sample_rate
    for ax, mel, row in zip(axes[0], mels, labels.itertuples()):
        im = ax.imshow(np.asarray(mel, dtype=np.float32), origin="lower", aspect="auto",
                       extent=[0, seconds, 0, mel.shape[0]], cmap="magma")
        ax.set_title(f"song {row.song_id}: V={row.valence:+.2f} A={row.arousal:+.2f}")
        ax.set_xlabel("time (s)")
    axes[0][0].set_ylabel("mel band")
    fig.colorbar(im, ax=axes[0].tolist(), label="dB re 1.0")
    atomic_savefig(fig, os.path.join(output_dir, name))
    return fig


def split_distributions(songs: pd.DataFrame, split: pd.DataFrame, output_dir: str,
                        name: str = "split_distributions.png"):
    """Histograms of valence and arousal per split (densities, so sizes do not matter)."""
    merged = songs.merge(split, on="song_id")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    bins = np.linspace(-1, 1, 21)
    for ax, dim in zip(axes, ("valence", "arousal")):
        for name_, group in merged.groupby("split"):
            ax.hist(group[dim], bins=bins, density=True, histtype="step", lw=2,
                    color=SPLIT_COLORS.get(name_), label=f"{name_} (n={len(group)})")
        ax.set_xlabel(f"{dim} ([-1, 1])")
        ax.set_ylabel("density")
        ax.set_title(f"{dim.capitalize()} by split")
        ax.legend()
    atomic_savefig(fig, os.path.join(output_dir, name))
    return fig


def _va_axes(ax) -> None:
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    ax.set_xlabel("valence ([-1, 1])")
    ax.set_ylabel("arousal ([-1, 1])")
    ax.set_aspect("equal")
