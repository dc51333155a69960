"""Activation checkpointing recomputes each block in backward: same loss and gradients as without."""

from __future__ import annotations

import torch

import karma


def test_activation_checkpointing_gives_identical_gradients(checkpoint_factory):
    path = checkpoint_factory("llama_untied").path
    ids = torch.randint(0, 300, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    grads = []
    for checkpointing in (False, True):
        model = karma.load_model(path).train()
        model.activation_checkpointing = checkpointing
        calls = []
        model.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))  # recompute stops early: pre-hook
        loss = model(ids, mask).logsumexp(-1).mean()
        loss.backward()
        assert len(calls) == (2 if checkpointing else 1)  # checkpointing reruns the block in backward
        grads.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, a), (loss_b, b) = grads
    assert loss_a == loss_b
    assert a.keys() == b.keys() and all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)
