"""bench/gpu.py runs end to end (on CPU, tiny shape): its table, its JSON, and its packing check, which
refuses a model whose packed sequences see each other."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_benchmark_runs_on_a_tiny_model(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "gpu.json"
    assert bench.main(["--tiny", "--device", "cpu", "--seconds", "0.2", "--warmup", "1", "--json-out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| SFT padding-free packed: tokens/s |" in text and "| PPO: generation / scoring / update share |" in text
    figures = json.loads(out.read_text())
    assert figures["sft_packed_tokens_per_s"] > 0 and figures["ppo_samples_per_s"] > 0
    # packed sequences stay apart (bf16 noise), sequences run together do not
    assert figures["sft_packed_logit_diff"] < 0.1 * figures["sft_unpacked_logit_diff"]
    shares = [figures[f"ppo_{p}_share"] for p in ("generation", "scoring", "update")]
    assert abs(sum(shares) - 1) < 1e-6 and all(s > 0 for s in shares)


def test_without_a_gpu_it_says_so():
    import torch

    bench = load_bench()
    if not torch.cuda.is_available():
        assert bench.main(["--seconds", "0.1"]) == 2


def test_the_packing_check_catches_sequences_that_see_each_other(monkeypatch, capsys):
    bench = load_bench()
    import torch

    real = torch.cat

    def no_restart(tensors, *args, **kwargs):  # position ids running on across the packed sequences
        out = real(tensors, *args, **kwargs)
        if all(t.dtype == torch.long and t.dim() == 1 and t[0] == 0 for t in tensors) and len(tensors) == 3:
            return torch.arange(out.numel())
        return out

    monkeypatch.setattr(torch, "cat", no_restart)
    assert bench.main(["--tiny", "--device", "cpu", "--seconds", "0.05", "--warmup", "0"]) == 1
    assert "wrong figures: sft_packed_logit_diff" in capsys.readouterr().err
