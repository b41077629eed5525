"""Feature and neuron dashboards: what a unit reads (top contexts) and what it writes (logits).

For each feature or neuron node (``resid_2/17``; a position suffix is ignored) a dashboard holds:

1. Top-activating contexts: one forward pass per batch of corpus documents reads the
   submodule's activation ``[batch, pos, d_model]``, the dictionary encodes it
   ``[batch, pos, width]``, and the unit's column ``[batch, pos]`` is kept. Each document's
   maximum (first position on ties) ranks it; the ``top_k`` documents are kept with a window of
   tokens around their maximum, every token with its activation. All of this is tensor work per
   batch; nothing loops over tokens in Python.
2. An activation histogram: over the positive activations for SAE features (with ``density``, the
   fraction of tokens where the feature fires), over all activations for neurons.
3. Promoted and suppressed output tokens: the unit's direction in the activation space,
   ``d = decode(e_i) - decode(0)`` (row i of ``W_dec`` for an SAE, the unit vector for a neuron),
   times the unembedding: ``logits = W_U · d`` ``[vocab]``. This is the direct path only: the
   final layer norm is ignored (neither its centring nor its scale is applied) and nothing
   downstream of the submodule is run. It is exact for what the direction adds to the residual
   stream when the submodule writes the residual stream at its own width: ``embed``, ``attn_i``
   (output of the attention block), ``mlp_i`` and ``resid_i`` in every shipped architecture except
   Gemma-2's ``attn_i``, which is read before ``o_proj`` (width heads x head_dim): there, and
   wherever the direction's width differs from the unembedding's, ``promoted``/``suppressed``
   are None and ``logits_note`` says why.
4. Random contexts (``random_k``, seeded): windows around a position drawn uniformly in a
   document drawn uniformly from the corpus, whatever the unit does there (``position`` is the
   drawn one, ``max`` the window's maximum). `circuits.explain` draws its non-activating
   examples from them.
5. ``label``: a short automatic label from the above (tokens the unit fires on -> its top
   promoted token), which diagrams and the explorer use when a node has no annotation.

Dashboards are plain JSON (see `dashboard` for the keys) and are cached on disk when a cache
directory is given (`default_cache_dir`; ``cache_dir=None`` turns caching off). The cache key
hashes the model (its class, config and input and output embedding weights), the submodule's
dictionary (all its weights), the corpus text, the node and the options, so a changed model,
dictionary or corpus never hits an old entry.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from circuits.files import write_text
from circuits.graph import parse_node_name
from circuits.models import tensors_sha256

__all__ = [
    "DASHBOARD_VERSION",
    "dashboard",
    "dashboards",
    "auto_label",
    "auto_labels",
    "default_cache_dir",
    "unit_direction",
    "dashboard_html",
    "write_dashboard_html",
]

DASHBOARD_VERSION = 2
"""Version of the dashboard JSON (part of the cache key)."""


def default_cache_dir() -> Path:
    """``$CIRCUITS_CACHE/dashboards``, else ``~/.cache/circuits/dashboards``."""
    root = os.environ.get("CIRCUITS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "circuits") / "dashboards"


def _unit(node: str) -> tuple[str, str, int]:
    """(position-free name, submodule, index) of a feature or neuron node."""
    parsed = parse_node_name(node)
    if parsed.index is None:
        raise ValueError(
            f"{node!r} is an {parsed.kind} node; dashboards are for features and neurons "
            "(an error node has no single direction to read or write)"
        )
    return f"{parsed.submodule}/{parsed.index}", parsed.submodule, parsed.index


def unit_direction(dictionary: Any, index: int) -> torch.Tensor:
    """The unit's direction ``decode(e_index) - decode(0)``, ``[d_model]``."""
    if not 0 <= index < dictionary.width:
        raise ValueError(
            f"index {index} is out of range for a dictionary of width {dictionary.width}"
        )
    param = next(iter(dictionary.parameters()), None)
    like = {"dtype": param.dtype, "device": param.device} if param is not None else {}
    basis = torch.zeros(2, dictionary.width, **like)  # [2, width]: e_index and 0
    basis[0, index] = 1
    with torch.no_grad():
        decoded = dictionary.decode(basis)  # [2, d_model]
    return decoded[0] - decoded[1]


def _unembedding(model: Any) -> torch.Tensor:
    """The unembedding ``W_U``, ``[vocab, d_model]`` (Hugging Face ``get_output_embeddings``)."""
    getter = getattr(model.torch_model, "get_output_embeddings", None)
    module = getter() if getter is not None else None
    if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
        raise ValueError(
            "dashboards need the model's unembedding; this model has no Hugging Face "
            "get_output_embeddings() (load it as a Hugging Face causal LM)"
        )
    return module.weight


def _corpus_sha256(corpus: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for doc in corpus:
        digest.update(doc.encode("utf-8") + b"\0")
    return digest.hexdigest()


def _token_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    """Each token as text; word-level tokenizers (decode joins with spaces) get their spaces."""
    texts = [tokenizer.decode([i]) for i in ids]
    if len(ids) > 1 and tokenizer.decode(ids) == " ".join(texts):
        texts = [texts[0]] + [" " + t for t in texts[1:]]
    return texts


def _histogram(values: torch.Tensor, bins: int) -> dict[str, list]:
    if values.numel() == 0:
        return {"edges": [], "counts": []}
    low, high = values.min().item(), values.max().item()
    if high <= low:
        high = low + 1e-6
    counts = torch.histc(values.float(), bins=bins, min=low, max=high)
    edges = torch.linspace(low, high, bins + 1)
    return {"edges": edges.tolist(), "counts": [int(c) for c in counts.tolist()]}


def auto_label(board: Mapping[str, Any], *, max_chars: int = 32) -> str:
    """A short label: the tokens the unit fires on most (at its top contexts' maxima), then
    ``→`` its most promoted token, e.g. ``"teachers/doctors → are"``."""
    tops = Counter()
    for ctx in board.get("contexts") or []:
        at = ctx["position"] - ctx["start"]
        if 0 <= at < len(ctx["tokens"]):
            tops[ctx["tokens"][at].strip() or repr(ctx["tokens"][at])] += 1
    fires = "/".join(token for token, _ in tops.most_common(2))
    promoted = board.get("promoted") or []
    label = fires
    if promoted:
        label += (" → " if fires else "→ ") + (promoted[0]["token"].strip() or promoted[0]["token"])
    label = label or board.get("node", "")
    return label if len(label) <= max_chars else label[: max_chars - 1] + "…"


def read_dashboards(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Dashboards saved by ``circuits dashboard -o FILE.json``: ``{node name: dashboard}``.

    Raises:
        ValueError: naming the file, when it is not UTF-8 JSON, not an object of dashboards, or
            a dashboard lacks what labels are made from.
    """
    path = Path(path)
    try:
        boards = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"{path}: not a dashboards file ({type(error).__name__})") from None
    if not isinstance(boards, dict) or not all(isinstance(b, dict) for b in boards.values()):
        raise ValueError(f"{path}: expected a JSON object {{node name: dashboard}}")
    for name, board in boards.items():
        try:
            if not isinstance(board["contexts"], list):
                raise TypeError
            board.get("label") or auto_label(board)
        except (KeyError, TypeError, IndexError, AttributeError):
            raise ValueError(
                f"{path}: {name!r} is not a dashboard (write them with `circuits dashboard "
                "NODES -o FILE.json`)"
            ) from None
    return boards


def auto_labels(boards: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """``{name: auto_label(board)}``, for `viz.diagram.diagram`'s ``labels``."""
    return {name: board.get("label") or auto_label(board) for name, board in boards.items()}


def dashboards(
    model: Any,
    dictionaries: Mapping[str, Any],
    nodes: Sequence[str],
    corpus: Sequence[str],
    *,
    top_k: int = 10,
    n_tokens: int = 10,
    bins: int = 20,
    before: int = 12,
    after: int = 4,
    random_k: int = 0,
    seed: int = 0,
    batch_size: int = 16,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, dict[str, Any]]:
    """Dashboards of several nodes from one pass over the corpus (see `dashboard`).

    Returns:
        ``{position-free node name: dashboard}`` in the order of ``nodes``.
    """
    if not corpus:
        raise ValueError("the corpus is empty")
    _unembedding(model)  # fail before the corpus pass, not after
    units = {}
    for node in nodes:
        name, sub, index = _unit(node)
        if sub not in dictionaries:
            raise ValueError(
                f"no dictionary for {sub}; load one (e.g. dictionaries 'neurons' for neuron "
                f"nodes) that covers {sub}"
            )
        if not 0 <= index < dictionaries[sub].width:
            raise ValueError(
                f"{name}: index out of range for {sub}'s width {dictionaries[sub].width}"
            )
        units[name] = (sub, index)
    options = {
        "top_k": top_k,
        "n_tokens": n_tokens,
        "bins": bins,
        "before": before,
        "after": after,
        "random_k": random_k,
        "seed": seed,
    }
    results: dict[str, dict[str, Any]] = {}
    keys: dict[str, str] = {}
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        model_print, corpus_print = model.fingerprint(), _corpus_sha256(corpus)
        dict_prints = {
            sub: tensors_sha256(dictionaries[sub].state_dict().values())
            for sub, _ in units.values()
        }
        for name, (sub, _) in units.items():
            record = {
                "version": DASHBOARD_VERSION,
                "node": name,
                "model": model_print,
                "dictionary": dict_prints[sub],
                "corpus": corpus_print,
                "options": options,
            }
            keys[name] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
            path = cache / f"{keys[name]}.json"
            if path.exists():
                results[name] = json.loads(path.read_text(encoding="utf-8"))
    todo = {name: unit for name, unit in units.items() if name not in results}
    if todo:
        fresh = _compute(model, dictionaries, todo, corpus, batch_size=batch_size, **options)
        for name, board in fresh.items():
            results[name] = board
            if cache is not None:
                cache.mkdir(parents=True, exist_ok=True)
                write_text(cache / f"{keys[name]}.json", json.dumps(board, ensure_ascii=False))
    return {name: results[name] for name in units}


def dashboard(
    model: Any,
    dictionaries: Mapping[str, Any],
    node: str,
    corpus: Sequence[str],
    **options: Any,
) -> dict[str, Any]:
    """One node's dashboard (options as for `dashboards`).

    Args:
        model: A `circuits.models.Model`.
        dictionaries: ``{submodule: Dictionary}`` (e.g. ``load_dictionaries(model, "zoo")``;
            ``"neurons"`` for neuron nodes).
        node: A feature or neuron node name; a position suffix is ignored.
        corpus: Documents (strings), e.g. ``circuits.zoo.language.corpus(256, seed=1)``.
        **options: ``top_k`` contexts, ``n_tokens`` promoted/suppressed tokens, histogram
            ``bins``, context window ``before``/``after`` the maximum, ``random_k`` random
            contexts drawn with ``seed``, ``batch_size`` documents per forward, ``cache_dir``
            (None: no cache).

    Returns:
        Plain JSON: ``format``, ``version``, ``node``, ``submodule``, ``index``, ``kind``
        (``feature``, ``neuron``, or ``embed`` for an embedding unit without an SAE),
        ``corpus`` (``docs``, ``tokens``, ``sha256``), ``density`` (fraction of tokens with
        activation > 0), ``max_activation``, ``contexts``
        (``[{"doc", "position", "max", "start", "tokens", "activations"}]``, best first;
        ``position`` is the maximum's token index in the document, ``start`` the window's),
        ``histogram`` (``{"edges", "counts", "of"}``), ``promoted`` / ``suppressed``
        (``[{"token", "id", "value"}]`` or None), ``logits_note``, ``label``.

    Raises:
        ValueError: For an error or output node, a submodule without a dictionary, an index out
            of range, or an empty corpus.
    """
    return next(iter(dashboards(model, dictionaries, [node], corpus, **options).values()))


def _compute(
    model: Any,
    dictionaries: Mapping[str, Any],
    units: Mapping[str, tuple[str, int]],
    corpus: Sequence[str],
    *,
    top_k: int,
    n_tokens: int,
    bins: int,
    before: int,
    after: int,
    random_k: int,
    seed: int,
    batch_size: int,
) -> dict[str, dict[str, Any]]:
    import nnsight

    order = [s.name for s in model.submodules if s.name in {sub for sub, _ in units.values()}]
    names = list(units)
    columns = {sub: [units[n][1] for n in names if units[n][0] == sub] for sub in order}
    owners = {sub: [n for n in names if units[n][0] == sub] for sub in order}
    best_max = {n: torch.empty(0) for n in names}  # [kept docs]
    best_doc = {n: torch.empty(0, dtype=torch.long) for n in names}
    best_pos = {n: torch.empty(0, dtype=torch.long) for n in names}
    values = {n: [] for n in names}  # activations for the histogram
    fired = dict.fromkeys(names, 0)
    n_real = 0
    sparse = {sub: _is_sae(dictionaries[sub]) for sub in order}
    ids_by_doc: list[list[int]] = []
    rows_by_doc: dict[str, dict[int, torch.Tensor]] = {n: {} for n in names}
    drawn = sorted(random.Random(seed).sample(range(len(corpus)), min(random_k, len(corpus))))
    random_rows: dict[str, dict[int, torch.Tensor]] = {n: {} for n in names}
    for start in range(0, len(corpus), batch_size):
        batch = model.tokenize(list(corpus[start : start + batch_size]))
        mask = batch.attention_mask.bool()  # [batch, pos]
        n_real += int(mask.sum())
        ids_by_doc.extend(
            row[: int(length)].tolist()
            for row, length in zip(batch.input_ids, mask.sum(1), strict=True)
        )
        drawn_here = [d for d in drawn if start <= d < start + len(batch)]
        with torch.no_grad():
            with model.trace(batch):
                saved = nnsight.save({sub: model.read(sub) for sub in order})
            for sub in order:
                f = dictionaries[sub].encode(saved[sub])  # [batch, pos, width]
                acts = f[..., columns[sub]].float().cpu()  # [batch, pos, units]
                for j, name in enumerate(owners[sub]):
                    a = acts[..., j]  # [batch, pos]
                    real = a[mask]
                    fired[name] += int((real > 0).sum())
                    values[name].append(real[real > 0] if sparse[sub] else real)
                    doc_max, doc_pos = a.masked_fill(~mask, float("-inf")).max(dim=1)  # [batch]
                    docs = torch.arange(start, start + len(batch))
                    merged_max = torch.cat([best_max[name], doc_max])
                    merged_doc = torch.cat([best_doc[name], docs])
                    merged_pos = torch.cat([best_pos[name], doc_pos])
                    keep = torch.argsort(-merged_max, stable=True)[:top_k]
                    best_max[name] = merged_max[keep]
                    best_doc[name] = merged_doc[keep]
                    best_pos[name] = merged_pos[keep]
                    kept = set(best_doc[name].tolist())
                    for d in kept - set(rows_by_doc[name]):
                        if start <= d < start + len(batch):
                            rows_by_doc[name][d] = a[d - start, : len(ids_by_doc[d])].clone()
                    for d in set(rows_by_doc[name]) - kept:
                        del rows_by_doc[name][d]
                    for d in drawn_here:
                        random_rows[name][d] = a[d - start, : len(ids_by_doc[d])].clone()

    unembed = _unembedding(model)  # [vocab, d_model]
    tokenizer = model.tokenizer
    boards = {}
    for name in names:
        sub, index = units[name]
        dictionary = dictionaries[sub]

        def context(doc: int, pos: int, value: float, rows: Mapping[int, torch.Tensor]) -> dict:
            ids = ids_by_doc[doc]
            lo, hi = max(0, pos - before), min(len(ids), pos + after + 1)
            return {
                "doc": doc,
                "position": pos,
                "max": value,
                "start": lo,
                "tokens": _token_texts(tokenizer, ids[lo:hi]),
                "activations": rows[doc][lo:hi].tolist(),
            }

        contexts = [
            context(doc, pos, value, rows_by_doc[name])
            for value, doc, pos in zip(
                best_max[name].tolist(),
                best_doc[name].tolist(),
                best_pos[name].tolist(),
                strict=True,
            )
        ]
        randoms = []
        for doc in drawn:
            pos = random.Random(f"{seed}-{doc}").randrange(len(ids_by_doc[doc]))
            randoms.append(context(doc, pos, 0.0, random_rows[name]))
            randoms[-1]["max"] = max(randoms[-1]["activations"])
        sae = _is_sae(dictionary)
        all_values = torch.cat(values[name]) if values[name] else torch.empty(0)
        direction = unit_direction(dictionary, index)  # [d_model]
        promoted = suppressed = None
        if direction.shape[-1] == unembed.shape[-1]:
            with torch.no_grad():
                logits = unembed @ direction.to(unembed)  # [vocab]
            k = min(n_tokens, logits.shape[0])
            top, bottom = logits.topk(k), (-logits).topk(k)
            promoted = [
                {"token": tokenizer.decode([i]), "id": i, "value": v}
                for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            ]
            suppressed = [
                {"token": tokenizer.decode([i]), "id": i, "value": -v}
                for v, i in zip(bottom.values.tolist(), bottom.indices.tolist(), strict=True)
            ]
            note = "W_U · d: the unit's direction through the unembedding; final norm ignored"
        else:
            note = (
                f"no output tokens: the direction is {direction.shape[-1]} wide but the "
                f"unembedding reads {unembed.shape[-1]} (this submodule does not write the "
                "residual stream directly)"
            )
        board = {
            "format": "circuits.dashboard",
            "version": DASHBOARD_VERSION,
            "node": name,
            "submodule": sub,
            "index": index,
            "kind": "feature" if sae else ("embed" if sub == "embed" else "neuron"),
            "corpus": {"docs": len(corpus), "tokens": n_real, "sha256": _corpus_sha256(corpus)},
            "density": fired[name] / max(n_real, 1),
            "max_activation": contexts[0]["max"] if contexts else None,
            "contexts": contexts,
            "random": randoms,
            "histogram": {
                **_histogram(all_values, bins),
                "of": "positive activations" if sae else "all activations",
            },
            "promoted": promoted,
            "suppressed": suppressed,
            "logits_note": note,
        }
        board["label"] = auto_label(board)
        boards[name] = json.loads(json.dumps(board, allow_nan=False))
    return boards


def _is_sae(dictionary: Any) -> bool:
    """Whether the dictionary is a sparse one (features) rather than the identity (neurons)."""
    return type(dictionary).__name__ != "Identity"


def dashboard_html(boards: Mapping[str, Mapping[str, Any]], *, title: str = "dashboards") -> str:
    """A static, self-contained HTML page showing dashboards (no scripts, no network)."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font:13px/1.4 system-ui,Helvetica,Arial,sans-serif;margin:16px;color:#222}",
        ".ctx{font-family:monospace;white-space:pre-wrap;margin:2px 0;padding:2px;"
        "border:1px solid #eee}td{padding:1px 6px}td.num{text-align:right}"
        "section{border-top:1px solid #ccc;margin-top:16px}.muted{color:#777}",
        "</style></head><body>",
    ]
    for name, board in boards.items():
        parts.append(f"<section id='{html.escape(name, quote=True)}'>")
        label = html.escape(board.get("label", ""))
        parts.append(f"<h2>{html.escape(name)} <span class='muted'>{label}</span></h2>")
        density = board.get("density")
        parts.append(
            f"<p class='muted'>{html.escape(str(board.get('kind')))}; density "
            f"{density:.4f}; max activation {board.get('max_activation') or 0:.4g}; corpus "
            f"{board['corpus']['docs']} docs, {board['corpus']['tokens']} tokens</p>"
        )
        parts.append("<h3>Top contexts</h3>")
        for ctx in board.get("contexts", []):
            top = max([a for a in ctx["activations"] if a > 0] + [1e-9])
            spans = "".join(
                f"<span title='{a:.4g}' style='background:rgba(33,102,172,"
                f"{max(a, 0) / top * 0.8:.3f})'>{html.escape(t)}</span>"
                for t, a in zip(ctx["tokens"], ctx["activations"], strict=True)
            )
            parts.append(
                f"<div class='ctx'>{spans} <span class='muted'>({ctx['max']:.4g})</span></div>"
            )
        hist = board.get("histogram") or {}
        counts = hist.get("counts") or []
        if counts:
            peak = max(counts) or 1
            bars = "".join(
                f"<rect x='{i * 300 / len(counts):.1f}' y='{60 - 58 * c / peak:.1f}' "
                f"width='{max(300 / len(counts) - 1, 1):.1f}' height='{58 * c / peak:.1f}' "
                "fill='#7a9cc6'/>"
                for i, c in enumerate(counts)
            )
            parts.append(
                f"<h3>Histogram of {html.escape(hist.get('of', 'activations'))}</h3>"
                f"<svg width='300' height='60' xmlns='http://www.w3.org/2000/svg'>{bars}</svg>"
                f"<div class='muted'>{hist['edges'][0]:.3g} … {hist['edges'][-1]:.3g}</div>"
            )
        for key, heading in (("promoted", "Promoted tokens"), ("suppressed", "Suppressed tokens")):
            rows = board.get(key)
            if rows:
                cells = "".join(
                    f"<tr><td>{html.escape(json.dumps(r['token']))}</td>"
                    f"<td class='num'>{r['value']:+.4g}</td></tr>"
                    for r in rows
                )
                parts.append(f"<h3>{heading}</h3><table>{cells}</table>")
        parts.append(f"<p class='muted'>{html.escape(board.get('logits_note', ''))}</p></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_dashboard_html(
    boards: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, **options: Any
) -> Path:
    """Write `dashboard_html` to ``path`` (UTF-8); return the path."""
    path = Path(path)
    write_text(path, dashboard_html(boards, **options))
    return path
