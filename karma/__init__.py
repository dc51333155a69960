"""KARMA: Karma-Aligned Reward Model Adaptation, a small from-scratch PyTorch implementation.

Public API (stable):
    model = karma.load_model("pythia-70m")            # alias, hub id or local HF checkpoint dir
    tok = karma.load_tokenizer("pythia-70m")
    logits = model(input_ids, attention_mask)        # [batch, seq, vocab]
    out = karma.generate(model, input_ids, attention_mask, max_new_tokens=32, temperature=0.7)
    karma.save_model(model, "out/policy")            # Hugging Face layout (transformers, vLLM)
"""

from karma import gguf_import  # noqa: F401 (adds the offline model name smollm2-135m to karma.weights)
from karma.config import ModelConfig
from karma.generate import Generation, generate
from karma.model import KVCache, Transformer
from karma.tokenizer import Tokenizer, load_tokenizer
from karma.weights import load_model, save_model

__all__ = ["ModelConfig", "Transformer", "KVCache", "Generation", "Tokenizer",
           "load_model", "load_tokenizer", "generate", "save_model"]
