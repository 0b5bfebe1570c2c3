"""Justify (Spinks & Moens, "Justifying Diagnosis Decisions by Deep Neural Networks"): a diagnosis
for a chest X-ray, a caption that justifies it, and an X-ray of the nearest alternative diagnosis.

- `config`: the model config (the paper's sizes as defaults) and its checks.
- `arae`: the adversarially regularised autoencoder over diagnosis + caption (§3.1): text encoder to
  a continuous code, decoder whose first output is the diagnosis, code generator and WGAN critic;
  and how reports become captions.
- `stackgan`: the two-stage text-to-image GAN conditioned on a representation (code + noise, §3.2).
- `inverse`: the inverse mapping I from an image to a representation (§3.3).
- `counterfactual`: M, the L-BFGS search for the nearest representation of another diagnosis (§3.4).
- `model`: the networks by name, the functions production and explanation call (`diagnose`,
  `justify_caption`, `counterfactual`, `generate_from_captions`) and `SPEC`.
"""
