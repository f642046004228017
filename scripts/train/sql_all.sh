#!/usr/bin/env bash
# The original's scripts/train/sql_all.sh: one run over Spider + BIRD rows (data/sql/sql_all). Not available here; prints what to use instead.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/train.sh"
not_here "one run over Spider + BIRD rows (data/sql/sql_all)" "Train scripts/train/spider.sh and scripts/train/bird.sh, or pass rows of both with DATA=... and both databases with --index."
