"""Run-time defaults, defined once; flags and the archive's baked-in arguments override them."""

from __future__ import annotations

import os


def default_threads() -> int:
    """The cores this process may use (llama-cpp-python's default of half the CPUs is slower)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


N_PREDICT = -1  # until the model stops or the context is full
CTX_SIZE = 4096  # 0: the model's training context
N_BATCH = 512
TEMP = 0.8
TOP_K = 40
TOP_P = 0.95
MIN_P = 0.05
REPEAT_PENALTY = 1.0
SEED = -1  # random
SPEC_TYPE = "auto"  # n-gram drafts in every mode, and a draft model's where there is one
SPEC_DRAFT_N_MAX = 8  # the longest draft (a CPU loses on long drafts that fail early)
SPEC_DRAFT_N_MIN = 0  # a shorter draft than this is not verified
SPEC_DRAFT_START = 2  # a run's first draft length; it doubles while drafts are kept whole
SPEC_NGRAM_MAX = 3  # the longest tail n-gram looked up in the prompt and the output
SPEC_NGRAM_MIN = 1
SPEC_MISSES_BEFORE_PAUSE = 3  # drafts in a row kept not at all, then drafting pauses
SPEC_PAUSE = 8  # steps of that pause (times the pauses so far)
IMAGE_MAX_BYTES = 20_000_000  # an image file (checked before decoding)
IMAGE_MAX_PIXELS = 50_000_000  # width x height, read from the header before decoding
# Recent images' embeddings kept in memory (engine/media/embeddings.py): llava-1.5's 576 x 4096
# floats are 9.4 MB an image, gemma3's 256 x 2560 are 2.6 MB.
IMAGE_EMBED_CACHE_BYTES = 128 << 20
MEDIA_FETCH_SECONDS = 10.0  # the server's fetch of an http(s) image (--allow-remote-media)
# While g sequences generate in one batch, a drafted token costs about 1 / (g + STEP_COST)
# of the step it rides on (a one-token step costs STEP_COST + 1 batch tokens: llama-bench's
# T(k) ~ 0.75 + 0.25 k on this project's 2-core CPU), so drafting pays while the share of
# drafts kept exceeds g / (g + STEP_COST).
SPEC_STEP_COST = 3.0
SPEC_RATE_WEIGHT = 0.3  # how fast the kept share follows the latest draft
SPEC_RATE_RECOVERY = 0.05  # how fast a sequence that stopped drafting grows hopeful again
SPEC_DRAFT_MODEL_START = 4  # a draft model's first draft length (it adapts as n-gram's do)
SPEC_BUSY_TOKENS = 4  # with several requests generating, their rows hold this many tokens at
# most, drafts included: llama-bench here, T(k)/T(1) for k = 1, 2, 3, 4, 6, 8, 16 tokens read
# 1.00, 1.21, 1.24, 1.52, 2.49, 2.85, 6.23 (a token past the fourth costs ~0.4 of a step)
# engine/decoding/pace.py: a draft of k pays while (E[kept] + 1) / T(k + 1) beats 1 / T(1),
# T measured
SPEC_COST_WEIGHT = 0.2  # how fast a row length's measured step time follows the latest step
SPEC_COST_CLIP = 2.0  # a step past this many times the estimate counts as this many (a stall)
SPEC_KEPT_MEMORY = 0.9  # the weight of a draft's outcome left after each later one
SPEC_KEPT_PRIOR_WEIGHT = 2.0  # the prior chance of a token kept counts as this many drafts
SPEC_KEPT_PRIOR_COLD = 0.5  # ... for a draft with no evidence (a draft model's, a 0-token match)
SPEC_KEPT_PRIOR_HALF = 8.0  # ... and its doubt halves at this many tokens of a prompt-lookup match
# A draft's outcomes are learned apart by its evidence (the tokens the n-gram lookup matched),
# in buckets starting at these lengths: a copy in progress drafts long, a chance n-gram short.
SPEC_EVIDENCE_BUCKETS = (1, 2, 3, 4, 6, 9, 13, 21)
SPEC_EVIDENCE_MAX = 32  # a match is followed back this far at most
SPEC_PROBE_AFTER = 8  # plain steps in a row chosen by the costs, then a draft is tried anyway
SPEC_PROBE_LENGTH = 1  # the tokens of that probe
SPEC_PROBE_AFTER_MAX = 64  # the longest wait for a probe (it doubles after each probe lost)
