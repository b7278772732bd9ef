"""An exponential moving average of the weights, the model that a run validates and keeps.

Fine-tuning on a couple of thousand images ends wherever the last noisy steps left the weights:
two runs of one recipe and seed a day apart spread 1.9 and 7.1 points over the robustness
presentations (docs/RESULTS.md). An exponential moving average of the weights along the
trajectory (Polyak averaging; timm's ``ModelEmaV3``, as its train.py uses it) smooths those
last steps out; averaging weights along a run is also what SWAD (Cha et al., NeurIPS 2021)
found to hold better on other domains, with a dense uniform average.

Used through :class:`skinedge.train.TrainState` (``ema``) and :func:`skinedge.train.fit_epoch`::

    state.ema = WeightAverage(model, decay=0.995)
    fit_epoch(..., ema=state.ema)           # one update per optimizer step
    validate(state.eval_model, val_set, device="cpu")  # the average is validated and saved
"""

from __future__ import annotations

from typing import Any

from torch import nn

#: Decay warm-up of timm's ModelEmaV3: update n uses min(decay, 1 - n ** -power) (the first
#: copies the model), so the average starts as the model itself, not the ImageNet weights, and
#: lengthens as it trains. With 3/4 it reaches 0.99 after 464 updates (about 7.5 epochs of the
#: CPU phone recipe's 62 steps) and 0.9937 after its 868: for runs that short, any decay above
#: that gives the same average, which the warm-up sets.
WARMUP_POWER = 0.75


class WeightAverage:
    """The average of a model's weights (parameters and BatchNorm statistics) over its steps.

    It counts its own updates, and :meth:`state_dict` holds the count with the weights, so a
    resumed run continues the same warm-up and ends with the same average.

    Args:
        model: The unwrapped model under training (not its DDP wrapper); copied.
        decay: Weight of the old average at each step, once warmed up (0 < decay < 1).
    """

    def __init__(self, model: nn.Module, decay: float):
        from timm.utils import ModelEmaV3

        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self._ema = ModelEmaV3(model, decay=decay, use_warmup=True, warmup_power=WARMUP_POWER)
        self._ema.requires_grad_(False)
        self.steps = 0

    @property
    def module(self) -> nn.Module:
        """The averaged model (eval mode), shaped as the model it was made from."""
        return self._ema.module

    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s weights (the unwrapped model) in after a training step (also one
        that mixed precision skipped, as timm's train.py does)."""
        self.steps += 1
        self._ema.update(model, step=self.steps)

    def current_decay(self) -> float:
        """The decay the last update used."""
        return self._ema.get_decay(self.steps)

    def card_info(self) -> dict[str, Any]:
        """For the card: ``best/`` holds the average; ``last/`` the weights of the last step."""
        return {"decay": self.decay, "warmup_power": WARMUP_POWER,
                "best": "average", "last": "last step (the average is in trainer_state.pt)"}

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.module.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["weights"])
        self.steps = int(state["steps"])
