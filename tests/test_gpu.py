"""CUDA-only checks (`make test-gpu`; deselected elsewhere): bf16 numerics and the CUDA-graph decoder.

bf16 logits cannot equal fp32 ones, so the yardstick is the reference's own bf16 rounding noise:
karma in bf16 must be as close to transformers in fp32 as transformers in bf16 is.
"""

from __future__ import annotations

import pytest
import torch

import karma
from hf_fixtures import LAYOUTS, positions_from_mask

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_bf16_logits_within_the_references_own_bf16_noise(layout, checkpoint_factory):
    ckpt = checkpoint_factory(layout)
    ref32 = ckpt.oracle.to("cuda")
    ref16 = type(ref32)(ref32.config).to("cuda", torch.bfloat16).eval()
    ref16.load_state_dict({k: v.bfloat16() for k, v in ref32.state_dict().items()})
    ours = karma.load_model(ckpt.path, dtype=torch.bfloat16, device="cuda")
    ids = torch.randint(0, ours.config.vocab_size, (3, 64), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :20] = 0
    real = mask.bool()
    with torch.no_grad():
        kw = dict(attention_mask=mask, position_ids=positions_from_mask(mask))
        want = ref32(ids, **kw).logits[real]
        noise = (ref16(ids, **kw).logits[real].float() - want).abs()
        ours_err = (ours(ids, mask)[real].float() - want).abs()
    ckpt.oracle.to("cpu")
    assert ours_err.max() <= 2 * noise.max() + 1e-3, (ours_err.max().item(), noise.max().item())
    assert ours_err.mean() <= 2 * noise.mean() + 1e-4, (ours_err.mean().item(), noise.mean().item())


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_cuda_graph_decoding_equals_eager(layout, checkpoint_factory):
    ours = karma.load_model(checkpoint_factory(layout).path, dtype=torch.float32, device="cuda")
    ids = torch.randint(0, ours.config.vocab_size, (4, 16), device="cuda")
    mask = torch.ones_like(ids)
    mask[2, :5] = 0
    common = dict(max_new_tokens=24, stop_ids=[], temperature=0)
    eager = karma.generate(ours, ids, mask, cuda_graph=False, **common)
    graphed = karma.generate(ours, ids, mask, cuda_graph=True, **common)
    assert torch.equal(eager.tokens, graphed.tokens)
    assert torch.allclose(eager.logprobs, graphed.logprobs, atol=1e-5)
    sampled = [karma.generate(ours, ids, mask, cuda_graph=g, max_new_tokens=24, stop_ids=[], seed=3).tokens
               for g in (False, True)]
    assert torch.equal(*sampled)
    # the padded row generates what it generates alone
    alone = karma.generate(ours, ids[2:3, 5:], max_new_tokens=24, stop_ids=[], temperature=0, cuda_graph=True)
    assert torch.equal(alone.tokens[0], graphed.tokens[2])


def test_reward_model_trains_on_gpu_with_bf16_autocast(tmp_path, checkpoint_factory):
    from test_reward import config, make_examples

    from karma.distributed import Dist
    from karma.reward_train import train

    data = make_examples(tmp_path / "data")
    state = train(config(checkpoint_factory("llama_tied").path, data, tmp_path / "rm"), Dist(0, 1, torch.device("cuda")))
    assert state["best_auc"] > 0.9


def test_generation_edge_cases_on_cuda(checkpoint_factory):
    model = karma.load_model(checkpoint_factory("neox").path, dtype=torch.float32, device="cuda")
    ids = torch.randint(0, 300, (2, 5), device="cuda")
    assert karma.generate(model, ids, max_new_tokens=0).tokens.shape == (2, 0)
    assert karma.generate(model, ids, max_new_tokens=1, temperature=0).tokens.shape == (2, 1)
    assert karma.generate(model, ids, max_new_tokens=4, temperature=0).tokens.shape == (2, 4)  # context still sound


def test_ppo_rollouts_on_gpu_with_a_bf16_sampling_replica(tmp_path, checkpoint_factory):
    import json

    from test_ppo_trainer import LetterReward, config

    from karma.distributed import Dist
    from karma.ppo.trainer import train

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "messages": [{"role": "user", "content": f"hi {i}"}]}) + "\n"
                               for i in range(8)))
    out = tmp_path / "run"
    train(config(checkpoint_factory("llama_tied").path, prompts, out, rollouts=3, rollout_batch=8), Dist(0, 1, torch.device("cuda")),
          reward=LetterReward())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["updates"] > 0 and r["peak_mem_gib"] > 0 for r in rows)
    assert karma.load_model(out / "policy", device="cpu").embed.weight.dtype == torch.float32
