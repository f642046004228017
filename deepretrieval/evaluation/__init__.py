"""Evaluation: ``harness`` (the one harness: a rollout on task rows next to reference systems,
resumable run folders), ``scoring`` (scoring queries and completions like the training reward,
summaries), ``report`` (the report writer, tables, plots, run comparison) and ``single_shot`` (the
single-shot case: one query per row next to the original query). The agentic case is
:mod:`deepretrieval.agent.evaluate`."""
