"""Checks that training and export agree with llama.cpp (run after a pool is made; needs the ``train`` extra).

    python -m models.training.verify --pool models/pool [--tasks sentiment,capital] [--json out.json]

1. The Hugging Face model built from the GGUF (``hf_base``) against llama.cpp on the same weights: the Q4_1
   file itself (llama.cpp quantizes activations to 8 bits inside Q4_1/Q8_0 matmuls, so only close), and an
   F32 copy of it written by llama.cpp's own ``llama_model_quantize`` (the same weights, no activation
   quantization: this is the tight check of the config, the Q/K un-permutation and RoPE).
2. Each adapter: HF + PEFT against llama.cpp + the GGUF LoRA on the F32 copy (checks the export, including
   the Q/K row permutation of the B matrices), and the change the adapter makes to the logits.
3. The shipped GGUF (written by ``logo_cpp.convert``) against llama.cpp's ``convert_lora_to_gguf.py`` (from
   llama-cpp-python's sdist, when ``--converter`` points at it) on the same PEFT directory: same tensors, bit
   for bit.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train.py

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from logo_cpp import tasks as task_meta

from .hf_base import base_gguf_path, load_base
from .prompting import Prompter
from .train import BUILD

DEFAULT_CONVERTER = "/work/team/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_lora_to_gguf.py"


def llama_f32_copy(src: Path, dst: Path) -> None:
    """Dequantizes a GGUF to F32 with llama.cpp's own quantizer (LLAMA_FTYPE_ALL_F32)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 0
    params.allow_requantize = True
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}) failed: {rc}")


class LlamaLogits:
    """All-position logits from llama.cpp (flash attention on, off AMX), optionally with one adapter."""

    def __init__(self, path: Path):
        import llama_cpp

        from logo_cpp._llama_cpp import avoid_amx

        avoid_amx()
        self.llm = llama_cpp.Llama(str(path), n_ctx=256, n_batch=256, logits_all=True, flash_attn=True,
                                   verbose=False, n_threads=2, n_threads_batch=2)

    def __call__(self, ids: list[int], adapter: Path | None = None) -> np.ndarray:
        import llama_cpp

        handle = None
        if adapter is not None:
            handle = llama_cpp.llama_adapter_lora_init(self.llm._model.model, str(adapter).encode())
            arr = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
            llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, arr, 1, (ctypes.c_float * 1)(1.0))
        else:
            llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, None, 0, None)
        self.llm.reset()
        self.llm._ctx.kv_cache_clear()
        self.llm.eval(ids)
        out = np.array(self.llm.scores[: len(ids)], dtype=np.float32)
        if handle is not None:
            llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, None, 0, None)
            llama_cpp.llama_adapter_lora_free(handle)
        return out


def _compare(a: np.ndarray, b: np.ndarray) -> dict:
    return {"max_abs_diff": float(np.abs(a - b).max()), "mean_abs_diff": float(np.abs(a - b).mean()),
            "max_abs_logit": float(np.abs(b).max()), "argmax_agree": float((a.argmax(-1) == b.argmax(-1)).mean())}


def compare_converter(peft_dir: Path, ours: Path, converter: Path, config, workdir: Path) -> dict:
    """Runs llama.cpp's converter on ``peft_dir`` (F16) and compares its tensors with our GGUF ``ours``."""
    import gguf

    base_dir = workdir / "hf-config"
    base_dir.mkdir(exist_ok=True)
    config.save_pretrained(str(base_dir))
    theirs = workdir / f"{peft_dir.name}-converter.gguf"
    env = dict(os.environ, PYTHONPATH=str(converter.parent / "gguf-py"))
    subprocess.run([sys.executable, str(converter), str(peft_dir), "--base", str(base_dir), "--outtype", "f16",
                    "--outfile", str(theirs)], check=True, env=env, capture_output=True)
    a = {t.name: t for t in gguf.GGUFReader(str(ours)).tensors}
    b = {t.name: t for t in gguf.GGUFReader(str(theirs)).tensors}
    same = set(a) == set(b) and all(
        a[n].tensor_type == b[n].tensor_type and list(a[n].shape) == list(b[n].shape)
        and np.array_equal(np.asarray(a[n].data), np.asarray(b[n].data)) for n in a)
    alpha = {k: float(gguf.GGUFReader(str(p)).fields["adapter.lora.alpha"].contents()) for k, p in (("ours", ours), ("converter", theirs))}
    return {"tensors": len(a), "identical": bool(same), "alpha": alpha}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=Path, default=Path("models/pool"))
    ap.add_argument("--tasks", default=None, help="comma-separated (default: every in-pool task)")
    ap.add_argument("--converter", type=Path, default=Path(DEFAULT_CONVERTER))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tasks = args.tasks.split(",") if args.tasks else list(task_meta.IN_POOL)
    base = base_gguf_path()
    prompter = Prompter(str(base))
    items = task_meta.load_eval(args.pool / "eval.jsonl")
    model, config = load_base(base)
    report: dict = {"base": {}, "adapters": {}, "converter": {}}

    def hf_logits(m, ids):
        with torch.no_grad():
            return m(torch.tensor([ids])).logits[0].float().numpy()

    probe_ids = prompter.tokenize(items[0]["prompt"]) + prompter.tokenize(prompter.chat_prompt(items[1]["messages"]))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        f32 = tmp / "base-f32.gguf"
        llama_f32_copy(base, f32)
        ref = hf_logits(model, probe_ids)
        report["base"]["q4_1"] = _compare(ref, LlamaLogits(base)(probe_ids))
        llama32 = LlamaLogits(f32)
        report["base"]["f32_copy"] = _compare(ref, llama32(probe_ids))
        print("base vs llama.cpp:", json.dumps(report["base"]))

        from peft import PeftModel

        for task in tasks:
            peft_dir = BUILD / args.pool.name / "peft" / task
            if not peft_dir.is_dir():
                peft_dir = args.pool / "peft" / task
            gguf_path = args.pool / "adapters" / f"{task}.gguf"
            item = next(it for it in items if it["task"] == task)
            ids = prompter.tokenize(item["prompt"]) + prompter.tokenize(" " + item["answer"])
            pm = PeftModel.from_pretrained(model, str(peft_dir))
            ours = hf_logits(pm, ids)
            model = pm.unload()
            theirs = llama32(ids, gguf_path)
            row = _compare(ours, theirs)
            row["adapter_effect_max_abs"] = float(np.abs(theirs - llama32(ids)).max())
            report["adapters"][task] = row
            print(f"{task}: HF+PEFT vs llama.cpp+GGUF (F32 base) {json.dumps(row)}", flush=True)
            if args.converter.is_file():
                report["converter"][task] = compare_converter(peft_dir, gguf_path, args.converter, config, tmp)
                print(f"{task}: vs convert_lora_to_gguf.py {json.dumps(report['converter'][task])}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
