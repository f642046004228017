#!/usr/bin/env python
"""Rewrite queries with a trained model: a thin shell over ``deepretrieval rewrite``.

    python query_rewrite.py "Vitamin D lowers fracture risk." --task scifact --api-url http://localhost:8000/v1
    python query_rewrite.py "..." --task scifact_no_reason --model path/to/checkpoint

The original DeepRetrieval call works too (its defaults: the NQ BM25 3B model served by vLLM at
http://localhost:8000/v1/chat/completions, temperature 0.7, 512 tokens):

    python query_rewrite.py --query "Who wrote Hamlet?" --api_url http://localhost:8000/v1/chat/completions

Run ``python query_rewrite.py --help`` for every option.
"""
import sys

from deepretrieval.cli import main
from deepretrieval.cli.compat import original_rewrite_argv

if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(main(["rewrite", *(original_rewrite_argv(argv) or argv)]))
