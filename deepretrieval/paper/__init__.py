"""The ``paper`` scoring profile: the original DeepRetrieval reward modules (pat-jj/DeepRetrieval
@ 001a563), reproduced on this project's reward tables, nDCG and search results.

* :mod:`deepretrieval.paper.profile` — which profile (``default`` / ``paper``) scores a sample;
* :mod:`deepretrieval.paper.modules` — every original reward module as data (``PAPER_MODULES``);
* :mod:`deepretrieval.paper.engine` — the engine (``paper_score``; ``score_sample`` for
  ``compute_score``);
* :mod:`deepretrieval.paper.sql` — model SQL with the original's semantics on a private copy;
* :mod:`deepretrieval.paper.check` — replay of recorded original rewards (``paper-check``);
* :mod:`deepretrieval.paper.presets` — the original training scripts' per-task values (``ppo``).

The original trainer's dispatch (``data_source`` → reward module) lives with the original names
in :mod:`deepretrieval.tasks.original`, below the catalog, which decides each name's profile.
``docs/profiles.md`` lists every difference from the ``default`` profile.
"""
