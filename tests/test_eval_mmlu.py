"""The mmlu task: lm-eval's zero-shot prompt, request order, acc arithmetic and aggregation (stub LM),
the three data layouts and their errors, the stratified limit, parity with lm-eval's definition
computed through transformers on tiny random models, and the full published test set when present."""

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import karma
from karma.evals.lm import EvalLM, Loglikelihood
from karma.evals.tasks import get_task

mmlu = get_task("mmlu")
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "eval-data"  # the maintainers' copy, if any


class StubLM:
    """loglikelihood(requests) -> score(context, continuation) per request; records the requests."""

    def __init__(self, score):
        self.score, self.requests = score, []

    def loglikelihood(self, requests, desc=""):
        self.requests += requests
        return [Loglikelihood(self.score(c, x), False, 1) for c, x in requests]


# subject -> rows (question, [4 choices], answer 0-3); unequal sizes so micro and macro averages differ
QUESTIONS = {
    "abstract_algebra": [("  Find the degree of Q(sqrt(2)) over Q.\n", ["0", "1", "2", "4"], 2),
                         ("Statement 1 | Every group is abelian.", ["True, True", "False, False", "True, False",
                                                                  "False, True"], 1)],
    "high_school_us_history": [(f"Question {i}: who said \"no\", and why?", [f"a{i}", "b, c", "d\ne", "'f'"], i % 4)
                               for i in range(6)],
    "world_religions": [("What is the holy book of Islam?", ["Bible", "Quran", "Torah", "Vedas"], 1)],
}


def write_original(folder: Path, questions=QUESTIONS):
    """The original release: data/test/<subject>_test.csv, no header, answer letter."""
    folder.mkdir(parents=True, exist_ok=True)
    for subject, rows in questions.items():
        with open(folder / f"{subject}_test.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([q, *choices, "ABCD"[a]] for q, choices, a in rows)


def write_export(folder: Path, questions=QUESTIONS):
    """The cais/mmlu CSV export: header question,choice0..choice3,answer (0-3)."""
    folder.mkdir(parents=True, exist_ok=True)
    for subject, rows in questions.items():
        with open(folder / f"{subject}_test.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["question", "choice0", "choice1", "choice2", "choice3", "answer"])
            w.writerows([q, *choices, a] for q, choices, a in rows)


def write_parquet(path: Path, questions=QUESTIONS):
    """The hub's cais/mmlu all/test parquet: question, subject, choices, answer."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [(q, s, c, a) for s, rs in questions.items() for q, c, a in rs]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"question": [r[0] for r in rows], "subject": [r[1] for r in rows],
                             "choices": [r[2] for r in rows], "answer": pa.array([r[3] for r in rows], pa.int64())}),
                   path)


def test_prompt_is_lm_evals():
    item = {"subject": "abstract_algebra", "question": "  Find the degree of Q(sqrt(2)) over Q.\n",
            "choices": ["0", "1", "2", "4"]}
    assert mmlu.prompt(item) == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Find the degree of Q(sqrt(2)) over Q.\nA. 0\nB. 1\nC. 2\nD. 4\nAnswer:")


def test_requests_acc_and_aggregation(tmp_path):
    write_original(tmp_path / "mmlu" / "test")
    items = mmlu.load(tmp_path)
    assert [i["id"] for i in items][:3] == ["abstract_algebra/0", "abstract_algebra/1", "high_school_us_history/0"]
    # the model picks B everywhere, except C on the first question
    first = mmlu.prompt(items[0])
    lm = StubLM(lambda ctx, cont: {" B": -1.0, " C": -1.5 if ctx != first else -0.5}.get(cont, -3.0))
    result = mmlu.evaluate(lm, items)
    assert lm.requests == [(mmlu.prompt(i), f" {x}") for i in items for x in "ABCD"]
    expected = [1.0, 1.0] + [float(i % 4 == 1) for i in range(6)] + [1.0]  # answers: C, B, then i % 4, then B
    assert [r["acc"] for r in result.items] == expected
    assert result.items[0] == {"id": "abstract_algebra/0", "subject": "abstract_algebra", "acc": 1.0}
    assert result.metrics == {"acc": pytest.approx(5 / 9)}  # micro: 5 of 9 questions (macro would be 7/9)
    assert result.breakdown == {"subject": {"abstract_algebra": {"acc": 1.0, "n": 2},
                                            "high_school_us_history": {"acc": pytest.approx(2 / 6), "n": 6},
                                            "world_religions": {"acc": 1.0, "n": 1}}}
    assert (result.primary, result.kind, result.higher_is_better) == ("acc", "binary", True)


def test_ties_pick_the_first_choice():
    items = [{"id": "x/0", "subject": "x", "question": "q", "choices": list("wxyz"), "answer": 0},
             {"id": "x/1", "subject": "x", "question": "r", "choices": list("wxyz"), "answer": 1}]
    assert [r["acc"] for r in mmlu.evaluate(StubLM(lambda c, x: -2.0), items).items] == [1.0, 0.0]


def test_the_three_layouts_give_the_same_items(tmp_path):
    write_original(tmp_path / "a" / "mmlu" / "data" / "test")
    write_export(tmp_path / "b" / "mmlu" / "cais_export" / "test")
    write_parquet(tmp_path / "c" / "mmlu" / "all" / "test-00000-of-00001.parquet")
    original, export, parquet = (mmlu.load(tmp_path / d) for d in "abc")
    assert original == export == parquet
    assert original[0] == {"id": "abstract_algebra/0", "subject": "abstract_algebra",
                           "question": "  Find the degree of Q(sqrt(2)) over Q.\n", "choices": ["0", "1", "2", "4"],
                           "answer": 2}
    assert original[3]["choices"] == ["a1", "b, c", "d\ne", "'f'"]


def test_two_test_folders_are_refused(tmp_path):
    write_original(tmp_path / "mmlu" / "test")
    write_export(tmp_path / "mmlu" / "other" / "test")
    with pytest.raises(ValueError, match="MMLU test files in 2 folders"):
        mmlu.load(tmp_path)


@pytest.mark.parametrize("layout,line,message", [
    ("original", 'q,a,b,c,d,A\n"q2\nstill q2",a,b,c,d,B\nq3,a,b,c,D\n', r"x_test.csv:4: 5 fields; expected 6"),
    ("original", "q,a,b,c,d,A\nq2,a,b,c,d,E\n", r"x_test.csv:2: answer 'E' is not A, B, C or D"),
    ("export", "question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,0\nq,a,b,c,d,4\n",
     r"x_test.csv:3: answer '4' is not 0, 1, 2 or 3"),
    ("export", "question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,0\nq,a,b,c,1\n",
     r"x_test.csv:3: wrong number of fields"),
    ("export", "question,choice0,choice1,choice2,answer\nq,a,b,c,0\n",
     r"x_test.csv: missing column\(s\) \['choice3'\]; the header has"),
])
def test_malformed_csv_names_file_and_line(tmp_path, layout, line, message):
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    (tmp_path / "mmlu" / "test" / "x_test.csv").write_text(line)
    with pytest.raises(ValueError, match=message):
        mmlu.load(tmp_path)


def test_parquet_missing_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "mmlu" / "all" / "test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"question": ["q"], "choices": [["a", "b", "c", "d"]], "answer": [0]}), path)
    with pytest.raises(ValueError, match=r"test-00000-of-00001.parquet: missing column\(s\) \['subject'\]"):
        mmlu.load(tmp_path)


def test_missing_data_names_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mmlu/all/test-00000-of-00001.parquet: not found.*data.tar"):
        mmlu.load(tmp_path)  # conftest sets HF_HUB_OFFLINE=1


def test_stratified_limit(tmp_path):
    questions = {s: [(f"{s} {i}", list("abcd"), 0) for i in range(n)] for s, n in [("a", 10), ("b", 20), ("c", 30)]}
    write_export(tmp_path / "mmlu" / "test", questions)
    chosen = mmlu.load(tmp_path, limit=12, seed=3)
    assert Counter(i["subject"] for i in chosen) == {"a": 2, "b": 4, "c": 6}
    ids = [i["id"] for i in mmlu.load(tmp_path)]
    assert [i["id"] for i in chosen] == [x for x in ids if x in {i["id"] for i in chosen}]  # original order
    assert chosen == mmlu.load(tmp_path, limit=12, seed=3) != mmlu.load(tmp_path, limit=12, seed=4)


# ---------------------------------------------------------------------------------------------
# parity: lm-eval's definition through transformers
# ---------------------------------------------------------------------------------------------

def hf_loglikelihoods(ckpt, requests: list[tuple[str, str]], add_bos_token: bool | None = None) -> list[float]:
    """lm-eval 0.4.13's HFLM.loglikelihood, one request at a time, with transformers only (the model and
    AutoTokenizer): lm_eval/api/model.py `loglikelihood` and `_encode_pair`, lm_eval/models/huggingface.py
    `tok_encode` and `_loglikelihood_tokens`. add_bos_token=None (its default since 0.4.9.2) keeps the
    tokenizer's default special tokens unless the text already starts with the BOS text; False adds none
    (the default before). An empty context is the prefix token (BOS, else EOS) unless the continuation
    starts with it. The input is cut to the last max_length + 1 tokens; the score is the continuation's sum."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ckpt.path))
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    max_length = ckpt.oracle.config.max_position_embeddings

    def tok_encode(text):
        if add_bos_token is not None:
            return tok.encode(text, add_special_tokens=add_bos_token)
        return tok.encode(text, **({"add_special_tokens": False} if text.startswith(tok.decode(prefix)) else {}))

    out = []
    for context, continuation in requests:
        if context == "":
            cont = tok.encode(continuation, add_special_tokens=False)
            context_ids, cont = ([prefix], cont) if cont[0] != prefix else (cont[:1], cont[1:])
        else:
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces:
                context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
            whole, context_ids = tok_encode(context + continuation), tok_encode(context)
            cont = whole[len(context_ids):]
        inp = (context_ids + cont)[-(max_length + 1):][:-1]
        with torch.no_grad():
            logits = ckpt.oracle(torch.tensor([inp])).logits[0, -len(cont):].float()
        out.append(float(torch.log_softmax(logits, -1)[torch.arange(len(cont)), cont].sum()))
    return out


@pytest.fixture
def one_thread():
    """Tiny matrices: one thread avoids contention on a loaded machine (10x faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def karma_lm(ckpt) -> EvalLM:
    return EvalLM(karma.load_model(ckpt.path, device="cpu"), karma.load_tokenizer(ckpt.path), batch_size=8,
                  progress=False)


class Recording:
    """An EvalLM that keeps the requests it was given and the log-likelihoods it returned."""

    def __init__(self, lm: EvalLM):
        self.lm, self.requests, self.logprobs = lm, [], []

    def loglikelihood(self, requests, desc=""):
        out = self.lm.loglikelihood(requests, desc)
        self.requests += requests
        self.logprobs += [r.logprob for r in out]
        return out


def lm_eval_requests(item: dict) -> list[tuple[str, str]]:
    """lm_eval/tasks/mmlu/default: the subject's description + doc_to_text; doc_to_choice with the
    target delimiter " "."""
    subject = " ".join(item["subject"].split("_"))
    description = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    c = item["choices"]
    text = f"{item['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"
    return [(description + text, " " + letter) for letter in ["A", "B", "C", "D"]]


@pytest.mark.parametrize("layout", ["llama_tied", "neox"])
def test_parity_with_lm_eval_definition_through_transformers(checkpoint_factory, tmp_path, one_thread, layout):
    ckpt = checkpoint_factory(layout)
    write_export(tmp_path / "mmlu" / "test")
    for source in [tmp_path] + ([SHARED] if SHARED.exists() else []):
        items = mmlu.load(source, limit=12, seed=0)
        lm = Recording(karma_lm(ckpt))
        result = mmlu.evaluate(lm, items)
        requests = [r for i in items for r in lm_eval_requests(i)]
        assert lm.requests == requests
        theirs = hf_loglikelihoods(ckpt, requests)
        np.testing.assert_allclose(lm.logprobs, theirs, atol=1e-4, rtol=0)
        acc = [float(np.argmax(theirs[4 * k:4 * k + 4]) == i["answer"]) for k, i in enumerate(items)]  # lm-eval
        assert [r["acc"] for r in result.items] == acc
        assert result.metrics["acc"] == pytest.approx(np.mean(acc))


@pytest.mark.skipif(not SHARED.exists(), reason="the published MMLU files are not on this machine")
def test_published_test_set():
    items = mmlu.load(SHARED)
    counts = Counter(i["subject"] for i in items)
    assert len(items) == 14042 and len(counts) == 57
    assert (counts["abstract_algebra"], counts["professional_law"], counts["moral_scenarios"]) == (100, 1534, 895)
    assert len({i["id"] for i in items}) == 14042
    assert Counter(i["answer"] for i in items).keys() == {0, 1, 2, 3}
