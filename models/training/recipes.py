"""Training recipes (hyperparameters) by name; ``models/training/README.md`` records how each was chosen."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


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
    # the frozen base's weights and matmuls: "float32", or "bfloat16" (oneDNN's bf16 kernels on this CPU:
    # ~6x faster per matmul; the LoRA weights, optimizer and loss stay float32)
    compute_dtype: str = "float32"
    # per-task step counts that override `steps` ((task, steps) pairs): more steps where a measurement showed the
    # task needs them, so that the pool's CPU time goes where it buys accuracy
    steps_by_task: tuple[tuple[str, int], ...] = ()
    formats: dict = field(default_factory=lambda: {"raw": 0.5, "chat": 0.35, "chat_system": 0.15})

    def as_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        d["steps_by_task"] = dict(self.steps_by_task)
        return d

    def for_task(self, task: str) -> "Recipe":
        """This recipe with ``steps`` set to the task's own step count."""
        return replace(self, steps=dict(self.steps_by_task).get(task, self.steps))


RECIPES = {r.name: r for r in (
    # the first pool others built on: quick and possibly weak
    Recipe("pilot", rank=8, alpha=16, targets=("q_proj", "v_proj"), first_layer=18, steps=30, batch=8, lr=2e-3),
    # measured on a few tasks (README: "Choosing the recipe")
    Recipe("qv-l18-s90", rank=8, alpha=16, targets=("q_proj", "v_proj"), first_layer=18, steps=90, batch=8, lr=2e-3),
    Recipe("qv-l0-s90", rank=8, alpha=16, targets=("q_proj", "v_proj"), first_layer=0, steps=90, batch=8, lr=2e-3),
    Recipe("qv-l0-s48-bf16", rank=8, alpha=16, targets=("q_proj", "v_proj"), first_layer=0, steps=48, batch=8, lr=3e-3,
           compute_dtype="bfloat16"),
    # the shipped pool: qv-l0-s48-bf16's settings, 24 steps, 48 for the eight tasks on which the pilot's own
    # adapter stayed below 0.5 accuracy (mean of raw and chat, 12 held-out prompts)
    Recipe("final", rank=8, alpha=16, targets=("q_proj", "v_proj"), first_layer=0, steps=24, batch=8, lr=3e-3,
           compute_dtype="bfloat16", steps_by_task=tuple((t, 48) for t in (
               "parity", "antonym", "addition", "subtraction", "multiplication", "sort_words", "acronym", "capital"))),
)}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None
