"""karma.ppo.rollout.RolloutBuffer: minibatch coverage, reproducibility, validation."""

import dataclasses

import pytest
import torch

from karma.ppo.rollout import RolloutBuffer

TOKEN_FIELDS = ["response_mask", "logprobs", "ref_logprobs", "values", "rewards", "advantages", "returns"]


def make_buffer(batch=10, query_len=4, response_len=6):
    """Every field's row b holds values derived from b, so a minibatch row reveals its index."""
    rows = torch.arange(batch, dtype=torch.float32)[:, None]
    return RolloutBuffer(
        query=rows.long().expand(batch, query_len).clone(),
        query_mask=torch.ones(batch, query_len),
        response=rows.long().expand(batch, response_len) + 100,
        **{name: rows.expand(batch, response_len) + i / 10 for i, name in enumerate(TOKEN_FIELDS)},
    )


def epoch_orders(buffer, batch_size, epochs, seed):
    """The row indices each epoch visits, in order, read back from the minibatches."""
    per_epoch = -(-len(buffer) // batch_size)
    rows = [mb.query[:, 0].tolist() for mb in buffer.minibatches(batch_size, epochs, seed)]
    return [sum(rows[e * per_epoch : (e + 1) * per_epoch], []) for e in range(epochs)]


@pytest.mark.parametrize("batch_size", [1, 3, 4, 10, 16])
def test_every_row_once_per_epoch_with_fields_kept_together(batch_size):
    buffer = make_buffer()
    assert len(buffer) == 10
    minibatches = list(buffer.minibatches(batch_size, epochs=3, seed=0))
    assert len(minibatches) == 3 * -(-10 // batch_size)
    assert all(len(mb) <= batch_size for mb in minibatches)
    for order in epoch_orders(buffer, batch_size, 3, seed=0):
        assert sorted(order) == list(range(10))
    for mb in minibatches:
        index = mb.query[:, 0]
        for i, name in enumerate(TOKEN_FIELDS):
            assert torch.equal(getattr(mb, name), getattr(buffer, name)[index]), name
        assert torch.equal(mb.response[:, 0], index + 100)


def test_same_seed_same_order_other_seed_other_order_and_global_rng_untouched():
    buffer = make_buffer(batch=32)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = epoch_orders(buffer, 8, 2, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert first == epoch_orders(buffer, 8, 2, seed=7)
    assert first != epoch_orders(buffer, 8, 2, seed=8)
    assert first[0] != first[1]  # each epoch reshuffles


@pytest.mark.parametrize("field", ["query_mask", "response", "logprobs", "returns"])
def test_mismatched_batch_dimension_names_the_field(field):
    fields = {f.name: getattr(make_buffer(), f.name) for f in dataclasses.fields(RolloutBuffer)}
    fields[field] = fields[field][:7]
    with pytest.raises(ValueError, match=rf"RolloutBuffer\.{field} has batch size 7, but query has 10"):
        RolloutBuffer(**fields)


def test_mismatched_token_shape_and_non_tensor_fields_are_rejected():
    fields = {f.name: getattr(make_buffer(), f.name) for f in dataclasses.fields(RolloutBuffer)}
    with pytest.raises(ValueError, match=r"RolloutBuffer\.values has shape \(10, 5\), but response has \(10, 6\)"):
        RolloutBuffer(**{**fields, "values": fields["values"][:, :5]})
    with pytest.raises(TypeError, match=r"RolloutBuffer\.rewards must be a tensor"):
        RolloutBuffer(**{**fields, "rewards": [0.0] * 10})
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(make_buffer().minibatches(0, 1, 0))
