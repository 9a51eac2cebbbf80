"""Trains one task's LoRA adapter on SmolLM2-135M-Instruct (PyTorch on CPU, PEFT), saves the PEFT directory
and writes the GGUF LoRA (``logo_cpp.convert``).

    python -m models.training.train --task sentiment --recipe final --seed 0 --out models/pool
        -> models/training/build/<pool>/peft/sentiment/   (PEFT's save_pretrained: config + safetensors)
           models/training/build/<pool>/logs/sentiment.json  (recipe, seed, loss curve, seconds)
           <out>/adapters/sentiment.gguf                  (F16 GGUF LoRA for llama.cpp / logo-cpp)

Each example is drawn from the task's training stream (never a held-out input) and put in one of the prompt
formats of ``prompting.FORMATS`` with the recipe's probabilities; the loss is the mean cross-entropy of the
completion tokens (answer + end-of-turn) only. Deterministic for a given seed on a given machine.
"""

from __future__ import annotations

import os

# Without this, OpenMP threads spin while they wait; on a CPU shared with other jobs that made a 2-thread
# forward pass 10x slower than a 1-thread one here (27 s vs 2.8 s). Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import random
import resource
import time
import zlib
from pathlib import Path

from .dataset import train_examples
from .prompting import Prompter
from .recipes import Recipe, get_recipe

BUILD = Path(__file__).resolve().parent / "build"


def make_batches(task: str, recipe: Recipe, seed: int, prompter: Prompter):
    """``recipe.steps`` batches of ``prompting.Encoded`` examples, formats drawn with the recipe's mix."""
    stream = train_examples(task, seed)
    rng = random.Random(f"format:{task}:{seed}")
    formats, weights = zip(*recipe.formats.items())
    batches = []
    for _ in range(recipe.steps):
        batch = []
        for _ in range(recipe.batch):
            ex = next(stream)
            fmt = rng.choices(formats, weights)[0]
            batch.append(prompter.encode(ex.text, ex.answer, fmt))
        batches.append(batch)
    return batches


def completion_loss(model, batch, pad_id: int):
    """Mean cross-entropy of the completion tokens of ``batch`` (right-padded; the output head runs only
    at the positions that predict a completion token, which saves most of the 49152-way matmul)."""
    import torch

    n = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    rows, cols, targets = [], [], []
    for b, e in enumerate(batch):
        ids[b, : len(e.ids)] = torch.tensor(e.ids)
        for t in range(e.n_prompt, len(e.ids)):
            rows.append(b)
            cols.append(t - 1)          # the hidden state at t-1 predicts token t
            targets.append(e.ids[t])
    # right padding only follows the real tokens, so causal attention needs no mask
    hidden = model.model(input_ids=ids).last_hidden_state           # (B, T, n_embd)
    logits = model.lm_head(hidden[torch.tensor(rows), torch.tensor(cols)])   # (n_completion_tokens, n_vocab)
    return torch.nn.functional.cross_entropy(logits.float(), torch.tensor(targets))


def lr_at(step: int, recipe: Recipe) -> float:
    warm = max(1, int(recipe.warmup * recipe.steps))
    if step < warm:
        return recipe.lr * (step + 1) / warm
    progress = (step - warm) / max(1, recipe.steps - warm)
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(task: str, recipe: Recipe, seed: int, out: Path, pool_name: str, threads: int = 2, log=print) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from logo_cpp.convert import convert

    from .hf_base import base_gguf_path, load_base

    recipe = recipe.for_task(task)
    torch.set_num_threads(threads)
    torch.manual_seed(seed * 1000003 + zlib.crc32(task.encode()))
    t0 = time.time()
    base_path = base_gguf_path()
    prompter = Prompter(str(base_path))
    model, config = load_base(base_path)
    config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"  # recorded as base_model_name_or_path
    if recipe.first_layer >= config.num_hidden_layers or "q_proj" not in recipe.targets:
        raise ValueError("the recipe must adapt q_proj of the last layer: LoGo probes it")
    lora = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, target_modules=list(recipe.targets),
                      layers_to_transform=list(range(recipe.first_layer, config.num_hidden_layers)),
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    if recipe.compute_dtype != "float32":
        model.to(getattr(torch, recipe.compute_dtype))
    # PEFT keeps the adapter's own weights float32 over a bf16 base (autocast_adapter_dtype)
    peft_model = get_peft_model(model, lora, autocast_adapter_dtype=True)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    batches = make_batches(task, recipe, seed, prompter)
    t_load = time.time() - t0
    losses = []
    peft_model.train()
    inner = peft_model.base_model.model  # the LlamaForCausalLM with LoRA layers injected
    for step, batch in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe)
        loss = completion_loss(inner, batch, prompter.eos)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(float(loss), 4))
        if step % 10 == 0 or step == recipe.steps - 1:
            log(f"[{task}] step {step + 1}/{recipe.steps} loss {losses[-1]:.4f} ({time.time() - t0:.0f} s)")
    t_train = time.time() - t0 - t_load
    usage = resource.getrusage(resource.RUSAGE_SELF)

    build = BUILD / pool_name
    peft_dir = build / "peft" / task
    peft_model.save_pretrained(str(peft_dir))
    gguf_path = out / "adapters" / f"{task}.gguf"
    gguf_path.parent.mkdir(parents=True, exist_ok=True)
    # logo-cpp's converter: the tensors llama.cpp's convert_lora_to_gguf.py writes (Q/K B rows permuted), F16
    # (exact on quantized bases in llama.cpp today), checked against the base and loaded back
    convert(peft_dir, gguf_path, base_path, outtype="f16", task_name=task, force=True)  # retraining replaces it
    record = {"task": task, "seed": seed, "recipe": recipe.as_dict(), "losses": losses,
              "seconds_load": round(t_load, 1), "seconds_train": round(t_train, 1),
              "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
              "torch": torch.__version__, "threads": threads}
    (build / "logs").mkdir(parents=True, exist_ok=True)
    (build / "logs" / f"{task}.json").write_text(json.dumps(record, indent=1))
    log(f"[{task}] wrote {gguf_path} and {peft_dir} ({t_train:.0f} s training)")
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True)
    ap.add_argument("--recipe", default="final")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("models/pool"))
    ap.add_argument("--pool-name", default=None, help="build/<name>/ for PEFT dirs and logs (default: out's name)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    train(args.task, get_recipe(args.recipe), args.seed, args.out, args.pool_name or args.out.name, args.threads)


if __name__ == "__main__":
    main()
