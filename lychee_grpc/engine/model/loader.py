"""Loads a Lychee checkpoint (hub id or local folder) through transformers' from_pretrained.

Refuses, with one line naming the cause and the remedy, anything it cannot serve exactly:
an unreachable or missing checkpoint, weights missing from it (transformers would fill them
with random values), "yes"/"no" not being single tokens, too little GPU memory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import EngineConfig
from ..errors import ModelLoadError
from .patch import prepare_model
from .tiny_model import RANDOM_WEIGHTS_FLAG

log = logging.getLogger(__name__)

# bf16 weights of Lychee-Rerank-MM (8.29 B parameters) plus room for activations.
_REAL_MODEL_GIB = 17.0


@dataclass
class LoadedModel:
    # Any: the model's modules and config and the processor's parts are reached by attribute
    # (model.model.language_model.layers, processor.image_processor.patch_size); transformers does
    # not type them.
    model: Any
    processor: Any
    yes_id: int
    no_id: int
    device: torch.device
    dtype: torch.dtype
    attention: str
    random_weights: bool
    parameters: int
    weights: str = ""  # weights_fingerprint(): "" where unknown (a model built in memory)


def pick_device(requested: str | None) -> torch.device:
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"device {requested!r} requested but CUDA is not available on this machine")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(requested: str | None, device: torch.device) -> torch.dtype:
    if requested:
        try:
            dtype = getattr(torch, requested)
        except AttributeError:
            raise ModelLoadError(f"unknown dtype {requested!r}: use bfloat16, float16 or float32") from None
        if not isinstance(dtype, torch.dtype):
            raise ModelLoadError(f"unknown dtype {requested!r}: use bfloat16, float16 or float32")
        return dtype
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def pick_attention(requested: str | None, device: torch.device) -> str:
    if requested:
        return requested
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        major, _ = torch.cuda.get_device_capability(device)
        if major >= 8:
            return "flash_attention_2"
    if hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        return "sdpa"
    return "eager"


def _check_gpu_memory(model: str, device: torch.device) -> None:
    if device.type != "cuda":
        return
    free, total = torch.cuda.mem_get_info(device)
    folder = Path(model)
    need = (
        sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**30 * 1.15
        if folder.is_dir()
        else _REAL_MODEL_GIB
    )
    if free / 2**30 < need:
        raise ModelLoadError(
            f"not enough GPU memory for {model!r}: {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB "
            f"on {device}, about {need:.1f} GiB needed; use a GPU with at least 24 GB, or free this one"
        )


def _token_id(tokenizer, word: str, model: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise ModelLoadError(
            f"{model!r} is not a Lychee-style yes/no reranker: its tokenizer splits {word!r} into {ids}"
        )
    return ids[0]


def check_checkpoint(config: EngineConfig) -> tuple[torch.device, torch.dtype, str]:
    """What can be known before loading: the device, dtype and attention, and that the checkpoint
    exists (a local folder with its config, or a hub id whose config resolves). `serve` calls it
    before binding any port, so a wrong path fails with one line."""
    from transformers import AutoConfig

    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    attention = pick_attention(config.attention, device)
    if config.model.startswith(("/", "./", "../", "~")) and not Path(config.model).expanduser().exists():
        raise ModelLoadError(f"{config.model!r}: no such checkpoint folder")
    if Path(config.model).exists() and not (Path(config.model) / "config.json").exists():
        raise ModelLoadError(f"{config.model!r} is a path but holds no config.json: not a checkpoint folder")
    _check_readable(Path(config.model).expanduser())
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings would bury the one line that says what to do
    try:
        AutoConfig.from_pretrained(config.model, revision=config.revision)
    except (OSError, ValueError) as exc:
        raise _cannot_load(config.model, exc) from None
    finally:
        hub_log.setLevel(level)
    _check_gpu_memory(config.model, device)
    return device, dtype, attention


def _check_readable(folder: Path) -> None:
    """A checkpoint file this user cannot read fails later as "No such file or directory" (seen with
    an image's non-root user and a root-only safetensors file); name it now."""
    if not folder.is_dir():
        return
    unreadable = [p for p in sorted(folder.rglob("*")) if not os.access(p, os.R_OK)]
    if unreadable:
        more = f" and {len(unreadable) - 1} more" if len(unreadable) > 1 else ""
        raise ModelLoadError(
            f"cannot read {str(unreadable[0])!r}{more}: permission denied for this user (uid {os.getuid()}); "
            "make the checkpoint's files readable by the server's user (chmod -R a+rX, or chown)"
        )


def _cannot_load(model: str, exc: BaseException) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    first = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
    return ModelLoadError(
        f"cannot load {model!r}: {first}. Pass --model a local checkpoint folder, or a hub id "
        f"this machine can download{' (HF_HUB_OFFLINE=1 is set)' if offline else ''}"
    )


def load_model(config: EngineConfig) -> LoadedModel:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    device, dtype, attention = check_checkpoint(config)
    log.info("loading %s on %s as %s, attention %s", config.model, device, dtype, attention)
    try:
        processor = AutoProcessor.from_pretrained(config.model, revision=config.revision)
        # With output_loading_info it returns (model, info), which its annotation does not say.
        model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(  # pyright: ignore[reportGeneralTypeIssues]
            config.model,
            revision=config.revision or "main",  # transformers' default revision
            dtype=dtype,
            attn_implementation=attention,
            output_loading_info=True,
        )
    except torch.OutOfMemoryError:
        free, total = torch.cuda.mem_get_info(device)
        raise ModelLoadError(
            f"ran out of GPU memory loading {config.model!r} ({free / 2**30:.1f} GiB free of "
            f"{total / 2**30:.1f} GiB); use a GPU with at least 24 GB, or free this one"
        ) from None
    except (OSError, ValueError) as exc:
        raise _cannot_load(config.model, exc) from None
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise ModelLoadError(
            f"{config.model!r} lacks {len(missing)} weights (e.g. {missing[0]}); refusing to serve random values"
        )
    try:
        model.to(device)
    except torch.OutOfMemoryError:
        raise ModelLoadError(
            f"ran out of GPU memory moving {config.model!r} to {device}; use a GPU with at least 24 GB"
        ) from None
    prepare_model(model)
    tokenizer = processor.tokenizer
    return LoadedModel(
        model=model,
        processor=processor,
        yes_id=_token_id(tokenizer, "yes", config.model),
        no_id=_token_id(tokenizer, "no", config.model),
        device=device,
        dtype=dtype,
        attention=attention,
        random_weights=bool(getattr(model.config, RANDOM_WEIGHTS_FLAG, False)),
        parameters=sum(p.numel() for p in model.parameters()),
        weights=weights_fingerprint(config.model, config.revision),
    )


WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")


def _checkpoint_folder(model: str, revision: str | None) -> Path | None:
    """The folder the weights were read from: `model` itself, or the hub cache's snapshot of it
    (whose path names the commit)."""
    if Path(model).is_dir():
        return Path(model)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, revision=revision, local_files_only=True,
                                      allow_patterns=list(WEIGHT_FILES)))
    except Exception:  # not in the cache in a form we can read: the id and revision stand alone
        return None


def weights_fingerprint(model: str, revision: str | None = None) -> str:
    """A digest of the checkpoint's weight index: the resolved folder, and for each weight file
    its name, size, modification time and first 1 MiB (a safetensors file's header lists every
    tensor with its dtype, shape and offsets; a sharded checkpoint's index maps each to its
    shard). Not the weights' contents (16 GB would take seconds to read at start-up): a
    checkpoint rewritten in place with the same layout, size and time is not told apart."""
    digest = hashlib.sha256(f"{model}\0{revision or ''}".encode())
    folder = _checkpoint_folder(model, revision)
    if folder is not None:
        digest.update(str(folder.resolve()).encode())
        files = sorted({f for pattern in WEIGHT_FILES for f in folder.glob(pattern)})
        for f in files:
            stat = f.stat()
            digest.update(f"\0{f.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
            with open(f, "rb") as handle:
                digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:32]
