"""Training-step time of minGRU / minLSTM (log-space parallel scan) vs torch.nn.GRU / LSTM and vs a
step-by-step loop of the minGRU cell.

One layer each, input and hidden width 128, batch 16; a step is forward + ``out.square().mean()``
+ backward. Each model runs ``--warmup`` untimed steps per length, then the best and median over ``--repeats``
timed rounds (each round times one step of every model, interleaved) are printed in
ms per step; "x mingru scan" is a row's best time over the parallel minGRU's (above 1: the scan is
that many times faster). The best time is the one to compare on a shared, noisy machine.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` during one step (above what was allocated
before). On the CPU there is no allocator counter, so the column is the bytes of the tensors
autograd saves for the backward pass (summed by ``torch.autograd.graph.saved_tensors_hooks``):
the activation memory that grows with sequence length, not the process's peak.

    python benchmarks/scan.py                          # CPU, and CUDA when present
    python benchmarks/scan.py --lengths 64 512 --repeats 3 --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from layerwise.models.mingru import MinGRUCell
from layerwise.models.minlstm import MinLSTMCell

WIDTH, BATCH = 128, 16


class Parallel(nn.Module):
    """A minimal RNN cell over the whole sequence at once (the log-space scan)."""

    def __init__(self, cell: nn.Module):
        super().__init__()
        self.cell = cell

    def forward(self, x):
        return self.cell(x)[0]


class Stepped(nn.Module):
    """The same cell, one position at a time: what training looks like without the scan."""

    def __init__(self, cell: nn.Module):
        super().__init__()
        self.cell = cell

    def forward(self, x):
        h = x.new_zeros(x.shape[0], WIDTH)
        outs = []
        for t in range(x.shape[1]):
            out, h = self.cell.step(x[:, t], h)
            outs.append(out)
        return torch.stack(outs, dim=1)


class Torch(nn.Module):
    """torch.nn.GRU / LSTM (cuDNN on CUDA, the fused ATen kernels on the CPU)."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "mingru (scan)": Parallel(MinGRUCell(WIDTH, WIDTH)),
        "minlstm (scan)": Parallel(MinLSTMCell(WIDTH, WIDTH)),
        "mingru (step loop)": Stepped(MinGRUCell(WIDTH, WIDTH)),
        "torch.nn.GRU": Torch(nn.GRU(WIDTH, WIDTH, batch_first=True)),
        "torch.nn.LSTM": Torch(nn.LSTM(WIDTH, WIDTH, batch_first=True)),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step(model: nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()


def memory(model: nn.Module, x: torch.Tensor, device: torch.device) -> int:
    """Bytes: the CUDA peak of one step, or on the CPU the tensors saved for backward."""
    if device.type == "cuda":
        model.zero_grad(set_to_none=True)
        sync(device)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        train_step(model, x)
        sync(device)
        return torch.cuda.max_memory_allocated() - before
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        # count each storage once: many ops save views of the same buffer
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x).square().mean()
    out.backward()
    return sum(saved.values())


def bench(device: torch.device, lengths: list[int], repeats: int, warmup: int) -> None:
    print(f"\n== {device.type}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else
                                    f" ({torch.get_num_threads()} threads)")
          + f": batch {BATCH}, width {WIDTH}, 1 layer, ms per training step over {repeats} interleaved rounds")
    mem_how = "peak CUDA allocation" if device.type == "cuda" else "autograd-saved tensor bytes"
    print(f"{'length':>6}  {'model':<20} {'best ms':>9} {'median':>9} {'x mingru scan':>16} {'memory MiB':>11}  ({mem_how})")
    for length in lengths:
        x = torch.randn(BATCH, length, WIDTH, device=device)
        built = models()
        for model in built.values():
            model.to(device)
            for _ in range(warmup):
                train_step(model, x)
        times: dict[str, list[float]] = {name: [] for name in built}
        for _ in range(repeats):  # rounds over all models, so a busy moment on a shared machine hits all alike
            for name, model in built.items():
                sync(device)
                start = time.perf_counter()
                train_step(model, x)
                sync(device)
                times[name].append((time.perf_counter() - start) * 1000)
        rows = {name: (min(times[name]), statistics.median(times[name]), memory(model, x, device) / 2**20)
                for name, model in built.items()}
        base = rows["mingru (scan)"][0]
        for name, (best, median, mib) in rows.items():
            print(f"{length:>6}  {name:<20} {best:>9.2f} {median:>9.2f} {best / base:>16.2f} {mib:>11.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 512, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    args = parser.parse_args()
    devices = []
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for device in devices:
        bench(device, args.lengths, args.repeats, args.warmup)


if __name__ == "__main__":
    main()
