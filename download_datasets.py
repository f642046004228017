#!/usr/bin/env python
"""Download DeepRetrieval datasets from the Hugging Face Hub (same flags as the original project).

Thin shell over ``deepretrieval download`` (``deepretrieval/cli/data.py``, library ``deepretrieval/data/download.py``).

    python download_datasets.py --list_only
    python download_datasets.py --categories local_index_search --datasets scifact --output_dir ./data
"""
import sys

from deepretrieval.cli.data import download_main as main

if __name__ == "__main__":
    sys.exit(main())
