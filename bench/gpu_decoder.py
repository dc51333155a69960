"""GPU: bf16 logit agreement with transformers and generation tokens/s, ~1B configs, random weights.

For each config (Llama-3.2-1B, Pythia-1B, falcon-rw-1B shapes), build a random-weight model with
transformers, save it, load it with karma, then in one process:
  - logits on a [4, 512] random batch (and a left-padded one): karma bf16 vs transformers bf16, and
    both vs transformers fp32, so the bf16 rounding noise itself is the yardstick;
  - sampling 128 new tokens after a 64-token prompt at batch 1 and 32 (no EOS stop): karma's
    generate (eager, and with the decode step replayed as a CUDA graph) vs
    transformers' generate; plus the batch-1 roofline = HBM bandwidth / bytes of weights per token.
Prints one JSON object per config.

    PYTHONPATH=. python bench/gpu_decoder.py [--configs llama-3.2-1b pythia-1b falcon-rw-1b]
"""

import argparse
import json
import tempfile
import time

import torch
import transformers

import karma
from timing import cuda_median_seconds

CONFIGS = {
    "llama-3.2-1b": lambda: transformers.LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5, max_position_embeddings=131072, tie_word_embeddings=True,
        rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=128001),
    "pythia-1b": lambda: transformers.GPTNeoXConfig(
        vocab_size=50304, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=8,
        rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0),
    "falcon-rw-1b": lambda: transformers.FalconConfig(
        vocab_size=50304, hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, alibi=True,
        multi_query=False, parallel_attn=False, bias=True, new_decoder_architecture=False,
        bos_token_id=50256, eos_token_id=50256),
}
HBM_BYTES_PER_S = 3.0e12  # measured device-to-device copy on this workplace's H100 (cudaMemcpy D2D)


def diff(a, b, mask=None):
    d = (a.float() - b.float()).abs()
    d = d[mask] if mask is not None else d
    return {"max": d.max().item(), "mean": d.mean().item()}


def bench(name, make_config, args):
    torch.manual_seed(0)
    with torch.device("cuda"):
        ref32 = transformers.AutoModelForCausalLM.from_config(make_config(), attn_implementation="sdpa",
                                                              dtype=torch.float32).eval()
    ref16 = transformers.AutoModelForCausalLM.from_config(make_config(), attn_implementation="sdpa",
                                                          dtype=torch.bfloat16).cuda().eval()
    ref16.load_state_dict({k: v.bfloat16() for k, v in ref32.state_dict().items()})
    with tempfile.TemporaryDirectory() as directory:
        ref16.save_pretrained(directory)
        start = time.perf_counter()
        ours = karma.load_model(directory, dtype=torch.bfloat16, device="cuda")
        load_s = time.perf_counter() - start
    vocab = ours.config.vocab_size
    out = {"bench": "gpu_decoder", "config": name, "device": torch.cuda.get_device_name(),
           "torch": torch.__version__, "transformers": transformers.__version__, "load_s": round(load_s, 2),
           "params": sum(p.numel() for p in ours.parameters())}

    ids = torch.randint(0, vocab, (4, 512), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :100] = 0
    mask[3, :300] = 0
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        for label, m, kw in (("unpadded", None, {}), ("left_padded", mask, {"position_ids": positions})):
            r32 = ref32(ids, attention_mask=m, **kw).logits
            r16 = ref16(ids, attention_mask=m, **kw).logits
            o16 = ours(ids, m)
            real = None if m is None else m.bool()
            out[f"logits_{label}"] = {"karma_bf16_vs_hf_bf16": diff(o16, r16, real),
                                      "karma_bf16_vs_hf_fp32": diff(o16, r32, real),
                                      "hf_bf16_vs_hf_fp32": diff(r16, r32, real),
                                      "logit_std": r32.std().item()}
        del r32, r16, o16
    del ref32
    torch.cuda.empty_cache()

    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    out["b1_roofline_tok_s"] = round(HBM_BYTES_PER_S / weight_bytes)
    for batch in (1, 32):
        prompt = torch.randint(0, vocab, (batch, args.prompt), device="cuda")
        n = args.new_tokens
        hf_s = cuda_median_seconds(lambda: ref16.generate(prompt, do_sample=True, max_new_tokens=n, min_new_tokens=n,
                                            pad_token_id=0, top_k=0, top_p=1.0))
        ours_s = cuda_median_seconds(lambda: karma.generate(ours, prompt, max_new_tokens=n, temperature=1.0, stop_ids=[],
                                              cuda_graph=False))
        graph_s = cuda_median_seconds(lambda: karma.generate(ours, prompt, max_new_tokens=n, temperature=1.0, stop_ids=[],
                                               cuda_graph=True))
        out[f"b{batch}"] = {"transformers_tok_s": round(batch * n / hf_s), "karma_tok_s": round(batch * n / ours_s),
                            "karma_cuda_graph_tok_s": round(batch * n / graph_s),
                            "speedup_eager": round(hf_s / ours_s, 2), "speedup_cuda_graph": round(hf_s / graph_s, 2)}
    # the graphed step must give the eager step's greedy tokens (bf16: equal up to kernel rounding)
    prompt = torch.randint(0, vocab, (4, args.prompt), device="cuda")
    eager = karma.generate(ours, prompt, max_new_tokens=32, temperature=0, stop_ids=[], cuda_graph=False).tokens
    graphed = karma.generate(ours, prompt, max_new_tokens=32, temperature=0, stop_ids=[], cuda_graph=True).tokens
    out["greedy_graph_equals_eager_frac"] = (eager == graphed).float().mean().item()
    out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens for the generation benchmark")
    parser.add_argument("--new-tokens", type=int, default=128, help="sampled tokens per sequence")
    args = parser.parse_args()
    for name in args.configs:
        print(json.dumps(bench(name, CONFIGS[name], args)), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
