"""OpenAI-compatible chat completions client: LLM baselines and models served with vLLM.

* :class:`ChatClient` posts ``/v1/chat/completions`` requests with retries (connection errors,
  408/409/429/5xx, honouring ``Retry-After``) and caches every successful response on disk, keyed
  by the endpoint and the exact request body, so re-running an evaluation costs nothing.
* :class:`OpenAIChatGenerator` implements the generator interface of :mod:`deepretrieval.generation.local`
  on top of it: the task's own chat messages are sent as they are (the server applies its chat
  template once); the answer prefill is sent as a final assistant message to continue
  (``prefill="continue"``, vLLM's ``continue_final_message``) or left out (``"none"``, for
  endpoints that cannot continue an assistant turn; the model then writes the whole answer).

The API key comes from ``OPENAI_API_KEY`` (or ``api_key=``); the base URL from ``base_url=`` or
``OPENAI_BASE_URL``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from deepretrieval.core import settings
from deepretrieval.core.io import write_atomic
from deepretrieval.generation.decoding import Decoding, Prompt, apply_stops

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class LLMAPIError(RuntimeError):
    """A request to the chat endpoint failed for good (after retries, or a non-retryable error)."""


def default_cache_dir() -> Path:
    return settings.cache_dir() / "llm_api"


def chat_completions_url(base_url: str) -> str:
    """``http://host:8000``, ``…/v1`` or the full ``…/v1/chat/completions`` → the endpoint."""
    url = base_url.strip().rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"base URL {base_url!r} is not an http(s) URL")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


class ChatClient:
    """Synchronous, thread-safe chat completions client with retries and a disk cache."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 120.0, max_retries: int = 4, backoff: float = 0.5,
                 max_backoff: float = 30.0, cache_dir: str | os.PathLike | None = None,
                 use_cache: bool = True):
        import httpx

        base_url = base_url or settings.get_str("OPENAI_BASE_URL", DEFAULT_BASE_URL)
        self.url = chat_completions_url(base_url)
        self.api_key = api_key if api_key is not None else settings.get_str("OPENAI_API_KEY")
        if not self.api_key and urlparse(self.url).hostname == "api.openai.com":
            raise ValueError("set OPENAI_API_KEY (or pass --api-url for a local OpenAI-compatible server)")
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.use_cache = use_cache
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self._http = httpx.Client(timeout=timeout, headers=headers)
        self.requests_sent = 0
        self.cache_hits = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # cache ---------------------------------------------------------------------------------
    def cache_key(self, body: Mapping[str, Any]) -> str:
        blob = json.dumps({"url": self.url, "body": body}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> dict | None:
        if not self.use_cache:
            return None
        try:
            return json.loads(self._cache_path(key).read_text())
        except (OSError, ValueError):
            return None

    def _cache_put(self, key: str, response: dict) -> None:
        if not self.use_cache:
            return
        write_atomic(self._cache_path(key), json.dumps(response))

    # requests ------------------------------------------------------------------------------
    def complete(self, body: Mapping[str, Any]) -> dict:
        """POST one chat completions request (or answer it from the cache); returns the JSON."""
        import httpx

        key = self.cache_key(body)
        cached = self._cache_get(key)
        if cached is not None:
            with self._lock:
                self.cache_hits += 1
            return cached
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            delay = min(self.backoff * 2 ** attempt, self.max_backoff)
            try:
                with self._lock:
                    self.requests_sent += 1
                response = self._http.post(self.url, json=dict(body))
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    try:
                        data = response.json()
                        _choices(data)
                    except (ValueError, LLMAPIError) as exc:
                        last = f"malformed response: {exc}"
                    else:
                        self._cache_put(key, data)
                        return data
                elif response.status_code in RETRY_STATUS:
                    last = f"HTTP {response.status_code}: {_error_text(response)}"
                    delay = max(delay, _retry_after(response))
                else:
                    hint = " (check OPENAI_API_KEY)" if response.status_code in (401, 403) else ""
                    raise LLMAPIError(f"{self.url} answered HTTP {response.status_code}{hint}: "
                                      f"{_error_text(response)}")
            if attempt < self.max_retries:
                log.warning("%s: %s; retrying in %.1fs", self.url, last, delay)
                time.sleep(min(delay, self.max_backoff))
        raise LLMAPIError(f"{self.url} failed after {self.max_retries + 1} attempts: {last}")

    def chat(self, model: str, messages: Sequence[Mapping[str, str]], **params: Any) -> list[str]:
        """Texts of the choices of one request (``params`` go into the body as they are)."""
        body = {"model": model, "messages": [dict(m) for m in messages], **params}
        return [text for text, _ in _choices(self.complete(body))]


def _error_text(response) -> str:
    try:
        data = response.json()
        err = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)[:500]
    except ValueError:
        return response.text[:500] or response.reason_phrase


def _retry_after(response) -> float:
    try:
        return min(float(response.headers.get("retry-after", 0)), 60.0)
    except ValueError:
        return 0.0


def _choices(data: Any) -> list[tuple[str, str | None]]:
    """(content, finish_reason) of each choice; a reasoning model's separate
    ``reasoning_content`` is put back as ``<think>…</think>`` in front of the content."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
        raise LLMAPIError("response has no choices")
    out = []
    for choice in data["choices"]:
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise LLMAPIError("choice has no message")
        content = message.get("content")
        content = "" if content is None else str(content)
        thought = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(thought, str) and thought.strip() and "<think>" not in content:
            content = f"<think>{thought.strip()}</think>\n{content.lstrip()}"
        out.append((content, choice.get("finish_reason")))
    return out


class OpenAIChatGenerator:
    """Generator over an OpenAI-compatible chat endpoint (same interface as the local ones).

    ``prefill``: ``"continue"`` sends the answer prefill as a final assistant message and asks the
    server to continue it (vLLM: ``continue_final_message``); ``"none"`` leaves it out.
    Requests of a batch run concurrently (``concurrency``)."""

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                 prefill: str = "none", concurrency: int = 8, extra_body: Mapping[str, Any] | None = None,
                 client: ChatClient | None = None, **client_kw: Any):
        if prefill not in ("none", "continue"):
            raise ValueError(f"prefill must be 'none' or 'continue', not {prefill!r}")
        self.model = model
        self.name = f"openai:{model}"
        self.prefill_mode = prefill
        self.uses_prefill = prefill == "continue"
        self.concurrency = max(1, concurrency)
        self.extra_body = dict(extra_body or {})
        self.client = client or ChatClient(base_url, api_key, cache_dir=cache_dir,
                                           use_cache=use_cache, **client_kw)

    def body(self, prompt: Prompt, decoding: Decoding, seed: int, n: int) -> dict[str, Any]:
        if prompt.raw is not None:
            raise ValueError("a chat endpoint cannot take a raw (original DeepRetrieval) prompt "
                             "string; evaluate with our chat prompt (--prompt-format ours)")
        messages = [dict(m) for m in prompt.messages]
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "max_tokens": decoding.max_new_tokens, "n": n}
        if decoding.greedy:
            body["temperature"] = 0.0
        else:
            body.update(temperature=decoding.temperature, top_p=decoding.top_p)
        body["seed"] = seed
        if self.uses_prefill and prompt.prefill:
            messages.append({"role": "assistant", "content": prompt.prefill})
            body.update(continue_final_message=True, add_generation_prompt=False)
        body.update(self.extra_body)
        return body

    def _one(self, prompt: Prompt, decoding: Decoding, seed: int) -> list[str]:
        texts = [text for text, _ in _choices(self.client.complete(self.body(prompt, decoding, seed, decoding.n)))]
        extra = 1
        while len(texts) < decoding.n:  # servers that ignore ``n``: one more request per sample
            more = _choices(self.client.complete(self.body(prompt, decoding, seed + extra, 1)))
            texts.append(more[0][0])
            extra += 1
        return [apply_stops(t, decoding.stops)[0] for t in texts[: decoding.n]]

    def generate(self, prompts: Sequence[Prompt], decoding: Decoding, *, batch_size: int = 8,
                 seed_offset: int = 0, progress: bool = False) -> list[list[str]]:
        seeds = [decoding.seed + seed_offset + i for i in range(len(prompts))]
        if decoding.greedy:
            seeds = [decoding.seed] * len(prompts)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda ps: self._one(ps[0], decoding, ps[1]), zip(prompts, seeds)))


def served_models(base_url: str, api_key: str | None = None, timeout: float = 30.0) -> list[str]:
    """Model ids a server lists at ``GET /v1/models`` (vLLM serves one)."""
    import httpx

    url = chat_completions_url(base_url).rsplit("/chat/completions", 1)[0] + "/models"
    key = api_key if api_key is not None else settings.get_str("OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(url, headers=headers, timeout=timeout)
        response.raise_for_status()
        ids = [m["id"] for m in response.json().get("data", []) if isinstance(m, dict) and "id" in m]
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        raise LLMAPIError(f"could not list the models at {url} ({exc}); pass the model name") from None
    if not ids:
        raise LLMAPIError(f"{url} lists no models; pass the model name")
    return ids
