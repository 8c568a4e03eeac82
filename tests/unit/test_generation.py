"""Sampling and scoring on real (tiny) models: the distribution sampled is the one scored, the model's own
generation settings stay out, a SentencePiece response keeps its leading space, long texts keep their end."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from kuberlhf.models import generation
from kuberlhf.models.loading import resolve_model_path

PROMPTS = ["Question: Write a cheerful note about coffee.\n\nAnswer:", "Question: Describe music happily.\n\nAnswer:"]


def demo(name: str, task: str = "causal-lm"):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_path(name, task, 0)
    cls = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    return cls.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), path


def test_logprobs_are_those_of_the_tempered_distribution_that_was_sampled():
    """generate() samples from softmax(logits / T); the log-probs scored must be of that distribution."""
    model, tok, _ = demo("demo://tiny-llama")
    torch.manual_seed(0)
    samples = generation.sample(model, tok, PROMPTS, max_new_tokens=8, temperature=0.5)
    torch.manual_seed(0)
    enc = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    out = model.generate(**enc, do_sample=True, temperature=0.5, top_k=0, top_p=1.0, max_new_tokens=8,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, output_scores=True,
                         return_dict_in_generate=True)
    start, mask = samples.start, samples.mask.bool()
    width = samples.input_ids.shape[1] - start
    assert torch.equal(out.sequences[:, start:][:, :width][mask], samples.input_ids[:, start:][mask])
    sampled_from = torch.stack([torch.log_softmax(s, -1) for s in out.scores], 1)[:, :width]
    expected = sampled_from.gather(-1, samples.input_ids[:, start:].unsqueeze(-1)).squeeze(-1)
    logp, _ = generation.sequence_logprobs(model, samples.input_ids, samples.attention_mask, start, 0.5)
    assert torch.allclose(logp[mask], expected[mask], atol=1e-5)
    untempered, _ = generation.sequence_logprobs(model, samples.input_ids, samples.attention_mask, start)
    assert not torch.allclose(untempered[mask], expected[mask], atol=1e-3)


def test_sampling_ignores_the_models_own_generation_config(tmp_path):
    """A checkpoint's generation_config.json (repetition penalty, suppressed EOS) must not bend pure sampling."""
    from transformers import AutoModelForCausalLM

    model, tok, path = demo("demo://tiny-llama")
    poisoned = tmp_path / "poisoned"
    shutil.copytree(path, poisoned)
    config = json.loads((poisoned / "generation_config.json").read_text())
    config.update(repetition_penalty=5.0, suppress_tokens=[tok.eos_token_id], no_repeat_ngram_size=1)
    (poisoned / "generation_config.json").write_text(json.dumps(config))
    other = AutoModelForCausalLM.from_pretrained(poisoned).eval()
    assert other.generation_config.repetition_penalty == 5.0
    runs = []
    for m in (model, other):
        torch.manual_seed(3)
        runs.append(generation.sample(m, tok, PROMPTS * 4, max_new_tokens=16))
    assert torch.equal(runs[0].input_ids, runs[1].input_ids)
    assert other.generation_config.repetition_penalty == 5.0  # the model's own settings are put back


def test_a_sentencepiece_response_keeps_its_leading_space():
    """prompt + response text must be the text the reward model was trained on (demo pairs: prompt + " ...")."""
    from kuberlhf.demo.data import iter_rows

    _, tok, _ = demo("demo://tiny-opt")
    row = next(iter_rows("demo://preference?n=1"))
    prompt, response = row["prompt"], row["chosen"]
    assert response.startswith(" ")
    full = tok(prompt + response, add_special_tokens=False)["input_ids"]
    head = tok(prompt, add_special_tokens=False)["input_ids"]
    assert full[: len(head)] == head
    prompt_ids, response_ids = torch.tensor([head]), torch.tensor([full[len(head):]])
    assert tok.decode(response_ids[0]) == response.lstrip()  # decoded alone, SentencePiece drops the space
    texts = generation.response_texts(tok, prompt_ids, torch.ones_like(prompt_ids), response_ids,
                                      torch.ones_like(response_ids))
    assert prompt + texts[0] == prompt + response


def test_long_prompts_keep_their_end_and_are_counted():
    model, tok, _ = demo("demo://tiny-llama")
    long = "one two three four five six seven eight nine ten " * 8 + PROMPTS[0]
    limit = len(tok(PROMPTS[1])["input_ids"]) + 2
    samples = generation.sample(model, tok, [long, PROMPTS[1]], max_new_tokens=4, max_prompt_length=limit)
    assert samples.prompts_truncated == 1 and samples.start == limit
    kept = tok.decode(samples.input_ids[0, :limit], skip_special_tokens=True)
    assert long.endswith(kept) and PROMPTS[0].endswith(kept[-20:])


def test_reward_scores_see_the_end_of_a_long_text_and_count_the_cut():
    from kuberlhf.models.scoring import score_texts

    model, tok, _ = demo("demo://tiny-deberta", "sequence-classification")
    end = " fresh beans, warm mugs, bright crema."
    texts = ["coffee " * 40 + end, "music garden books " * 20 + end]
    counts: dict = {}
    a, b = score_texts(model, tok, texts, max_length=12, counts=counts)
    assert a == pytest.approx(b, abs=1e-6), "both texts end the same: the reward model must see that end"
    assert counts["truncated"] == 2
    assert score_texts(model, tok, [end], max_length=64, counts=counts) and counts["truncated"] == 2


def test_entropy_is_a_statistic_without_an_autograd_graph():
    model, tok, _ = demo("demo://tiny-llama")
    samples = generation.sample(model, tok, PROMPTS, max_new_tokens=4)
    logp, entropy = generation.sequence_logprobs(model, samples.input_ids, samples.attention_mask, samples.start)
    assert logp.requires_grad and not entropy.requires_grad and entropy.grad_fn is None


def test_values_skip_left_padding_on_an_absolute_position_backbone():
    """GPT-2 adds learned absolute positions: a left-padded row must get the values it gets unpadded."""
    from transformers import GPT2Config, GPT2Model

    from kuberlhf.rlhf.value import ValueModel

    torch.manual_seed(0)
    backbone = GPT2Model(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    value = ValueModel(backbone, 32).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    padded = torch.tensor([[0, 0, 5, 6, 7, 8]])
    attn = torch.tensor([[0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        alone = value(ids, torch.ones_like(ids))
        left = value(padded, attn)
    assert torch.allclose(alone, left[:, 2:], atol=1e-5)
