"""GPU: reward-model training step throughput and MFU at Llama-3.2-1B scale, random weights.

karma's RewardModel (decoder + MLP head, fp32 master weights, bf16 autocast, AdamW, as train_rm.py
runs on one GPU) against transformers' LlamaForSequenceClassification with the same config and
precision, in the same process: karma, transformers, karma again (the best karma run is reported;
each model is freed before the next is built). Batch 16 x 1024 tokens by default (the paper's batch
size). MFU = flops_per_token * tokens/s / peak, flops_per_token = 6 N + 12 L H d T (Kaplan et al. 2020; Chowdhery et al. 2022, PaLM appendix B),
N = non-embedding parameters. Prints one JSON object.

    PYTHONPATH=. python bench/rm_train_gpu.py [--batch 16] [--seq 1024] [--steps 10] [--peak 989e12]
"""

import argparse
import json
import gc
import tempfile

import torch
import transformers

from karma.reward import RewardConfig, RewardModel, bce_loss
from karma.optim import adamw
from karma.weights import load_model
from timing import cuda_median_seconds

LLAMA_32_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                   num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
                   max_position_embeddings=131072, tie_word_embeddings=True, rope_theta=500000.0,
                   rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak", type=float, default=989e12, help="bf16 dense peak FLOP/s (H100 SXM 989e12)")
    parser.add_argument("--activation-checkpointing", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**LLAMA_32_1B, num_labels=1, pad_token_id=0)
    ids = torch.randint(1, config.vocab_size, (args.batch, args.seq), device="cuda")
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (args.batch,), device="cuda").float()

    def measure(build, forward) -> dict:
        """Build a model, time its training steps, free it (two 1B models with fp32 Adam state and
        16k-token activations do not fit in 80 GB together)."""
        model = build()
        opt = adamw(model, 1e-5, 0.01)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = forward(model)
            bce_loss(logits, labels).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        torch.cuda.reset_peak_memory_stats()
        seconds = cuda_median_seconds(step, repeats=args.steps - 2, warmup=2)
        return {"step_s": seconds, "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}

    def build_ours():
        backbone = load_model(directory, dtype=torch.float32, device="cuda")
        backbone.activation_checkpointing = args.activation_checkpointing
        return RewardModel(backbone, RewardConfig(max_length=args.seq)).train()

    def build_ref():
        with torch.device("cuda"):
            ref = transformers.AutoModelForSequenceClassification.from_config(config, dtype=torch.float32).train()
        if args.activation_checkpointing:
            ref.gradient_checkpointing_enable()
        return ref

    with tempfile.TemporaryDirectory() as directory:
        with torch.device("cuda"):
            transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(directory)
        backbone = load_model(directory, dtype=torch.bfloat16, device="cpu")  # for the parameter count
        results = {"karma": [], "transformers": []}
        for name in ("karma", "transformers", "karma"):
            if name == "karma":
                results[name].append(measure(build_ours, lambda m: m(ids, mask)))
            else:
                results[name].append(measure(build_ref, lambda m: m(input_ids=ids, attention_mask=mask).logits[:, 0]))
            gc.collect()  # the measured model and its optimizer are unreachable now: free them
            torch.cuda.empty_cache()

    n_params = sum(p.numel() for p in backbone.parameters()) - backbone.embed.weight.numel()
    L, H, d = config.num_hidden_layers, config.num_attention_heads, config.head_dim
    flops_per_token = 6 * n_params + 12 * L * H * d * args.seq
    tokens = args.batch * args.seq
    out = {"bench": "rm_train_gpu", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "transformers_version": transformers.__version__, "config": "llama-3.2-1b", "batch": args.batch, "seq": args.seq,
           "activation_checkpointing": args.activation_checkpointing, "non_embedding_params": n_params,
           "flops_per_token": flops_per_token}
    for name, runs in results.items():
        seconds = min(r["step_s"] for r in runs)
        out[name] = {"step_s": round(seconds, 4), "tokens_per_s": round(tokens / seconds),
                     "mfu": round(flops_per_token * tokens / seconds / args.peak, 4),
                     "peak_mem_gib": round(max(r["peak_mem_gib"] for r in runs), 2)}
    out["speedup"] = round(out["karma"]["tokens_per_s"] / out["transformers"]["tokens_per_s"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
