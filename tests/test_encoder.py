"""karma/encoder.py against transformers: tiny random BERT and RoBERTa sequence classifiers built here,
with tokenizers as the real repos ship them (vocab files only, or tokenizer.json written by transformers)."""

import json
import shutil

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer

from karma.evals.encoder import hf_key, load_classifier
from karma.evals.toxicity import ClassifierScorer, make_scorer

JIGSAW = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]  # unitary/toxic-bert's labels
TEXTS = ["You are an idiot!", "have a nice day", "", "Hello, WORLD. Café naïve 日本 <s> [SEP]",
         "you are the idiot and " * 12, "  spaces   and\ttabs\n"]
MAX_TOKENS = 24  # the tiny models' longest input: the long text above is truncated
BERT_WORDS = ["you", "are", "an", "the", "idiot", "have", "a", "nice", "day", "hello", "world", "and", "##s", "##ing"]
CORPUS = ["You are an idiot!", "have a nice day", "Hello world, you are nice.", "the idiot and the day"] * 4


def bert_vocab(directory):
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *".,!?'", *letters, *("##" + c for c in letters),
              *BERT_WORDS]
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": MAX_TOKENS}))  # as toxic-bert
    return len(tokens)


def roberta_vocab(directory):
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    bpe.save_model(str(directory))  # vocab.json + merges.txt
    return bpe.get_vocab_size()


def make_classifier(directory, model_type: str, labels: list[str], multi_label: bool):
    """A random-weight Bert/RobertaForSequenceClassification saved in `directory` (safetensors + the
    vocabulary files); returns the transformers model (the oracle)."""
    import transformers

    roberta = model_type == "roberta"
    directory.mkdir(parents=True, exist_ok=True)
    vocab_size = roberta_vocab(directory) if roberta else bert_vocab(directory)
    cls = transformers.RobertaConfig if roberta else transformers.BertConfig
    config = cls(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, max_position_embeddings=MAX_TOKENS + (2 if roberta else 0),
                 type_vocab_size=1 if roberta else 2, pad_token_id=1 if roberta else 0,
                 id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
                 problem_type="multi_label_classification" if multi_label else "single_label_classification")
    torch.manual_seed(0)
    model_cls = transformers.RobertaForSequenceClassification if roberta else transformers.BertForSequenceClassification
    model = model_cls(config).eval()
    with torch.no_grad():  # weights large enough that every input gives different logits
        for name, p in model.named_parameters():
            p.normal_(1.0 if name.endswith("LayerNorm.weight") else 0.0, 0.5)
    model.save_pretrained(directory)
    return model


def hf_tokenizer(directory, roberta: bool):
    import transformers

    cls = transformers.RobertaTokenizer if roberta else transformers.BertTokenizer
    return cls.from_pretrained(str(directory), model_max_length=MAX_TOKENS)


CASES = {"bert-multi": ("bert", JIGSAW, True), "bert-single": ("bert", ["neutral", "toxic"], False),
         "roberta-single": ("roberta", ["neutral", "toxic"], False), "roberta-multi": ("roberta", JIGSAW, True)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """case -> (vocab-files directory, tokenizer.json directory, oracle model, oracle tokenizer)."""
    out = {}
    for case, (model_type, labels, multi) in CASES.items():
        vocab_dir = tmp_path_factory.mktemp(case)
        model = make_classifier(vocab_dir, model_type, labels, multi)
        tokenizer = hf_tokenizer(vocab_dir, model_type == "roberta")
        json_dir = tmp_path_factory.mktemp(case + "-json")
        shutil.copy(vocab_dir / "config.json", json_dir)
        shutil.copy(vocab_dir / "model.safetensors", json_dir)
        tokenizer.save_pretrained(str(json_dir))  # tokenizer.json as transformers writes it
        assert (json_dir / "tokenizer.json").exists()
        out[case] = (vocab_dir, json_dir, model, tokenizer)
    return out


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("source", ["vocab", "tokenizer.json"])
def test_tokenization_matches_transformers(checkpoints, case, source):
    vocab_dir, json_dir, _, tokenizer = checkpoints[case]
    classifier = load_classifier(vocab_dir if source == "vocab" else json_dir, device="cpu")
    want = tokenizer(TEXTS, truncation=True, max_length=MAX_TOKENS)["input_ids"]
    assert classifier.encode(TEXTS) == want
    assert max(len(ids) for ids in want) == MAX_TOKENS  # the long text was truncated


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers_on_padded_batch(checkpoints, case):
    vocab_dir, _, model, tokenizer = checkpoints[case]
    classifier = load_classifier(vocab_dir, device="cpu")
    batch = tokenizer(TEXTS, truncation=True, max_length=MAX_TOKENS, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    got = classifier.logits(classifier.encode(TEXTS))
    assert got.shape == want.shape == (len(TEXTS), len(classifier.labels))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (want.max(0).values - want.min(0).values).min() > 0.1  # the texts are told apart


@pytest.mark.parametrize("case", CASES)
def test_probabilities_per_problem_type(checkpoints, case):
    vocab_dir, _, model, tokenizer = checkpoints[case]
    classifier = load_classifier(vocab_dir, device="cpu")
    probs = classifier.predict(TEXTS, batch_size=4)  # 2 batches, longest first: order must come back
    assert list(probs) == CASES[case][1]
    with torch.no_grad():
        logits = torch.cat([model(**tokenizer([t], truncation=True, max_length=MAX_TOKENS, return_tensors="pt"))
                            .logits for t in TEXTS])  # one text at a time: no padding at all
    want = logits.sigmoid() if CASES[case][2] else logits.softmax(-1)
    got = torch.tensor([probs[label] for label in probs]).T
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    if not CASES[case][2]:
        torch.testing.assert_close(got.sum(-1), torch.ones(len(TEXTS)))


def test_hf_keys():
    assert hf_key("layers.3.attn.query.weight", "bert") == "bert.encoder.layer.3.attention.self.query.weight"
    assert hf_key("layers.0.mlp_norm.bias", "roberta") == "roberta.encoder.layer.0.output.LayerNorm.bias"
    assert hf_key("head.dense.weight", "bert") == "bert.pooler.dense.weight"
    assert hf_key("head.out.weight", "roberta") == "classifier.out_proj.weight"


def test_checkpoint_errors(checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    vocab_dir = checkpoints["bert-single"][0]
    broken = tmp_path / "broken"
    shutil.copytree(vocab_dir, broken)
    state = load_file(broken / "model.safetensors")
    del state["bert.pooler.dense.weight"]
    save_file(state, broken / "model.safetensors")
    with pytest.raises(KeyError, match="bert.pooler.dense.weight"):
        load_classifier(broken, device="cpu")
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "deberta-v2"}))
    with pytest.raises(ValueError, match="model_type 'deberta-v2'"):
        load_classifier(broken, device="cpu")
    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-classifier"):
        load_classifier("no-such-org/no-such-classifier")  # offline (conftest): the error names the repo


def test_classifier_scorer_maps_labels_to_attributes(checkpoints):
    vocab_dir = checkpoints["bert-multi"][0]
    scorer = make_scorer(str(vocab_dir), device="cpu")
    assert isinstance(scorer, ClassifierScorer) and not scorer.is_proxy and str(vocab_dir) in scorer.name
    assert scorer.attributes == ("toxicity", "severe_toxicity", "profanity", "threat", "insult", "identity_attack")
    scores = scorer.score(TEXTS)
    probs = scorer.classifier.predict(TEXTS)
    assert scores["profanity"] == probs["obscene"] and scores["identity_attack"] == probs["identity_hate"]
    two_labels = ClassifierScorer(str(checkpoints["roberta-single"][0]), device="cpu")
    assert two_labels.attributes == ("toxicity",)  # "neutral" is not an attribute
    assert two_labels.score(TEXTS)["toxicity"] == two_labels.classifier.predict(TEXTS)["toxic"]
