"""XRAY-GAN (Chen & Wan, "XRAY-GAN: Conditional and Unconditional Score-guided GAN for Chest X-ray
Pathology Classification"): two generators of labelled chest X-ray images without reports.

- `cgan`: the label-conditioned DCGAN of the paper's §4.1 (model `xraygan-cgan`).
- `ucgan`: the unconditional DCGAN guided by a shared classifier through three scores, whose images
  are pseudo-labelled by that classifier (§4.2; model `xraygan-ucgan`).
- `networks`: the DCGAN layers both use, the classifier C and the style-transfer network.
- `config`: the config checks both share.
- `scores`: the paper's scores (eq. 7-10) as pure functions of the classifier's outputs.
"""
