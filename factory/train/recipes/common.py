"""What several recipes share: Adam at constant rates read from the model config, no state between
steps, the training labels' prior that bundles store for production, and the report vocabulary of
the training data, parsed once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:
    import torch

    from factory.data.text.vocab import Vocabulary
    from factory.train.data import DataPart, TrainingData


def label_prior(part: DataPart) -> list[dict[str, Any]]:
    """The training labels' combinations and their shares (the `prior` label policy of production)."""
    positives = np.nan_to_num(part.labels.numpy(), nan=0.0) == 1
    combos, counts = np.unique(positives, axis=0, return_counts=True)
    return [{"labels": [n for n, on in zip(part.label_names, combo) if on] or ["No Finding"],
             "share": float(c / counts.sum())} for combo, c in zip(combos, counts)]


class TrainingVocabulary:
    """Part of a recipe whose training data carry a report vocabulary (`data.info["vocabulary"]`)."""

    vocabulary: Vocabulary | None = None

    def _vocabulary(self, data: TrainingData) -> Vocabulary:
        if self.vocabulary is None:
            from factory.data.text.vocab import Vocabulary

            self.vocabulary = Vocabulary.from_json(data.info["vocabulary"], "vocabulary")
        return self.vocabulary


class ConstantAdamRecipe:
    """Part of a recipe whose model config gives Adam's `lr` per network name and one `betas`, kept
    constant (the papers give no schedule), and that keeps no state between steps. `build` sets
    `self.config`."""

    config: dict[str, Any] | None

    def optimizer_config(self, name: str) -> dict[str, Any]:
        config = self._config()
        return {"lr": float(config["lr"][name]), "betas": tuple(float(b) for b in config["betas"])}

    def learning_rates(self, step: int, total_steps: int) -> dict[str, float]:
        """Constant: the paper gives no schedule."""
        return {name: float(lr) for name, lr in self._config()["lr"].items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """No state between steps."""
        return {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        return None

    def _config(self) -> dict[str, Any]:
        if self.config is None:
            raise RuntimeError("call build(model_config) first")
        return self.config
