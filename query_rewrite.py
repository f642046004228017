#!/usr/bin/env python
"""Rewrite queries with a trained model: a thin shell over ``deepretrieval rewrite``.

    python query_rewrite.py "Vitamin D lowers fracture risk." --task scifact --api-url http://localhost:8000/v1
    python query_rewrite.py "..." --task scifact_no_reason --model path/to/checkpoint

Run ``python query_rewrite.py --help`` for every option.
"""
import sys

from deepretrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["rewrite", *sys.argv[1:]]))
