"""megatron-core's stock GPTModel, our tensor-parallel Llama and HF's Llama on the same weights: max |delta
logits| in fp32 (TF32 off) and under bf16 autocast, in a world of one of its own (tests/gpu/workers.py).

Under CUDA: paper-41m, 2 x 512 tokens, all three models. In the CPU setting (cpu-0.3m, 2 x 64): our TP Llama
and HF only; the stock GPTModel's attention allocates on the GPU.
"""

from __future__ import annotations

import pytest

from tests.gpu import support

FP32_LOGITS_ATOL = 1e-4  # fp32 with TF32 off differs only in summation order
BF16_LOGITS_RTOL = 0.05  # bf16 autocast: max |delta| over max |logit|; bf16 keeps 8 bits of mantissa
PAIRS = ("local_vs_hf", "stock_vs_hf", "stock_vs_local")

pytestmark = [pytest.mark.gpu, support.runs_here()]


def test_logits_of_stock_gptmodel_tp_llama_and_hf_agree(gpu: support.GpuCheck, record) -> None:
    gpu.need(30)
    s = gpu.settings
    spec = {"size": s.logits_size, "vocab": s.vocab, "seq": s.logits_seq, "stock": gpu.cuda}
    r = gpu.worker("logits", "logits", spec, timeout=180)
    record.figures(**r)
    models = "stock GPTModel, our TP Llama, HF" if gpu.cuda else "our TP Llama, HF"
    record.summary(f"{s.logits_size}, seq {s.logits_seq}: max |delta logits| of {models} on the same weights")
    compared = {}
    for precision in ("fp32", "bf16"):
        got = r[precision]
        bound = FP32_LOGITS_ATOL if precision == "fp32" else BF16_LOGITS_RTOL * got["max_abs_logit"]
        pairs = compared[precision] = [k for k in PAIRS if k in got]
        for pair in pairs:
            record.check(f"{precision} {pair}", got[pair], bound, got[pair] <= bound)
        text = ", ".join(f"{k.replace('_vs_', ' vs ')} {got[k]:.1e}" for k in pairs)
        record.row(precision, f"{text} (bound {bound:.1e})")
    if not gpu.cuda:
        record.skip("stock GPTModel", f"{gpu.needs_cuda}: its attention allocates on the GPU")
    record.assert_checks()
    want = list(PAIRS) if gpu.cuda else ["local_vs_hf"]  # the stock GPTModel needs CUDA
    assert compared == {"fp32": want, "bf16": want}, compared
