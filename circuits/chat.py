"""Chat models for explaining and judging: one run here, or an OpenAI-compatible endpoint.

A `Chat` replies to chat messages greedily (`Chat.complete`) and gives the probability of one of
two answers as the first token of its reply (`Chat.probabilities`), which is how
`circuits.explain` asks its scorer for judgements. `LocalChat` runs any causal LM that
`circuits.load_model` opens; `OpenAIChat` posts to ``{url}/chat/completions``; `open_chat`
picks one from a name or URL.
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from circuits.models import Model

__all__ = ["Messages", "Chat", "LocalChat", "OpenAIChat", "open_chat"]

Messages = list[dict[str, str]]
"""Chat messages: ``[{"role": "system" | "user" | "assistant", "content": text}]``."""


class Chat(Protocol):
    """A language model that answers chat messages."""

    def describe(self) -> dict[str, Any]:
        """What it is, recorded with every explanation and part of the cache key."""
        ...

    def complete(self, messages: Messages, *, max_tokens: int) -> str:
        """Its greedy reply to ``messages``."""
        ...

    def probabilities(
        self, conversations: Sequence[Messages], answers: tuple[str, str]
    ) -> list[float]:
        """For each conversation, the probability of ``answers[0]`` against ``answers[1]`` as
        the first token of the reply."""
        ...


class LocalChat:
    """A causal LM run here (``circuits.load_model(...)``) as a `Chat`.

    Messages are rendered with the tokenizer's chat template (its generation prompt opened);
    a tokenizer without one gets ``"role: content"`` lines and ``"assistant:"``. Probabilities
    come from one batched forward: the logits of each answer's first token at the last position,
    softmaxed over the two answers.
    """

    def __init__(self, model: Model, *, name: str | None = None, batch_size: int = 8):
        self.model, self.name, self.batch_size = model, name, batch_size
        self._fingerprint: str | None = None

    def describe(self) -> dict[str, Any]:
        if self._fingerprint is None:
            self._fingerprint = self.model.fingerprint()
        return {
            "kind": "local",
            "model": self.name or repr(self.model),
            "sha256": self._fingerprint,
        }

    def _render(self, messages: Messages) -> tuple[str, bool]:
        """(text, whether the text already holds its special tokens)."""
        tokenizer = self.model.tokenizer
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return text, True
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join([*lines, "assistant:"]), False

    def complete(self, messages: Messages, *, max_tokens: int) -> str:
        text, templated = self._render(messages)
        batch = self.model.tokenize([text], add_special_tokens=not templated)
        with torch.no_grad():
            new = self.model.generate(batch, max_new_tokens=max_tokens)[0].tolist()
        return self.model.tokenizer.decode(new, skip_special_tokens=True).strip()

    def probabilities(
        self, conversations: Sequence[Messages], answers: tuple[str, str]
    ) -> list[float]:
        tokenizer = self.model.tokenizer
        ids = [tokenizer.encode(a, add_special_tokens=False)[0] for a in answers]
        if ids[0] == ids[1]:
            raise ValueError(f"the answers {answers} start with the same token")
        result: list[float] = []
        for start in range(0, len(conversations), self.batch_size):
            rendered = [self._render(c) for c in conversations[start : start + self.batch_size]]
            batch = self.model.tokenize(
                [text for text, _ in rendered], add_special_tokens=not rendered[0][1]
            )
            with torch.no_grad():
                logits = self.model.forward(batch)  # [batch, pos, vocab]
            last = logits[torch.arange(len(rendered)), batch.last][:, ids].float()  # [batch, 2]
            result += last.softmax(-1)[:, 0].tolist()
        return result


class OpenAIChat:
    """An OpenAI-compatible chat endpoint (``{url}/chat/completions``) as a `Chat`.

    Replies are greedy (temperature 0, seed 0). Probabilities ask for the first token's top
    log-probabilities and softmax the two answers' (matched without case or surrounding space);
    a server that returns none is read from its text instead: 1 or 0 when the reply starts with
    one answer, 0.5 when with neither.

    Args:
        url: The API's base, e.g. ``http://127.0.0.1:8000/v1``.
        model: The model name the server is asked for.
        api_key: Sent as a bearer token; default ``$OPENAI_API_KEY`` (none when unset).
        timeout: Seconds per request.
    """

    def __init__(
        self, url: str, model: str = "default", *, api_key: str | None = None, timeout: float = 120
    ):
        self.url, self.model, self.timeout = url.rstrip("/"), model, timeout
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")

    def describe(self) -> dict[str, Any]:
        return {"kind": "openai", "url": self.url, "model": self.model}

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            f"{self.url}/chat/completions", json.dumps(body).encode(), headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace")
            raise ConnectionError(f"{self.url}: HTTP {error.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError) as error:
            reason = getattr(error, "reason", error)
            raise ConnectionError(
                f"{self.url}: {reason}; is an OpenAI-compatible server listening there?"
            ) from None
        except json.JSONDecodeError:
            raise ConnectionError(f"{self.url}: the reply is not JSON") from None
        if not isinstance(reply, dict) or not reply.get("choices"):
            raise ConnectionError(f"{self.url}: the reply has no choices: {str(reply)[:200]}")
        return reply["choices"][0]

    def complete(self, messages: Messages, *, max_tokens: int) -> str:
        choice = self._post(
            {
                "model": self.model,
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": 0,
                "seed": 0,
            }
        )
        return (choice.get("message") or {}).get("content", "").strip()

    def probabilities(
        self, conversations: Sequence[Messages], answers: tuple[str, str]
    ) -> list[float]:
        wanted = [a.strip().lower() for a in answers]
        result = []
        for messages in conversations:
            choice = self._post(
                {
                    "model": self.model,
                    "messages": messages,
                    "max_tokens": 1,
                    "temperature": 0,
                    "seed": 0,
                    "logprobs": True,
                    "top_logprobs": 10,
                }
            )
            content = ((choice.get("logprobs") or {}).get("content")) or []
            tops = content[0].get("top_logprobs") or [] if content else []
            found = [-math.inf, -math.inf]
            for top in tops:
                token = str(top.get("token", "")).strip().lower()
                if token in wanted:
                    at = wanted.index(token)
                    found[at] = max(found[at], float(top["logprob"]))
            if max(found) > -math.inf:
                result.append(float(torch.tensor(found).softmax(0)[0]))
                continue
            text = (choice.get("message") or {}).get("content", "").strip().lower()
            result.append(
                1.0 if text.startswith(wanted[0]) else 0.0 if text.startswith(wanted[1]) else 0.5
            )
        return result


def open_chat(source: str, *, model_name: str = "default", **load: Any) -> Chat:
    """``http(s)://...``: an `OpenAIChat` asking for ``model_name``; anything else: a
    `LocalChat` of ``circuits.load_model(source, **load)``."""
    if source.startswith(("http://", "https://")):
        return OpenAIChat(source, model_name)
    from circuits.models import load_model

    return LocalChat(load_model(source, **load), name=source)
