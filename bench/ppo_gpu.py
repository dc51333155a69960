"""GPU: seconds per PPO rollout by phase, and memory, with a ~1B policy and ~1B reward model
(random weights; Pythia-1B policy, Llama-3.2-1B-shaped reward model and critic).

Everything is built offline: a byte-level BPE tokenizer trained here on synthetic text, random
checkpoints saved with transformers, a random-head reward model. Runs karma.ppo.trainer.train on
one GPU and prints one JSON object: per-rollout seconds for generation / RM scoring / rollout
forward passes / PPO update, tokens/s, peak memory, and bytes of GPU memory per trained parameter
(the input of the memory plan in the README).

    PYTHONPATH=. python bench/ppo_gpu.py [--rollouts 3] [--rollout-batch 64] [--max-new-tokens 128]
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from karma.distributed import Dist
from karma.files import read_jsonl
from karma.ppo.trainer import PPOConfig, train
from karma.reward import RewardConfig, RewardModel, save_reward_model
from karma.tokenizer import load_tokenizer
from karma.weights import load_model

WORDS = ("the a of to and in is it you that for on with this was are be as have not but what can people "
         "question answer reddit thread reply comment think know good time really would just like").split()


def make_tokenizer(directory: Path) -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(40)) for i in range(200)]
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=3)
    parser.add_argument("--rollout-batch", type=int, default=64)
    parser.add_argument("--minibatch", type=int, default=16)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp())
    policy_dir, rm_base, rm_dir = root / "policy", root / "rm_base", root / "rm"
    for d in (policy_dir, rm_base):
        d.mkdir()
        make_tokenizer(d)
    with torch.device("cuda"):
        transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
            vocab_size=50304, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=8,
            rotary_pct=0.25, eos_token_id=0, bos_token_id=0)).to(torch.bfloat16).save_pretrained(policy_dir)
        transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
            num_key_value_heads=8, head_dim=64, tie_word_embeddings=True, eos_token_id=0,
            bos_token_id=0)).to(torch.bfloat16).save_pretrained(rm_base)
    rm = RewardModel(load_model(rm_base, dtype=torch.bfloat16, device="cuda"), RewardConfig(max_length=512),
                     load_tokenizer(rm_base))
    save_reward_model(rm, rm_dir)
    del rm
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "messages": [{"role": "user", "content": " ".join(
        WORDS[(i * 3 + j) % len(WORDS)] for j in range(60))}]}) + "\n" for i in range(256)))
    torch.cuda.reset_peak_memory_stats()
    cfg = PPOConfig(model=str(policy_dir), reward_model=rm_dir, prompts=str(prompts), out_dir=root / "run",
                    rollouts=args.rollouts, rollout_batch=args.rollout_batch, minibatch=args.minibatch,
                    micro_batch=args.micro_batch, max_new_tokens=args.max_new_tokens, max_prompt_tokens=256,
                    value_init="reward", save_every=10**6)  # one tokenizer for both here: RM-initialised critic
    train(cfg, Dist(0, 1, torch.device("cuda")))
    rows = [record for _, record in read_jsonl(root / "run" / "metrics.jsonl")]
    steady = rows[1:] or rows  # the first rollout includes warm-up (kernel selection, allocator growth)
    mean = lambda key: sum(r[key] for r in steady) / len(steady)
    policy_params = sum(p.numel() for p in load_model(policy_dir, device="meta").parameters())
    value_params = sum(p.numel() for p in load_model(rm_base, device="meta").parameters())
    peak = torch.cuda.max_memory_allocated()
    print(json.dumps({
        "bench": "ppo_gpu", "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "policy": "pythia-1b shape", "reward_and_critic": "llama-3.2-1b shape", "rollout_batch": args.rollout_batch,
        "max_new_tokens": args.max_new_tokens, "minibatch": args.minibatch, "ppo_epochs": cfg.ppo_epochs,
        "seconds_per_rollout": {k: round(mean(k), 2) for k in ("generate_s", "score_s", "forward_s", "update_s")},
        "generate_tok_s": round(mean("generate_tok_s")), "train_tok_s": round(mean("train_tok_s")),
        "response_len": round(mean("response_len"), 1), "peak_mem_gib": round(peak / 2**30, 2),
        "trained_params": policy_params + value_params,
        "peak_bytes_per_trained_param": round(peak / (policy_params + value_params), 1),
    }))


if __name__ == "__main__":
    main()
