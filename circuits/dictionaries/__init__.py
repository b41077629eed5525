"""Dictionaries: split an activation into sparse features and an error term.

A dictionary maps an activation ``x`` of shape ``[batch, pos, d_model]`` to features
``f = encode(x)`` of shape ``[batch, pos, width]`` and back, ``x_hat = decode(f)``. Everything
downstream sees only that interface, plus ``split(x) -> (f, x - decode(f))``.

Map of this package:

- ``base``: the ``Dictionary`` interface and its implementations. Activation components (the
  nonlinearity an SAE holds): ``ReLU``, ``TopK``, ``BatchTopK``, ``JumpReLU``. Dictionaries:
  ``SAE`` (linear encoder, activation component, linear decoder), ``GatedSAE`` (separate gate and
  magnitude paths), ``Identity`` (neurons).
- ``formats``: files. ``load_dictionary`` reads one dictionary in the dictionary_learning,
  sae-lens, sparsify or GemmaScope layout, converting every format at this boundary to one
  internal layout: ``W_enc [d_model, width]``, ``W_dec [width, d_model]``. ``save_dictionary``
  writes dictionary_learning's layout (``ae.pt`` + ``config.json``). ``DictionaryFormatError``.
- ``mapping``: ``load_dictionaries``, one dictionary per submodule of a model (``embed``,
  ``attn_i``, ``mlp_i``, ``resid_i``) from a directory, a mapping, ``"neurons"``, ``"zoo"``
  (``ZOO_DICTIONARIES``) or a Hub spec; ``sfc_directory_name``.
- ``hub``: Hub specs ``"sae-lens:<release>/<sae_id>"`` and ``"sparsify:<repo_id>"``, resolved
  through the Hugging Face cache (``fetch_dictionaries``); sae-lens's directory of releases
  (``sae_lens_releases``, ``SAELensRelease``); TransformerLens hook names to submodule names
  (``submodule_for_hook``).
- ``training``: ``train_dictionaries``, TopK / BatchTopK / ReLU / JumpReLU SAEs trained on a
  model's activations and saved in the layout ``load_dictionaries`` reads (``TrainedDictionary``).

Files are read without executing code: ``torch.load(..., weights_only=True)``, safetensors, and
``numpy.load(..., allow_pickle=False)``.

All public names are re-exported here. ``ZOO_DICTIONARIES`` is read by ``load_dictionaries`` from
``circuits.dictionaries.mapping``; patch it there.
"""

from circuits.dictionaries.base import (
    SAE,
    BatchTopK,
    Dictionary,
    GatedSAE,
    Identity,
    JumpReLU,
    ReLU,
    Split,
    TopK,
)
from circuits.dictionaries.formats import DictionaryFormatError, load_dictionary, save_dictionary
from circuits.dictionaries.formats import PathLike as PathLike  # public before, not in __all__
from circuits.dictionaries.hub import (
    SAELensRelease,
    fetch_dictionaries,
    sae_lens_releases,
    submodule_for_hook,
)
from circuits.dictionaries.mapping import ZOO_DICTIONARIES, load_dictionaries, sfc_directory_name
from circuits.dictionaries.training import TrainedDictionary, train_dictionaries

__all__ = [
    "ReLU",
    "TopK",
    "BatchTopK",
    "JumpReLU",
    "Dictionary",
    "Split",
    "SAE",
    "GatedSAE",
    "Identity",
    "DictionaryFormatError",
    "load_dictionary",
    "save_dictionary",
    "load_dictionaries",
    "sfc_directory_name",
    "ZOO_DICTIONARIES",
    "fetch_dictionaries",
    "sae_lens_releases",
    "SAELensRelease",
    "submodule_for_hook",
    "train_dictionaries",
    "TrainedDictionary",
]
