"""Training recipes (hyperparameters) by name; ``models/training/README.md`` records how each was chosen."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Recipe:
    name: str
    rank: int
    alpha: float
    targets: tuple[str, ...]            # PEFT module names (q_proj, k_proj, v_proj, o_proj, gate_proj, ...)
    first_layer: int                    # LoRA on layers first_layer..n_layer-1 (the probe needs the last)
    steps: int
    batch: int
    lr: float
    warmup: float = 0.1                 # fraction of steps with a linear warm-up, then cosine decay to 0
    weight_decay: float = 0.0
    formats: dict = field(default_factory=lambda: {"raw": 0.5, "chat": 0.35, "chat_system": 0.15})

    def as_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d


RECIPES = {r.name: r for r in (
    # the first pool others built on: quick and possibly weak
    Recipe("pilot", rank=8, alpha=16, targets=("q_proj", "v_proj"), first_layer=18, steps=30, batch=8, lr=2e-3),
    # measured on a few tasks (README: "Choosing the recipe")
    Recipe("qv-l18-s90", rank=8, alpha=16, targets=("q_proj", "v_proj"), first_layer=18, steps=90, batch=8, lr=2e-3),
    Recipe("qv-l0-s90", rank=8, alpha=16, targets=("q_proj", "v_proj"), first_layer=0, steps=90, batch=8, lr=2e-3),
)}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None
