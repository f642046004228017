#!/usr/bin/env bash
# The original's scripts/train/wikisql.sh: WikiSQL. Not available here; prints what to use instead.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/train.sh"
not_here "WikiSQL" "No WikiSQL task is defined (deepretrieval tasks lists them); Spider and BIRD are: scripts/train/spider.sh, bird.sh."
