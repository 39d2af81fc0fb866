"""Figures of the data stages. Each function returns the figure and saves it as PNG."""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from emovit.files import atomic_savefig

SPLIT_COLORS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def label_scatter(songs: pd.DataFrame, output_dir: str, name: str = "labels_scatter.png"):
    """Valence-arousal plane of the song labels ([-1, 1] scale)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(songs["valence"], songs["arousal"], s=8, alpha=0.6)
    _va_axes(ax)
    ax.set_title(f"Song labels (n = {len(songs)})")
    atomic_savefig(fig, os.path.join(output_dir, name))
    return fig


def example_spectrograms(
    mels: np.ndarray, labels: pd.DataFrame, params, output_dir: str, name: str = "example_spectrograms.png"
):
    """A few stored clips (k, n_mels, T) in dB, titled with their song id and labels; the
    model's first window (``clip_seconds``) is outlined."""
    k = len(mels)
    fig, axes = plt.subplots(1, k, figsize=(4 * k, 3.2), squeeze=False)
    seconds = mels.shape[2] * params.hop_length / params.sample_rate
    for ax, mel, row in zip(axes[0], mels, labels.itertuples()):
        ax.axvspan(0, params.clip_seconds, ymin=0.01, ymax=0.99, fill=False, ec="white", lw=1, ls="--")
        im = ax.imshow(
            np.asarray(mel, dtype=np.float32),
            origin="lower",
            aspect="auto",
            extent=[0, seconds, 0, mel.shape[0]],
            cmap="magma",
        )
        ax.set_title(f"song {row.song_id}: V={row.valence:+.2f} A={row.arousal:+.2f}")
        ax.set_xlabel("time (s)")
    axes[0][0].set_ylabel("mel band")
    fig.colorbar(im, ax=axes[0].tolist(), label="dB re 1.0")
    atomic_savefig(fig, os.path.join(output_dir, name))
    return fig


def split_distributions(
    songs: pd.DataFrame, split: pd.DataFrame, output_dir: str, name: str = "split_distributions.png"
):
    """Histograms of valence and arousal per split (densities, so sizes do not matter)."""
    merged = songs.merge(split, on="song_id")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    bins = np.linspace(-1, 1, 21)
    for ax, dim in zip(axes, ("valence", "arousal")):
        for name_, group in merged.groupby("split"):
            ax.hist(
                group[dim],
                bins=bins,
                density=True,
                histtype="step",
                lw=2,
                color=SPLIT_COLORS.get(name_),
                label=f"{name_} (n={len(group)})",
            )
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


def gan_training_curves(
    history: list[dict], output_dir: str, name: str = "gan_training_curves.png", best_step: int | None = None
):
    """Per evaluation step: hinge losses; label fidelity on validation labels beside its real
    reference; Frechet distance to the validation songs beside real-vs-real. The kept step is marked."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), constrained_layout=True)
    steps = [h["step"] for h in history]
    axes[0].plot(steps, [h["d_loss"] for h in history], marker=".", label="discriminator (hinge)")
    axes[0].plot(steps, [h["g_loss"] for h in history], marker=".", label="generator (-D(G(z)))")
    axes[0].set_ylabel("loss (mean since last check)")
    axes[0].set_title("Losses")
    if history and "fidelity_valence" in history[0]:
        for dim, color in (("valence", "tab:blue"), ("arousal", "tab:red")):
            axes[1].plot(
                steps, [h[f"fidelity_{dim}"] for h in history], marker=".", color=color, label=f"{dim}: synthetic"
            )
            axes[1].axhline(
                history[0][f"fidelity_reference_{dim}"],
                color=color,
                ls="--",
                lw=1,
                label=f"{dim}: real validation songs",
            )
        axes[2].plot(steps, [h["frechet"] for h in history], marker=".", label="synthetic vs real validation")
        axes[2].axhline(history[0]["frechet_reference"], color="grey", ls="--", label="real train vs real validation")
        axes[2].set_yscale("log")
    axes[1].set_ylabel("label fidelity (CCC of the real-trained probe)")
    axes[1].set_title("Label fidelity on validation labels")
    axes[2].set_ylabel("Frechet distance (band statistics)")
    axes[2].set_title("Frechet distance to validation songs")
    for ax in axes:
        ax.set_xlabel("training step")
        if best_step:
            ax.axvline(best_step, color="green", lw=1, alpha=0.6, label=f"kept (step {best_step})")
        ax.legend(fontsize=7)
    fig.suptitle("Conditional GAN training (monitored every gan_eval_every steps)")
    atomic_savefig(fig, os.path.join(output_dir, name))
    return fig


def real_vs_synthetic(
    real: np.ndarray,
    synthetic: np.ndarray,
    labels: np.ndarray,
    song_ids,
    output_dir: str,
    name: str = "real_vs_synthetic.png",
):
    """Rows: real training spectrogram (left) beside one generated at the same (V, A) (right)."""
    k = len(real)
    fig, axes = plt.subplots(k, 2, figsize=(10, 2.6 * k), squeeze=False, constrained_layout=True)
    lo, hi = float(np.min(real)), float(np.max(real))
    for i in range(k):
        for j, (mel, kind) in enumerate(((real[i], f"real song {song_ids[i]}"), (synthetic[i], "synthetic"))):
            ax = axes[i][j]
            im = ax.imshow(np.asarray(mel, np.float32), origin="lower", aspect="auto", cmap="magma", vmin=lo, vmax=hi)
            ax.set_title(f"{kind}: V={labels[i, 0]:+.2f} A={labels[i, 1]:+.2f}", fontsize=9)
            if j == 0:
                ax.set_ylabel("mel band")
            if i == k - 1:
                ax.set_xlabel("frame")
    fig.colorbar(im, ax=axes.ravel().tolist(), label="dB re 1.0")
    atomic_savefig(fig, os.path.join(output_dir, name))
    return fig


def label_distributions(
    real: np.ndarray, synthetic: np.ndarray, output_dir: str, name: str = "gan_label_distributions.png"
):
    """Real training labels vs the labels the synthetic samples were conditioned on."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axes[0].scatter(synthetic[:, 0], synthetic[:, 1], s=4, alpha=0.3, label=f"synthetic (n={len(synthetic)})")
    axes[0].scatter(real[:, 0], real[:, 1], s=8, alpha=0.7, label=f"real train (n={len(real)})")
    _va_axes(axes[0])
    axes[0].legend(fontsize=8)
    axes[0].set_title("Labels on the valence-arousal plane")
    bins = np.linspace(-1, 1, 31)
    for ax, d, dim in ((axes[1], 0, "valence"), (axes[2], 1, "arousal")):
        ax.hist(real[:, d], bins=bins, density=True, histtype="step", lw=2, label="real train")
        ax.hist(synthetic[:, d], bins=bins, density=True, histtype="step", lw=2, label="synthetic")
        ax.set_xlabel(f"{dim} ([-1, 1])")
        ax.set_ylabel("density")
        ax.set_title(f"{dim.capitalize()}: real vs synthetic labels")
        ax.legend(fontsize=8)
    atomic_savefig(fig, os.path.join(output_dir, name))
    return fig


def vit_training_curves(
    history: list[dict],
    output_dir: str,
    best_epoch: int | None = None,
    name: str = "vit_training_curves.png",
    title: str = "ViT, real + synthetic",
):
    """Train loss, validation loss and validation CCC per epoch of one model (``title``)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    epochs = [h["epoch"] for h in history]
    ax1.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation (real songs)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.set_title(f"{title}: loss")
    ax1.legend()
    for key, label in (("val_ccc_valence", "valence"), ("val_ccc_arousal", "arousal"), ("val_ccc_mean", "mean")):
        ax2.plot(epochs, [h[key] for h in history], marker="o", label=label)
    if best_epoch:
        ax2.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best epoch {best_epoch}")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("CCC")
    ax2.set_title(f"{title}: validation CCC (real songs)")
    ax2.legend()
    atomic_savefig(fig, os.path.join(output_dir, name))
    return fig


def prediction_scatter(
    predictions: pd.DataFrame, metrics: dict, output_dir: str, name: str = "test_predictions_scatter.png"
):
    """Predicted vs true per dimension on the test songs, identity line, CCC in the title."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, dim in zip(axes, ("valence", "arousal")):
        ax.scatter(predictions[f"{dim}_true"], predictions[f"{dim}_pred"], s=12, alpha=0.7)
        ax.plot([-1, 1], [-1, 1], color="grey", lw=1, ls="--", label="identity")
        c = metrics[dim]["ccc"]
        ax.set_title(f"{dim.capitalize()}: test CCC {c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}]")
        ax.set_xlabel(f"true {dim} ([-1, 1])")
        ax.set_ylabel(f"predicted {dim} ([-1, 1])")
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_aspect("equal")
        ax.legend(loc="upper left")
    atomic_savefig(fig, os.path.join(output_dir, name))
    return fig


def va_plane(predictions: pd.DataFrame, output_dir: str, name: str = "va_plane.png"):
    """True and predicted test songs on the valence-arousal plane, joined per song."""
    fig, ax = plt.subplots(figsize=(6, 6))
    for row in predictions.itertuples():
        ax.plot([row.valence_true, row.valence_pred], [row.arousal_true, row.arousal_pred], color="grey", lw=0.5)
    ax.scatter(predictions["valence_true"], predictions["arousal_true"], s=14, label="true")
    ax.scatter(predictions["valence_pred"], predictions["arousal_pred"], s=14, marker="x", label="predicted")
    _va_axes(ax)
    ax.set_title(f"Test songs on the valence-arousal plane (n = {len(predictions)})")
    ax.legend()
    atomic_savefig(fig, os.path.join(output_dir, name))
    return fig


def ablation_comparison(
    models: dict[str, dict], output_dir: str, labels: dict | None = None, name: str = "ablation_comparison.png"
):
    """Test CCC per dimension for each model, with 95% bootstrap intervals as error bars."""
    labels = labels or {}
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(models), 1)
    x = np.arange(2)
    for i, (key, m) in enumerate(models.items()):
        values = np.array([m[d]["ccc"]["value"] for d in ("valence", "arousal")])
        low = values - np.array([m[d]["ccc"]["low"] for d in ("valence", "arousal")])
        high = np.array([m[d]["ccc"]["high"] for d in ("valence", "arousal")]) - values
        ax.bar(
            x + (i - (len(models) - 1) / 2) * width,
            values,
            width,
            yerr=[low, high],
            capsize=4,
            label=labels.get(key, key),
        )
    ax.set_xticks(x, ["valence", "arousal"])
    ax.set_ylabel("test CCC (95% bootstrap interval)")
    ax.set_title("Does the GAN help? Same split, seed and optimizer steps")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    atomic_savefig(fig, os.path.join(output_dir, name))
    return fig


def seed_spread(table: pd.DataFrame, output_dir: str, labels: dict | None = None, name: str = "seed_spread.png"):
    """Test CCC of every model for every training seed (dots) and their mean (bar), per dimension.

    ``table``: :func:`emovit.seeds.per_seed_table` rows (model, seed, valence, arousal)."""
    labels = labels or {}
    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.5 * len(models) + 1.8), sharey=True)
    for ax, dim in zip(axes, ("valence", "arousal")):
        for i, model in enumerate(models):
            values = table.loc[table["model"] == model, dim].to_numpy()
            ax.barh(i, values.mean(), color="lightgrey")
            ax.scatter(values, np.full(len(values), i), color="black", s=14, zorder=3)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel(f"{dim} test CCC")
        ax.set_title(dim)
    axes[0].set_yticks(range(len(models)), [labels.get(m, m) for m in models], fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"{table['seed'].nunique()} training seeds (dots) and their mean (bar), one split and one GAN")
    fig.tight_layout()
    atomic_savefig(fig, os.path.join(output_dir, name))
    return fig


def augmented_batch(images, labels: np.ndarray, output_dir: str, name: str = "augmented_batch.png"):
    """What the ViT sees in training: a few preprocessed images (k, 3, H, W), channel 0, with
    random crops and SpecAugment masks applied (masked areas show the mean level)."""
    images = np.asarray(images, dtype=np.float32)
    k = len(images)
    cols = min(k, 4)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[k:]:
        ax.axis("off")
    for i, ax in enumerate(axes.ravel()[:k]):
        im = ax.imshow(images[i, 0], origin="lower", aspect="auto", cmap="magma")
        ax.set_title(f"V={labels[i, 0]:+.2f} A={labels[i, 1]:+.2f}", fontsize=9)
        ax.set_xlabel("time (pixels)")
        ax.set_ylabel("mel (pixels)")
    fig.colorbar(im, ax=axes.ravel().tolist(), label="normalized pixel value")
    fig.suptitle("One training batch after random crop and SpecAugment (ViT input, channel 0)")
    atomic_savefig(fig, os.path.join(output_dir, name))
    return fig


def songs_va_plane(
    table: pd.DataFrame, output_dir: str, quadrants: dict, neutral_radius: float, name: str = "my_songs_va_plane.png"
):
    """Predicted songs (``emovit.predict`` songs table) on the valence-arousal plane, each named,
    with the quadrant names in the corners and the neutral disc of radius ``neutral_radius``.

    ``quadrants``: {(valence >= 0, arousal >= 0): name}, i.e. ``emovit.predict.QUADRANTS``.
    """
    ok = table[table["error"].fillna("") == ""]
    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    if neutral_radius > 0:
        ax.add_patch(
            plt.Circle(
                (0, 0),
                neutral_radius,
                color="grey",
                alpha=0.2,
                lw=0,
                label=f"neutral (within {neutral_radius:g} of the centre)",
            )
        )
    ax.scatter(ok["valence"], ok["arousal"], s=30, zorder=3, label="song (mean over its windows)")
    for row in ok.itertuples():
        label = row.file if len(row.file) <= 24 else row.file[:21] + "..."
        ax.annotate(label, (row.valence, row.arousal), xytext=(4, 4), textcoords="offset points", fontsize=7)
    for (pos_v, pos_a), words in quadrants.items():
        ax.text(
            0.95 if pos_v else -0.95,
            0.95 if pos_a else -0.95,
            words,
            ha="right" if pos_v else "left",
            va="top" if pos_a else "bottom",
            fontsize=10,
            color="dimgrey",
            style="italic",
        )
    _va_axes(ax)
    ax.set_title(f"Your songs on the valence-arousal plane (n = {len(ok)})")
    ax.legend(loc="lower center", fontsize=7, bbox_to_anchor=(0.5, -0.22))
    atomic_savefig(fig, os.path.join(output_dir, name))
    return fig


def emotion_curves(curves: pd.DataFrame, output_dir: str, max_songs: int = 4, name: str = "my_emotion_curves.png"):
    """Valence and arousal over time for the first ``max_songs`` songs of an ``emovit.predict``
    curves table: one panel per song, each window drawn at its centre, song means dashed."""
    paths = list(dict.fromkeys(curves["path"]))[:max_songs]
    fig, axes = plt.subplots(
        len(paths), 1, figsize=(9, 2.4 * max(len(paths), 1)), squeeze=False, constrained_layout=True
    )
    for ax, path in zip(axes[:, 0], paths):
        song = curves[curves["path"] == path]
        centre = (song["start_s"] + song["end_s"]) / 2
        for dim, color in (("valence", "tab:blue"), ("arousal", "tab:red")):
            ax.plot(centre, song[dim], marker="o", ms=3, color=color, label=dim)
            ax.axhline(song[dim].mean(), color=color, ls="--", lw=1, label=f"{dim}, song mean")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylim(-1, 1)
        ax.set_xlim(0, max(float(song["end_s"].max()), 1e-3))
        ax.set_ylabel("value ([-1, 1])")
        ax.set_title(f"{song['file'].iloc[0]}: {len(song)} window{'s' if len(song) > 1 else ''}", fontsize=9)
    if not paths:
        axes[0, 0].text(0.5, 0.5, "no song could be decoded", ha="center", va="center")
    axes[-1, 0].set_xlabel("time in the song (s, window centre)")
    axes[0, 0].legend(fontsize=7, ncol=4, loc="upper right")
    fig.suptitle("Valence and arousal over time")
    atomic_savefig(fig, os.path.join(output_dir, name))
    return fig


def curves_vs_ratings(
    table: pd.DataFrame, ratings, output_dir: str, max_songs: int = 4, name: str = "test_curves_vs_ratings.png"
):
    """Predicted curves of a few test songs against DEAM's 2 Hz ratings: per song (columns) and
    dimension (rows) the rated samples, each window's target (the mean rating inside it) and the
    model's prediction for it, both at the window's centre. The songs with the most scored windows."""
    scored = table[table["valence_target"].notna() | table["arousal_target"].notna()]
    ids = scored.groupby("song_id").size().sort_values(ascending=False, kind="stable").index[:max_songs]
    fig, axes = plt.subplots(2, max(len(ids), 1), figsize=(4 * max(len(ids), 1), 5.5), squeeze=False, sharey=True)
    for col, sid in enumerate(ids):
        song = table[table["song_id"] == sid]
        centre = (song["start_s"] + song["end_s"]) / 2
        for row, dim in enumerate(("valence", "arousal")):
            ax = axes[row][col]
            t, v = ratings.curve(int(sid), dim)
            ax.plot(t, v, color="grey", lw=0.8, label="2 Hz rating")
            ax.plot(centre, song[f"{dim}_target"], "o", color="tab:blue", ms=4, label="window target (mean rating)")
            ax.plot(centre, song[dim], "x-", color="tab:red", ms=4, lw=1, label="predicted")
            ax.set_ylim(-1, 1)
            ax.axhline(0, color="black", lw=0.4)
            ax.set_xlabel("time in the song (s)")
            ax.set_ylabel(f"{dim} [-1, 1]")
            if row == 0:
                ax.set_title(f"test song {sid}")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Emotion over time on test songs: the model's windows vs DEAM's 2 Hz ratings")
    fig.tight_layout()
    atomic_savefig(fig, os.path.join(output_dir, name))
    return fig
