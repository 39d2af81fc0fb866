"""emovit: music emotion (valence, arousal) from mel spectrograms with a ViT and a cGAN.

The package is the source of truth; the Kaggle notebook is built from it
(``tools/build_notebook.py``), one ``%%writefile`` cell per module.
"""

__version__ = "0.1.0"
