"""Character-level language models on Shakespeare at an equal wall-clock budget: a plain-PyTorch
reference of nanoGPT's small CPU configuration against layerwise's transformer, rwkv, mingru and lstm.

Data: every ``.txt`` file of ``../shared/data/shakespeare`` joined in sorted name order by the
``text`` source (``layerwise.data.text.read_text``); the last 10% of the characters is held back.
All models share the character vocabulary fitted on the first 90% (the source's tokenizer).

Reference (Karpathy's nanoGPT, ``config/train_shakespeare_char.py`` with the README's CPU settings):
GPT-2 style, 4 layers, 4 heads, width 128, context 64, batch 12, no dropout, no biases, tied
embedding, AdamW (lr 1e-3, betas 0.9/0.99, weight decay 0.1 on matrices), 100 warmup steps and a
cosine decay to 1e-4, gradient clipping at 1, batches at random offsets of the training text. Its
decay is planned, like the layerwise runs', to the number of steps a short timing probe says fit
the budget.

Layerwise runs go through ``layerwise.train`` with ``train.max_time`` = the budget (training time
only; the schedule's length ``max_steps`` comes from the same timing probe).

Validation loss: nats per character over the WHOLE held-back text (``--val-chars N``: its first N
characters, for quick trials), identical for every model: each model reads it in consecutive
windows of its own context length (the last one shorter) and every character after the first is
predicted exactly once.

    python benchmarks/charlm.py                       # 300 s per model, 5 models: ~30 minutes
    python benchmarks/charlm.py --budget 60 --only mingru
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import layerwise
from layerwise.data.spec import DataSpec
from layerwise.data.text import TextPreprocessor, read_text
from layerwise.models import FAMILIES, build_model
from layerwise.ops.decoding import generate_ids, sample_next, start_ids

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "shakespeare"
HOLD_OUT = 0.1
SAMPLE_CHARS = 300
SAMPLE_TEMPERATURE = 0.8

# layerwise configurations for a few CPU minutes (2 cores): warmup + cosine planned to the budget,
# AdamW with nanoGPT's betas, gradient clipping at 1; the context is each model's block_size. Trials
# at 120 s (50,000 validation characters): a 1-layer LSTM of 512 units runs ~2x the tokens/s of the
# others (fused CPU kernel) and beat a 2-layer one (1.49 vs 1.67); batches of 8 rather than 16-32
# (more steps) helped the transformer (1.69 at lr 3e-3 vs 1.79) and mingru (1.63 vs 1.68)
COMMON_TRAIN = {"optimizer": "adamw", "betas": [0.9, 0.99], "grad_clip": 1.0, "epochs": 1000, "progress": False,
                "device": "cpu", "log_every": 100}
LAYERWISE = {
    "transformer": {"block_size": 128, "batch_size": 8, "lr": 3e-3,
                    "model": {"family": "transformer", "causal": True, "pooling": "last", "width": 128, "heads": 4,
                              "layers": 4, "max_len": 128, "dropout": 0.0}},
    "rwkv": {"block_size": 64, "batch_size": 16, "lr": 2e-3,
             "model": {"family": "rwkv", "width": 128, "layers": 3, "ffn_mult": 4, "dropout": 0.0}},
    "mingru": {"block_size": 128, "batch_size": 8, "lr": 3e-3,
               "model": {"family": "mingru", "hidden": 256, "layers": 3, "mlp_ratio": 2.0, "dropout": 0.0}},
    "lstm": {"block_size": 128, "batch_size": 32, "lr": 4e-3,
             "model": {"family": "lstm", "embedding": 64, "hidden": 512, "layers": 1}},
}


# -- the reference: nanoGPT's model, written out ---------------------------------------------------


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(width, 3 * width, bias=False)
        self.c_proj = nn.Linear(width, width, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class GPTBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, bias=False)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, bias=False)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width, bias=False), nn.GELU(),
                                 nn.Linear(4 * width, width, bias=False))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """nanoGPT's GPT: token + learned position embeddings, pre-LN blocks, tied output layer."""

    def __init__(self, vocab: int, context: int = 64, width: int = 128, heads: int = 4, layers: int = 4):
        super().__init__()
        self.context = context
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(GPTBlock(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width, bias=False)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith(("attn.c_proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * layers))

    def forward(self, idx):
        h = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            h = block(h)
        return self.lm_head(self.ln_f(h))  # (B, T, V)


def nanogpt_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))


def nanogpt_lr(step: int, planned: int, lr: float = 1e-3, min_lr: float = 1e-4, warmup: int = 100) -> float:
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    ratio = min(1.0, (step - warmup) / max(1, planned - warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def random_batch(ids: torch.Tensor, context: int, batch: int, gen: torch.Generator):
    """nanoGPT's get_batch: ``batch`` windows at random offsets of the training text."""
    starts = torch.randint(len(ids) - context - 1, (batch,), generator=gen)
    x = torch.stack([ids[s:s + context] for s in starts.tolist()])
    y = torch.stack([ids[s + 1:s + 1 + context] for s in starts.tolist()])
    return x, y


def train_reference(train_ids: torch.Tensor, vocab: int, budget: float, seed: int = 1337):
    torch.manual_seed(seed)
    model = GPT(vocab)
    gen = torch.Generator().manual_seed(seed)
    batch, lr = 12, 1e-3
    sec_per_step = probe(lambda: GPT(vocab), *random_batch(train_ids, 64, batch, gen), lr)
    planned = max(200, int(budget / sec_per_step))
    opt = nanogpt_optimizer(model, lr)
    model.train()
    steps, spent = 0, 0.0
    while spent < budget:
        started = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = nanogpt_lr(steps, planned)
        x, y = random_batch(train_ids, 64, batch, gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
        spent += time.perf_counter() - started
    model.eval()
    return model, model, {"steps": steps, "planned_steps": planned, "train_s": spent, "context": 64,
                              "tokens_per_s": steps * batch * 64 / spent,
                              "parameters": sum(p.numel() for p in model.parameters())}


@torch.no_grad()
def reference_sample(model: GPT, prompt: list[int], n: int, seed: int = 0) -> list[int]:
    """nanoGPT's generate: the whole (cropped) context recomputed for every new token."""
    gen = torch.Generator().manual_seed(seed)
    ids = list(prompt)
    for _ in range(n):
        context = torch.tensor([ids[-model.context:]])
        ids.append(sample_next(model(context)[0, -1], SAMPLE_TEMPERATURE, None, gen))
    return ids[len(prompt):]


# -- shared measurement ----------------------------------------------------------------------------


def probe(make_model, x: torch.Tensor, y: torch.Tensor, lr: float, seconds: float = 4.0) -> float:
    """Seconds per training step of a fresh model on one batch: 3 warm-up steps, then as many as fit
    in ``seconds`` (a few steps alone overestimate: the first calls set kernels up)."""
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    forward = getattr(model, "forward_sequence", None)
    steps, started = -3, 0.0
    while steps <= 0 or time.perf_counter() - started < seconds:
        if steps == 0:
            started = time.perf_counter()
        logits = model.forward_head(forward(x)) if forward else model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    return (time.perf_counter() - started) / steps


@torch.no_grad()
def validation_loss(logits_fn, ids: torch.Tensor, context: int, batch: int = 64) -> float:
    """Mean NLL (nats per character) of every character of ``ids`` after the first, read in consecutive
    windows of ``context`` characters."""
    total, count = 0.0, 0
    full = (len(ids) - 1) // context
    x = ids[: full * context].view(full, context)
    y = ids[1: full * context + 1].view(full, context)
    for lo in range(0, full, batch):
        logits = logits_fn(x[lo:lo + batch])
        total += float(F.cross_entropy(logits.flatten(0, 1), y[lo:lo + batch].flatten(), reduction="sum"))
        count += y[lo:lo + batch].numel()
    tail = len(ids) - 1 - full * context
    if tail:
        logits = logits_fn(ids[full * context: full * context + tail][None])
        total += float(F.cross_entropy(logits[0], ids[full * context + 1:], reduction="sum"))
        count += tail
    assert count == len(ids) - 1
    return total / count


def train_layerwise(name: str, budget: float, runs_dir: Path, data: Path, pre: TextPreprocessor,
                    train_ids: torch.Tensor):
    setup = LAYERWISE[name]
    T, B = setup["block_size"], setup["batch_size"]
    spec = DataSpec(kind="tokens", input_shape=(T,), target="token", vocab_size=pre.vocab_size)
    model_cfg = FAMILIES.get(setup["model"]["family"]).Config(**setup["model"])
    gen = torch.Generator().manual_seed(0)
    sec_per_step = probe(lambda: build_model(model_cfg, spec), *random_batch(train_ids, T, B, gen), setup["lr"])
    planned = max(100, int(budget / sec_per_step))
    config = {
        "name": f"charlm-{name}",
        "data": {"source": "text", "path": str(data), "tokenizer": "char", "block_size": T,
                 "val_fraction": 0.0, "test_fraction": HOLD_OUT},
        "model": setup["model"],
        "train": {**COMMON_TRAIN, "batch_size": B, "lr": setup["lr"], "max_time": budget, "max_steps": planned,
                  "scheduler": {"name": "warmup_cosine", "warmup_fraction": 0.03, "min_lr": setup["lr"] / 10}},
    }
    run = layerwise.train(config, runs_dir=runs_dir, quiet=True)
    history = run.history
    train_s = sum(float(row["time_s"]) for row in history)
    steps = int(history[-1]["step"])
    model = run.model.eval()
    return model, lambda x: model.forward_head(model.forward_sequence(x)), {
        "steps": steps, "planned_steps": planned, "train_s": train_s, "context": T,
        "tokens_per_s": steps * B * T / max(train_s, 1e-9), "parameters": sum(p.numel() for p in model.parameters()),
        "run": str(run.path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds per model")
    parser.add_argument("--only", choices=["reference", *LAYERWISE], action="append",
                        help="run only this model (repeatable)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of .txt files (default: %(default)s)")
    parser.add_argument("--val-chars", type=int, default=None,
                        help="score only the first N held-back characters (quick trials; default: all of them)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data.resolve()
    text = read_text(data)
    cut = len(text) - round(len(text) * HOLD_OUT)  # the text source's chronological split
    pre = TextPreprocessor("char").fit(text[:cut])
    train_ids = torch.tensor(pre.encode(text[:cut]), dtype=torch.long)
    val_ids = torch.tensor(pre.encode(text[cut:]), dtype=torch.long)[: args.val_chars]
    print(f"{data}: {len(text):,} characters, vocabulary {pre.vocab_size}; validation: the last "
          f"{len(val_ids):,} characters; budget {args.budget:.0f} s per model, {torch.get_num_threads()} threads",
          flush=True)

    names = args.only or ["reference", *LAYERWISE]
    results = []
    with tempfile.TemporaryDirectory(prefix="layerwise-charlm-") as tmp:
        for name in names:
            if name == "reference":
                model, logits_fn, info = train_reference(train_ids, pre.vocab_size, args.budget)
                sample = reference_sample(model, start_ids(pre, ""), SAMPLE_CHARS)
            else:
                model, logits_fn, info = train_layerwise(name, args.budget, Path(tmp), data, pre, train_ids)
                gen = torch.Generator().manual_seed(0)
                sample = generate_ids(model, start_ids(pre, ""), SAMPLE_CHARS, SAMPLE_TEMPERATURE, generator=gen)
            started = time.perf_counter()
            info["val_loss"] = validation_loss(logits_fn, val_ids, info["context"])
            info["eval_s"] = time.perf_counter() - started
            info.pop("run", None)
            results.append({"model": name, **info, "sample": pre.decode(sample)})
            print(f"\n== {name}: val {info['val_loss']:.4f} nats/char ({info['val_loss'] / math.log(2):.3f} bits), "
                  f"{info['tokens_per_s']:,.0f} tokens/s, {info['steps']} steps of {info['planned_steps']} planned, "
                  f"{info['parameters'] / 1e6:.2f}M parameters, context {info['context']}", flush=True)
            print(results[-1]["sample"], flush=True)

    print("\nmodel        val nats/char   tokens/s    steps   params")
    for r in results:
        print(f"{r['model']:<12} {r['val_loss']:>13.4f} {r['tokens_per_s']:>10,.0f} {r['steps']:>8} "
              f"{r['parameters'] / 1e6:>7.2f}M")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
