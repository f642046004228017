"""Serving a search agent: :class:`SearchAgent` (Python) and ``deepretrieval ask`` (CLI).

The agent is the trained model (local, or served by vLLM / any OpenAI-compatible server) run
through the episode runner against the retrieval service (``search_url``, or
``DEEPRETRIEVAL_SEARCH_URL``) or an in-process index — the protocol, prompt and settings of the
agentic task it was trained on.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deepretrieval.agent.runner import Episode, EpisodeRunner
from deepretrieval.catalog import get_task
from deepretrieval.core import agent_protocol as P
from deepretrieval.core import settings as env_settings
from deepretrieval.generation.api import OpenAIChatGenerator, served_models
from deepretrieval.generation.decoding import Decoding, Generator
from deepretrieval.generation.factory import make_generator
from deepretrieval.service.client import ServiceSearcher
from deepretrieval.tasks.agentic import settings_for


class SearchAgent:
    """Ask questions of a search agent::

        agent = SearchAgent(api_url="http://localhost:8000/v1", search_url="http://localhost:8765",
                            task="agent_nq", index="wiki")
        episode = agent.ask("Who wrote The Name of the Rose?")
        print(episode.text, episode.answer)

    ``model``: local folder / hub name / ``.gguf``, or the served model's name with ``api_url``
    (default: the first model the server lists); ``generator``: any object with the generator
    interface (overrides ``model``). ``task``: the agentic task whose protocol settings and
    default index to use; ``index`` / ``settings`` override them. ``max_new_tokens`` is per turn.
    """

    def __init__(self, model: str | None = None, *, api_url: str | None = None,
                 api_key: str | None = None, search_url: str | None = None, searcher=None,
                 task: str = "agent_closedworld", index: str | None = None,
                 settings: P.AgentSettings | None = None, max_new_tokens: int = 256,
                 greedy: bool = True, temperature: float = 1.0, seed: int = 0,
                 generator: Generator | None = None, device: str | None = None, dtype: str | None = None,
                 **generator_kw: Any):

        self.task = get_task(task)
        if not self.task.rollout.episodic:
            raise ValueError(f"task {task!r} is not an agentic task (agent_<set>)")
        self.settings = settings or settings_for(self.task)
        self.index = index or self.task.index
        if generator is not None:
            self.generator = generator
        elif api_url:
            name = model or served_models(api_url, api_key)[0]
            # the tag protocol continues the assistant turn: the server must continue the prefill
            self.generator = OpenAIChatGenerator(str(name), base_url=api_url, api_key=api_key,
                                                 prefill="continue", use_cache=False, **generator_kw)
        elif model:
            self.generator = make_generator(model, device=device, dtype=dtype, **generator_kw)
        else:
            raise ValueError("give a model (local path or hub name), api_url of a served model, "
                             "or a generator")
        if searcher is None and search_url:
            searcher = ServiceSearcher(search_url, token=env_settings.get_str("DEEPRETRIEVAL_SEARCH_TOKEN"))
        self.runner = EpisodeRunner(self.generator, searcher, decoding=Decoding(
            max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature, seed=seed))

    def episodes(self, questions: Sequence[str]) -> list[Episode]:
        out = []
        for q in questions:
            if not isinstance(q, str) or not q.strip():
                raise ValueError("questions must be non-empty strings")
            out.append(Episode(self.settings.rollout.messages(q), self.index, self.settings))
        return out

    def ask_batch(self, questions: Sequence[str]) -> list[Episode]:
        """Run one episode per question (batched turn by turn)."""
        return self.runner.run(self.episodes(questions))

    def ask(self, question: str) -> Episode:
        return self.ask_batch([question])[0]
