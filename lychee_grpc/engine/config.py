"""Engine settings: model, limits, batching. Plain dataclasses with no torch import, so that a
caller can build or read a configuration without loading the model's libraries."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .prompt.template import DEFAULT_INSTRUCTION


@dataclass(frozen=True)
class TextLimits:
    max_query_tokens: int = 1024
    max_tokens_per_document: int = 2048
    max_instruction_tokens: int = 256


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000


@dataclass
class EngineConfig:
    model: str
    revision: str | None = None
    device: str | None = None  # None: cuda when available, else cpu
    dtype: str | None = None  # None: bfloat16 on cuda, float32 on cpu
    attention: str | None = None  # None: flash_attention_2 > sdpa > eager
    default_instruction: str = DEFAULT_INSTRUCTION
    max_documents_per_request: int = 1000
    text_limits: TextLimits = field(default_factory=TextLimits)
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    # Resize bounds before the vision tower; None keeps the checkpoint's own.
    min_image_pixels: int | None = None
    max_image_pixels: int | None = None
    # Batching: documents from all requests meet in one queue.
    max_batch_tokens: int | None = None  # None: 16384 on cuda, 4096 on cpu
    max_batch_documents: int = 256
    max_batch_images: int = 128
    max_wait_ms: float = 2.0
    max_queue_documents: int = 20000
    max_queue_tokens: int = 0  # 0: no bound beyond documents (the app sets the service's bound)
    vision_cache_bytes: int | None = None  # None: 2 GiB on cuda, 256 MiB on cpu
    # Documents' text runs tokenized before, by their text (prompt/run_ids.py): ~4.4 KB for a
    # 100-token document, so 256 MiB hold ~60,000 documents; 0 tokenizes every document.
    token_cache_bytes: int = 256 << 20
    images_on_gpu: bool = True  # resize/normalize images on the model's GPU
    preprocess_threads: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    # Image tokens per request whose vision outputs are computed as the images decode, ahead of
    # their batch (they wait on the GPU: 32768 tokens are ~230 MiB for the 7B); 0 turns it off.
    prefetch_image_tokens: int = 32768
    # After handing a chunk of images to the GPU thread, the preparing thread waits up to this long
    # (without the GIL) while their pixels are made and their tower launched: its Python would
    # otherwise compete with that thread's for the GIL (Explain's tower started ~5 ms later). 0: no wait.
    prefetch_handoff_wait_ms: float = 10.0
    # torch's CPU threads (None: torch's default), for hosts shared with other processes.
    torch_threads: int | None = None
    warmup: bool = True
    # The fused Triton window-attention kernel in the vision tower (CUDA only); its default
    # follows LYCHEE_WINDOW_KERNEL (0 turns it off).
    window_kernel: bool = field(default_factory=lambda: os.environ.get("LYCHEE_WINDOW_KERNEL", "1") != "0")
    # The LM's attention by the Triton kernel of lm/attention_kernel.py instead of flash attention's
    # varlen kernel (CUDA, half precision; checked against flash at start-up); its default follows
    # LYCHEE_LM_ATTENTION_KERNEL (0 turns it off).
    lm_attention_kernel: bool = field(default_factory=lambda: os.environ.get("LYCHEE_LM_ATTENTION_KERNEL", "1") != "0")
    # Fixed reduction orders in every matmul, norm and attention of the LM and the vision tower:
    # a pair's score is bit-identical whatever it is batched with (lm/fused.py, util/invariant.py).
    batch_invariant: bool = False
    # CUDA graphs of small batches (a pair, a few documents: lm/graphs.py) and of one image's
    # tower, captured and checked against the eager path at start-up (CUDA only, never on the CPU;
    # in the batch-invariant mode too, bit for bit: bench.invariance); its default follows
    # LYCHEE_CUDA_GRAPHS (0 turns them off).
    cuda_graphs: bool = field(default_factory=lambda: os.environ.get("LYCHEE_CUDA_GRAPHS", "1") != "0")
    # Images of one tower call that equal another outside a box (Explain's masked cells) run the
    # windows they share once through the window-only blocks (vision/sharing.py); False for A/B runs.
    share_windows: bool = True
    # With cuda_graphs, the tower call of a picture at the executor's TOWER_GRAPH_SIZES with its
    # g x g masked cells (types.grid_cells), and of its cells alone, is captured at start-up for
    # each g here: Explain's default grid, which the app sets from the service's --explain-grid.
    tower_graph_cells: tuple[int, ...] = (4,)
