"""Data: BEIR loaders, bundled collections, task-row preparation."""
