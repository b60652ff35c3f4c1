"""A small code model: a byte GPT with a 256-byte context, trained on templated sources.

The tiny GPT of chapter 05 reads 64 to 128 bytes, less than one Verilog module or one MPI
program. :func:`code_gpt_recipe` keeps its architecture (:class:`labkit.lm.GPTConfig`, two
blocks) and widens the context to 256 bytes. :func:`code_corpus` turns a list of source
documents into training examples, a fraction ``fim_rate`` of them rearranged for
fill-in-the-middle (Bavarian et al., 2022, "prefix-suffix-middle" order)::

    <PRE> prefix <SUF> suffix <MID> middle <EOT>

so that one left-to-right model can both continue a prompt (:func:`complete`) and fill a hole
given the text on both sides (:func:`fill_in_the_middle`). The sentinels are the control bytes
``0x01``-``0x04``, which never occur in source text. The hole is a run of whole lines, the unit
a code model is usually asked to fill.

What the miniature leaves out: no tokenizer (bytes), no key-value cache in generation, no
packing beyond concatenation, a model of 0.1 to 0.4 million parameters.

Shapes: B batch, T block size (256).
Section: chapter 18, "VerilogEval: spec-to-RTL evaluation" (the code model).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from labkit.lm.gpt import GPT, GPTConfig
from labkit.lm.train import TrainConfig, TrainResult, train_gpt
from labkit.tiers import validate_tier
from labkit.validation import check_int, check_real

__all__ = ["EOT", "MID", "PRE", "SUF", "CodeCorpus", "CodeRecipe", "code_corpus", "code_gpt_recipe",
           "complete", "fill_in_the_middle", "fim_example", "train_code_gpt"]

#: Sentinel bytes of the fill-in-the-middle format and the end of a document.
PRE, SUF, MID, EOT = "\x01", "\x02", "\x03", "\x04"
_SENTINELS = (PRE, SUF, MID, EOT)


@dataclass(frozen=True)
class CodeRecipe:
    """The code model's architecture, its training recipe and its fill-in-the-middle rate.

    Attributes:
        gpt: the architecture (``block_size=256``).
        train: steps, batch size and learning rate for :func:`labkit.lm.train_gpt`.
        fim_rate: fraction of training documents rearranged into fill-in-the-middle order.
    """

    gpt: GPTConfig
    train: TrainConfig
    fim_rate: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.gpt, GPTConfig):
            raise TypeError(f"gpt must be a GPTConfig, got {type(self.gpt).__name__}")
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        _check_rate(self.fim_rate)


_SIZES = {
    # d_model, steps, batch_size
    "ci": (48, 40, 8),
    "default": (64, 400, 16),
    "gpu": (128, 2000, 64),
}


def code_gpt_recipe(tier: str) -> CodeRecipe:
    """The code model of ``tier``: 2 blocks, 4 heads, a 256-byte context, half the data in FIM form.

    ``ci``: width 48, 40 steps of 8 windows (a few seconds on 2 CPU cores: a smoke run that
    learns little beyond the templates' first bytes). ``default``: width 64, 400 steps of 16
    windows (about 40 s). ``gpu``: width 128, 2000 steps of 64 windows.
    """
    d_model, steps, batch_size = _SIZES[validate_tier(tier)]
    gpt = GPTConfig(block_size=256, n_layer=2, n_head=4, d_model=d_model, d_ff=4 * d_model, ffn="dense")
    train = TrainConfig(steps=steps, batch_size=batch_size, lr=3e-3, warmup=min(20, steps // 5),
                        eval_every=max(steps // 4, 1), eval_batches=4)
    return CodeRecipe(gpt=gpt, train=train, fim_rate=0.5)


def _check_rate(fim_rate: object) -> float:
    rate = check_real("fim_rate", fim_rate, 0.0)
    if rate > 1:
        raise ValueError(f"fim_rate must be in [0, 1], got {fim_rate}")
    return rate


def _check_documents(documents: object) -> list[str]:
    if isinstance(documents, str) or not isinstance(documents, Sequence):
        raise TypeError(f"documents must be a sequence of strings, got {type(documents).__name__}")
    if len(documents) < 2:
        raise ValueError(f"documents must hold at least 2 documents (train and validation), got {len(documents)}")
    for i, doc in enumerate(documents):
        if not isinstance(doc, str):
            raise TypeError(f"documents[{i}] must be a str, got {type(doc).__name__}")
        _check_text(f"documents[{i}]", doc)
    return list(documents)


def _check_text(name: str, text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    if any(ord(ch) > 127 for ch in text):
        raise ValueError(f"{name} must be ASCII text (the model reads bytes)")
    bad = [repr(s) for s in _SENTINELS if s in text]
    if bad:
        raise ValueError(f"{name} contains the sentinel byte(s) {', '.join(bad)}")
    return text


def fim_example(document: str, rng: random.Random) -> str:
    """Rearrange ``document`` as ``PRE prefix SUF suffix MID middle EOT``; the middle is 1-3 lines."""
    # show: start fim
    lines = document.splitlines(keepends=True)
    span = rng.randint(1, min(3, len(lines)))  # lines in the hole
    start = rng.randint(0, len(lines) - span)
    prefix = "".join(lines[:start])
    middle = "".join(lines[start:start + span])
    suffix = "".join(lines[start + span:])
    # the model sees both sides first, then learns to write the middle
    return PRE + prefix + SUF + suffix + MID + middle + EOT
    # show: end fim


def _encode_document(document: str, fim_rate: float, rng: random.Random) -> str:
    if document and rng.random() < fim_rate:
        return fim_example(document, rng)
    return document + EOT  # ordinary left-to-right text


@dataclass(frozen=True, eq=False, repr=False)
class CodeCorpus:
    """Encoded training examples, split by document into training and validation streams.

    Windows start at an example's first byte half of the time (so that prompts, which begin
    at a document's start, look like training data) and anywhere otherwise.

    Attributes:
        train, val: uint8 streams of concatenated examples, shape (L,).
        starts_train, starts_val: int64 offsets where each example begins.
        n_fim: how many examples are in fill-in-the-middle form.
        vocab_size: 256.
    """

    train: torch.Tensor
    val: torch.Tensor
    starts_train: torch.Tensor
    starts_val: torch.Tensor
    n_fim: int
    vocab_size: int = 256

    def get_batch(self, split: str, *, batch_size: int, block_size: int, generator: torch.Generator,
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` windows of ``split`` for next-byte prediction, shapes (B, T) int64."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        check_int("batch_size", batch_size, 1)
        check_int("block_size", block_size, 1)
        data = self.train if split == "train" else self.val
        starts = self.starts_train if split == "train" else self.starts_val
        if len(data) <= block_size + 1:
            data = data.repeat(block_size // max(len(data), 1) + 2)
        high = len(data) - block_size - 1
        aligned = starts[torch.randint(len(starts), (batch_size,), generator=generator)].clamp(max=high)
        anywhere = torch.randint(high + 1, (batch_size,), generator=generator)
        use_aligned = torch.rand(batch_size, generator=generator) < 0.5
        offsets = torch.where(use_aligned, aligned, anywhere)
        idx = offsets[:, None] + torch.arange(block_size + 1)[None, :]
        window = data[idx].long()
        return window[:, :-1].to(device or "cpu"), window[:, 1:].to(device or "cpu")


def _stream(examples: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(e) for e in examples], dtype=torch.int64)
    starts = torch.cumsum(lengths, 0) - lengths
    data = torch.frombuffer(bytearray("".join(examples).encode("ascii")), dtype=torch.uint8).clone()
    return data, starts


def code_corpus(documents: Sequence[str], fim_rate: float = 0.5, seed: int = 0) -> CodeCorpus:
    """Encode ``documents`` (ASCII source texts), a fraction ``fim_rate`` in FIM form, into a corpus.

    One document in ten (at least one) goes to validation, chosen with ``seed``; the choice of
    documents rearranged and of their holes also comes from ``seed``.

    Raises:
        TypeError: ``documents`` is not a sequence of strings.
        ValueError: fewer than two documents, non-ASCII text, a sentinel byte in a document,
            or ``fim_rate`` outside [0, 1].
    """
    docs = _check_documents(documents)
    rate = _check_rate(fim_rate)
    check_int("seed", seed, 0)
    rng = random.Random(seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    n_val = max(1, len(docs) // 10)
    examples = [_encode_document(docs[i], rate, rng) for i in order]
    n_fim = sum(e.startswith(PRE) for e in examples)
    val, val_starts = _stream(examples[:n_val])
    train, train_starts = _stream(examples[n_val:])
    return CodeCorpus(train=train, val=val, starts_train=train_starts, starts_val=val_starts, n_fim=n_fim)


def train_code_gpt(documents: Sequence[str], recipe: CodeRecipe, seed: int = 0, *,
                   progress: bool = False) -> TrainResult:
    """Train the code model of ``recipe`` on ``documents`` with :func:`labkit.lm.train_gpt`.

    Trained directly (not cached): a section trains it on the templated sources it needs.

    Returns:
        :class:`labkit.lm.train.TrainResult`: the model in eval mode and its loss history.
    """
    if not isinstance(recipe, CodeRecipe):
        raise TypeError(f"recipe must be a CodeRecipe, got {type(recipe).__name__}")
    corpus = code_corpus(documents, recipe.fim_rate, seed)
    return train_gpt(recipe.gpt, corpus, recipe.train, seed=seed, progress=progress)  # type: ignore[arg-type]


def _check_model(model: object) -> GPT:
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a labkit.lm.GPT, got {type(model).__name__}")
    return model


@torch.no_grad()
def _generate(model: GPT, prompt: str, *, n: int, max_new_tokens: int, temperature: float, seed: int,
              stop: str | None) -> list[str]:
    check_int("n", n, 1)
    check_int("max_new_tokens", max_new_tokens, 1)
    temperature = check_real("temperature", temperature, 0.0)
    check_int("seed", seed, 0)
    if stop is not None and (not isinstance(stop, str) or not stop):
        raise ValueError(f"stop must be a non-empty str or None, got {stop!r}")
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    idx = torch.tensor([list(prompt.encode("ascii"))] * n, dtype=torch.long, device=device)
    out = [bytearray() for _ in range(n)]
    done = [False] * n
    block = model.cfg.block_size
    for _ in range(max_new_tokens):
        logits = model(idx[:, -block:]).logits[:, -1].float().cpu()  # (n, V)
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen)[:, 0]
        for i, b in enumerate(nxt.tolist()):
            if done[i]:
                continue
            if b == ord(EOT) or b > 127:
                done[i] = True
                continue
            out[i].append(b)
            if stop is not None and out[i].endswith(stop.encode("ascii")):
                done[i] = True
        if all(done):
            break
        idx = torch.cat([idx, nxt[:, None].to(device)], dim=1)
    return [bytes(o).decode("ascii").replace(MID, "").replace(PRE, "").replace(SUF, "") for o in out]


def complete(model: GPT, prompt: str, *, max_new_tokens: int = 200, temperature: float = 0.0, n: int = 1,
             seed: int = 0, stop: str | None = None) -> list[str]:
    """Continue ``prompt`` left to right: ``n`` completions, greedy at temperature 0, else sampled.

    Generation ends at the end-of-document byte, after ``stop`` (kept in the text), or after
    ``max_new_tokens`` bytes; a prompt longer than the context is read through its last 256 bytes.

    Returns:
        ``n`` strings, the generated text without the prompt.
    """
    model = _check_model(model)
    return _generate(model, _check_text("prompt", prompt), n=n, max_new_tokens=max_new_tokens,
                     temperature=temperature, seed=seed, stop=stop)


def fill_in_the_middle(model: GPT, prefix: str, suffix: str, *, max_new_tokens: int = 80,
                       temperature: float = 0.0, n: int = 1, seed: int = 0) -> list[str]:
    """Write the text between ``prefix`` and ``suffix``: ``n`` middles, greedy or sampled.

    The prompt is ``PRE prefix SUF suffix MID``. When it would leave fewer than
    ``max_new_tokens`` bytes of context, the prefix keeps its end and the suffix its start
    (each at least a quarter of the context).

    Returns:
        ``n`` strings, each the generated middle (up to the end-of-document byte).
    """
    model = _check_model(model)
    _check_text("prefix", prefix)
    _check_text("suffix", suffix)
    check_int("max_new_tokens", max_new_tokens, 1)
    room = max(model.cfg.block_size - max_new_tokens - 3, model.cfg.block_size // 2)
    if len(prefix) + len(suffix) > room:
        keep_suffix = min(len(suffix), max(room // 4, room - len(prefix)))
        suffix = suffix[:keep_suffix]
        prefix = prefix[len(prefix) - (room - keep_suffix):] if room - keep_suffix < len(prefix) else prefix
    prompt = PRE + prefix + SUF + suffix + MID
    return _generate(model, prompt, n=n, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                     stop=None)
