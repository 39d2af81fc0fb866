"""Predict the valence and arousal of one audio file from ``best_vit_model.pth`` alone.

Works in a fresh process without the hub or the training data: the checkpoint holds the ViT
config, the weights, the feature parameters and the normalization statistics.

    from emovit.predict import predict
    predict("song.mp3", "/kaggle/working/vit_augmented/best_vit_model.pth")
    # {'valence': 0.12, 'arousal': -0.3, 'valence_1_9': 5.48, 'arousal_1_9': 3.8}
"""

from __future__ import annotations

import torch

from emovit.deam import to_rating_scale
from emovit.features import MelParams, load_window, log_mel
from emovit.io import load_checkpoint
from emovit.vit import DevicePreprocessor, model_from_config_dict


class Predictor:
    """A loaded checkpoint; call it with an audio path."""

    def __init__(self, checkpoint: str, device: str = "cpu"):
        state = load_checkpoint(checkpoint)
        self.params = MelParams(**state["mel_params"])
        self.model = model_from_config_dict(state["vit_config"])
        self.model.load_state_dict(state["state_dict"])
        self.pre = DevicePreprocessor.from_dict(state["preprocess"])
        self.device = device
        self.model.to(device).eval()
        self.pre.to(device)

    @torch.no_grad()
    def __call__(self, audio_path: str) -> dict:
        y, _ = load_window(audio_path, self.params)
        mel = torch.from_numpy(log_mel(y, self.params)).unsqueeze(0).to(self.device)  # (1, n_mels, T)
        valence, arousal = self.model(self.pre(mel))[0].float().cpu().tolist()
        return {"valence": valence, "arousal": arousal,
                "valence_1_9": float(to_rating_scale(valence)), "arousal_1_9": float(to_rating_scale(arousal))}


def predict(audio_path: str, checkpoint: str, device: str = "cpu") -> dict:
    """Valence and arousal of ``audio_path`` on the [-1, 1] and the 1-9 scales."""
    return Predictor(checkpoint, device)(audio_path)


if __name__ == "__main__":  # python -m emovit.predict song.mp3 best_vit_model.pth
    import json
    import sys

    print(json.dumps(predict(sys.argv[1], sys.argv[2])))
