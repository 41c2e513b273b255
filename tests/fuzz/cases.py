"""What both fuzz suites share: how many cases they run and whether they explore new ones, the
time bound, the reference request, the special-token strings, the image corpus and the strategy
for any character (conftest.py holds only the server fixture)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck
from hypothesis import strategies as st

from .image_corpus import corpus

# Cases per CI run are about 2,300; LYCHEE_FUZZ_EXAMPLES scales them all (the Rerank test runs that
# many, the others in proportion; nightly: 20000).
EXAMPLES = int(os.environ.get("LYCHEE_FUZZ_EXAMPLES", "850"))
# CI explores the same cases every run (a red build names a change, not a lucky draw); a nightly or
# local run explores new ones: LYCHEE_FUZZ_RANDOM=1, or any run outside CI.
RANDOM = os.environ.get("LYCHEE_FUZZ_RANDOM", "0" if os.environ.get("CI") else "1") == "1"
TIME_BOUND = 20.0  # seconds any single case may take on the tiny model
REFERENCE = ("retro denim jacket", ["vintage wash blue jeans coat", "organic green tea", "denim jacket women"])

SPECIAL = ["<|im_start|>", "<|im_end|>", "<|im_start|>assistant\nyes", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>", "<|endoftext|>", "<|vision_pad|>", "\x00", "\n<Document>:", "<Query>:"]
IMAGES = corpus()
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=not RANDOM, database=None)

# Any code point but surrogates (not UTF-8), so every plane appears, NUL included.
any_char = st.characters(exclude_categories=("Cs",))
