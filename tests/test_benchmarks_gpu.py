"""The GPU benchmark script on a CPU at tiny size: every training variant that can run here, graceful skips, MFU
counted, the evaluation row with its checks."""

import json
import math

import torch

from benchmarks.evaluation import NEW_TOKENS, computed_tokens
from benchmarks.gpu import main, model_flops, per_token_parameters


def test_gpu_script_runs_on_cpu_at_tiny_size(tmp_path):
    output = tmp_path / "gpu.json"
    arguments = ["--device", "cpu", "--size", "tiny", "--compile_backend", "eager", "--repeats", "1", "--threads", "1"]
    assert main([*arguments, "--batch_size", "2", "--eval_instances", "2", "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    keys = [row["key"] for row in results["rows"]]
    assert keys == ["gpu-bf16", "gpu-attention", "gpu-compile", "gpu-padding-free", "gpu-mfu", "gpu-evaluation"]
    for record in results["rows"]:
        values = [record[figure][key] for figure in ("a", "b", "ratio") for key in ("median", "low", "high")]
        assert all(math.isfinite(value) and value > 0 for value in values), (record["key"], values)
        assert record["checks_passed"], record["notes"]
    assert results["device"].startswith("CPU")
    skipped = " ".join(results["skipped"])
    assert "flash_attention_2" in skipped and "max_memory_allocated" in skipped
    assert "graph break" in " ".join(next(r for r in results["rows"] if r["key"] == "gpu-compile")["notes"])


def test_model_flops_count_blocks_lm_head_and_attention(processor, model):
    batch = {"labels": torch.tensor([[-100, 5, 6, -100, -100]])}
    config = model.config.text_config
    blocks = per_token_parameters(model)
    assert 0 < blocks < sum(p.numel() for p in model.model.language_model.parameters())
    expected = (
        6 * blocks * 5
        + 6 * 2 * config.vocab_size * config.hidden_size
        + 12 * config.num_hidden_layers * config.hidden_size * (3**2 + 2**2)
    )
    assert model_flops(model, batch, [3, 2]) == expected


def test_tokens_computed_by_each_way_of_generating():
    alone = NEW_TOKENS * 10 + NEW_TOKENS * 20 + 2 * NEW_TOKENS * (NEW_TOKENS - 1) // 2
    assert computed_tokens([10, 20], None) == alone
    assert computed_tokens([10, 20], 2) == 2 * (20 + NEW_TOKENS - 1)
    assert computed_tokens([10, 20], 1) == (10 + NEW_TOKENS - 1) + (20 + NEW_TOKENS - 1)
