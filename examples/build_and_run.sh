#!/usr/bin/env bash
# Build a single-file model from SmolLM2 and ask it something. Run from the repository root
# after `make install`.
set -euo pipefail
model=$(.venv/bin/python scripts/fetch_smollm2.py)
.venv/bin/pack build "$model" -o /tmp/smollm2.pyz
chmod +x /tmp/smollm2.pyz
/tmp/smollm2.pyz -p "The capital of France is" -n 16 --temp 0
echo
# The same weights, run by the bare runtime:
.venv/bin/pack build --no-weights -o /tmp/llamapyz.pyz
/tmp/llamapyz.pyz -m "$model" -p "The capital of France is" -n 16 --temp 0
echo
