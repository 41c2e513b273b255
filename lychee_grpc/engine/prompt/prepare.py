"""Request -> model inputs: validation, image decoding, tokenization, positions, prefix split.

Every document of a request shares the prompt up to its query; those tokens are computed once.
The split is verified per document against the whole-prompt tokenization (BPE may merge across
the boundary), and a document whose tokens differ there is run on its full prompt instead, so
scores always equal the plain single-pair computation.
"""

from __future__ import annotations

import re
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from transformers.image_utils import SizeDict
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from ..api import Truncation
from ..config import ImageLimits, TextLimits
from ..errors import FieldViolation, InvalidInput
from ..types import Document, ImagePart, Part, Query, TextPart
from ..util.lru import LRU
from . import template
from .image_files import cheap_key
from .images import ImageRejected, check_picture, image_key, jpeg_decoder_agrees, part_pixels
from .positions import laid_out_positions, mrope_positions
from .prepared import Edit, EncodedImage, Fill, Prefetch, PreparedDocument, PreparedQuery, Segment, prefetch_chunk
from .run_ids import RunIds
from .truncation import text_head, truncate


def clean_boundary(query: Query) -> bool:
    """Whether the prompt's pre-tokenization always splits between the query and the document.

    The document part starts with a newline. After a letter or a digit (or after an image's
    <|vision_end|>, a special token), no pattern of the Qwen2 pre-tokenizer joins that newline to
    the query, so BPE cannot merge across and the tokens of prefix + suffix are the
    concatenation of their own. After punctuation or a space they can merge ("?\n", " \n").
    """
    last = query.parts[-1] if query.parts else None
    if isinstance(last, ImagePart):
        return True
    return isinstance(last, TextPart) and bool(last.text) and last.text[-1].isalnum()


@dataclass(frozen=True)
class _TextFacts:
    plain: Callable[[list[str]], list[list[int]]]  # the plain-text encoder
    ordinary: Callable[[list[str]], list[list[int]]] | None  # the tokenizer as it is (encode_pieces)
    ordinary_ascii: Callable[[list[str]], list[list[int]]] | None  # `ordinary` for ASCII texts (_ascii_copy)
    added: re.Pattern[str] | None  # every added token's string (encode_pieces)
    chars_per_token: int


# Per tokenizer, the encoders and the characters-per-token bound: with the real Qwen2.5 vocabulary
# (151,643 ranks) making them takes ~1.5 s each, which engines sharing a loaded model pay once.
_TEXT_FACTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _text_facts(tokenizer) -> _TextFacts:
    facts = _TEXT_FACTS.get(tokenizer)
    if facts is None:
        ordinary = _backend_copy(tokenizer, plain=False)
        added = _added_token_pattern(tokenizer) if ordinary is not None else None
        usable = ordinary is not None and added is not None
        ascii_copy = _ascii_copy(ordinary) if usable else None
        facts = _TEXT_FACTS[tokenizer] = _TextFacts(
            plain=_plain_text_encoder(tokenizer),
            ordinary=_batch_encoder(ordinary) if usable else None,
            ordinary_ascii=_batch_encoder(ascii_copy) if ascii_copy is not None else None,
            added=added, chars_per_token=_max_chars_per_token(tokenizer))
    return facts


def _added_token_facts(tokenizer) -> dict[int, tuple]:
    return {i: (t.content, t.special, t.normalized, t.lstrip, t.rstrip, t.single_word)
            for i, t in tokenizer.get_added_tokens_decoder().items()}


def _ascii_copy(copy):
    """`copy` without its NFC normalizer, which leaves ASCII text as it is: the same ids for ASCII
    text, without the normalization pass (~12% of the tokenizer's time on T100's documents;
    bench/RESULTS.md, "Preparing T100's documents"). It shares `copy`'s model (vocabulary,
    merges, BPE cache) rather than parsing another. None when the normalizer is not NFC, or the
    copy's added tokens do not come out as the original's."""
    from tokenizers import Tokenizer, normalizers

    if not isinstance(copy.normalizer, normalizers.NFC):
        return None
    bare = Tokenizer(copy.model)
    for component in ("pre_tokenizer", "post_processor", "decoder"):
        if getattr(copy, component) is not None:
            setattr(bare, component, getattr(copy, component))
    added = copy.get_added_tokens_decoder()
    for token_id in sorted(added):  # in id order, each takes its own id again
        token = added[token_id]
        if token.special:
            bare.add_special_tokens([token])
        else:
            bare.add_tokens([token])
    bare.encode_special_tokens = copy.encode_special_tokens
    probe = "x <b> 12 y\n\n  z" + "".join(t.content for t in added.values())
    if (_added_token_facts(bare) != _added_token_facts(copy)
            or bare.encode(probe, add_special_tokens=False).ids != copy.encode(probe, add_special_tokens=False).ids):
        return None
    return bare


def _backend_copy(tokenizer, plain: bool):
    """A copy of the Rust tokenizer behind `tokenizer` (None when it has none), with special-token
    strings tokenized as ordinary text when `plain` (the setting is per tokenizer, so the
    processor's own stays as it is). The copy drops whatever padding/truncation the last
    processor call left on the original."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.encode_special_tokens = plain
    copy.no_padding()
    copy.no_truncation()
    return copy


def _batch_encoder(copy) -> Callable[[list[str]], list[list[int]]]:
    """Texts -> ids through a backend copy; `encode_batch_fast` skips the character offsets we
    never read: the same ids, ~20% sooner than `encode_batch`."""
    encode = getattr(copy, "encode_batch_fast", copy.encode_batch)
    return lambda texts: [e.ids for e in encode(texts, add_special_tokens=False)] if texts else []


def _plain_text_encoder(tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """Texts -> token ids with special-token strings tokenized as ordinary text (user text never
    becomes structure)."""
    plain = _backend_copy(tokenizer, plain=True)
    if plain is None:
        return lambda texts: tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return _batch_encoder(plain)


def _added_token_pattern(tokenizer) -> re.Pattern[str] | None:
    """Every added token's string (special or not), longest first: a search finds what the
    tokenizer's added-vocabulary pass would split off (leftmost, then longest, as its matcher
    does). None when some added token is matched in another way (after normalization, or eating
    whitespace beside it, or only as a whole word): then no sequence takes the ordinary path."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    added = list(backend.get_added_tokens_decoder().values())
    if not added or any(t.normalized or t.lstrip or t.rstrip or t.single_word for t in added):
        return None
    contents = sorted({t.content for t in added if t.content}, key=len, reverse=True)
    return re.compile("|".join(re.escape(c) for c in contents))


def _ordinary_path_takes(added: re.Pattern[str], text: str, markers: Sequence[tuple[int, int]],
                         tail_checked: bool = False) -> bool:
    """`encode_pieces`' condition for its ordinary path: the added-token strings `added` finds in
    a rendered `text` are exactly its `markers` ([start, end) in `text`, in order), as finditer
    would list them. Then the tokenizer splits `text` at its markers and nowhere else, before BPE.
    With `tail_checked`, what follows the last of `markers` is a tail that passed on its own
    (`_suffix_tail`) and is not searched again."""
    pos = 0
    for span in markers:
        found = added.search(text, pos)
        if found is None or found.span() != span:
            return False
        pos = span[1]
    return tail_checked or added.search(text, pos) is None


def _run_takes(added: re.Pattern[str], run: str, after: str, marker_end: int) -> bool:
    """`_ordinary_path_takes` for one text run of a suffix followed by `after` (a marker's string,
    or the tail's text, whose first marker ends at `marker_end`): the added-token strings found
    there are exactly that marker."""
    at = len(run)
    return _ordinary_path_takes(added, run + after, ((at, at + marker_end),), tail_checked=True)


def _max_chars_per_token(tokenizer) -> int:
    """A bound on the characters of user text one token can stand for. A byte-level BPE token
    covers at most as many bytes as its vocabulary string has characters, an added token its
    content; NFC normalization can shrink text to a third of its bytes (Hangul jamo), hence 4x."""
    vocab = tokenizer.get_vocab()
    longest = max((len(token) for token in vocab), default=1)
    return 4 * max(longest, 1)


class _Ready:
    """An outcome known at once (an image looked up on the preparing thread), read as a future's:
    `result()` gives its value or raises its exception."""

    __slots__ = ("_outcome",)

    def __init__(self, outcome: tuple[EncodedImage, bool] | Exception):
        self._outcome = outcome

    def result(self) -> tuple[EncodedImage, bool]:
        if isinstance(self._outcome, Exception):
            raise self._outcome
        return self._outcome


_Outcome = Future | _Ready


@dataclass(frozen=True)
class EarlyDecodes:
    """`Preprocessor.start_decoding`'s decodes: each document's image outcomes, in order."""

    outcomes: list[list[_Outcome]]


@dataclass
class _LaidOut:
    """`Preprocessor._plan_laid_out`'s plan: by document, its text runs; the distinct runs; and
    their ids, computed (`done`) or on their way (`pending`, a decode task's)."""

    plans: dict[int, list[str]]
    pending: Future | None
    runs: list[str]
    done: list[Sequence[int]] | None = None

    def ids(self, tokenize: Callable[[list[str]], list[Sequence[int]]]) -> list[Sequence[int]]:
        """The runs' ids; `tokenize` makes them here when the task has not started yet (the decode
        threads busy with another request's images), rather than waiting behind that work."""
        if self.done is None:
            assert self.pending is not None
            done: list[Sequence[int]] = tokenize(self.runs) if self.pending.cancel() else self.pending.result()
            self.done = done
            return done
        return self.done


# A likely cached image up to this size is looked up on the preparing thread: its content key
# takes <= ~50 us there (SHA-256 at ~1.4 GB/s). A larger one is a decode task's, so that their
# hashes run in parallel (hashlib releases the GIL).
INLINE_LOOKUP_BYTES = 1 << 16


# A masked picture's base pixels are read-only (every cell shares them) and are read here, never
# written: stacked or pinned into copies. torch warns on any view of read-only memory.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning,
                        module=__name__)


def _fill_of(part: ImagePart) -> Fill | None:
    """What a masked picture fills into its base's pixels (None for any other image)."""
    given = part.picture
    if given is None or given.colour is None or given.box is None:
        return None
    return Fill(given.box, (int(given.colour[0]), int(given.colour[1]), int(given.colour[2])))


def _memory(picture: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    """Where a picture's pixels lie and how: equal for views of one memory alike (a masked
    picture's cells)."""
    return picture.data_ptr(), picture.stride()


def _pinned(picture: torch.Tensor) -> torch.Tensor:
    """`picture` (uint8 [3, h, w], a view of [h, w, 3] memory) in pinned memory, as it lies: the
    decoders pin theirs; a masked picture's shared base is pinned here, once per batch."""
    if picture.is_pinned():
        return picture
    out = torch.empty((picture.shape[1], picture.shape[2], 3), dtype=torch.uint8, pin_memory=True)
    out.copy_(picture.permute(1, 2, 0))
    return out.permute(2, 0, 1)


def _box_masks(height: int, width: int, boxes: tuple[tuple[int, int, int, int], ...],
               device: torch.device) -> torch.Tensor:
    """[len(boxes), 1, height, width] bool on `device`: True inside each box (x, y, width, height)."""
    mask = np.zeros((len(boxes), 1, height, width), dtype=np.bool_)
    for k, (x, y, w, h) in enumerate(boxes):
        mask[k, 0, y : y + h, x : x + w] = True
    out = torch.from_numpy(mask)
    return out.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else out


class Preprocessor:
    """Owns the tokenizer and image processor; safe to call from several threads."""

    def __init__(
        self,
        processor,
        image_token_id: int,
        merge_size: int,
        text_limits: TextLimits,
        image_limits: ImageLimits,
        min_image_pixels: int,
        max_image_pixels: int,
        vision_cached: Callable[[bytes], bool] = lambda key: False,
        image_device: str | None = None,
        decode_threads: int = 4,
        run_ids_bytes: int = 0,
    ):
        self.tokenizer = processor.tokenizer
        facts = _text_facts(self.tokenizer)
        self.plain_text, self._chars_per_token = facts.plain, facts.chars_per_token
        # The ordinary path (see encode_pieces): the tokenizer as it is, and what it splits off.
        self._ordinary, self._added = facts.ordinary, facts.added
        self._ordinary_ascii = facts.ordinary_ascii
        self._instruction_tokens: dict[str, int] = {}
        self._marker_ids: dict[str, int] = {}
        self.image_processor = processor.image_processor
        self.image_token_id = image_token_id
        self.merge_size = merge_size
        self.text_limits = text_limits
        self.image_limits = image_limits
        self.min_image_pixels = min_image_pixels
        self.max_image_pixels = max_image_pixels
        self._vision_cached = vision_cached
        # Resize/normalize/patchify on this device (the model's GPU): one batched pass.
        self.image_device = image_device
        self._pin = image_device is not None and torch.device(image_device).type == "cuda"
        self._fast_jpeg = jpeg_decoder_agrees()
        self._decoder = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="lychee-decode")
        # Cheap key (`_decode_once`) -> content key of images encoded before: which images of a
        # call are likely cached, and so looked up on the preparing thread.
        self._seen: LRU[bytes, bytes] = LRU(max_items=65536)
        # Content key -> grid for images already seen, so a cached image skips decoding.
        self._grids: LRU[bytes, tuple[int, int, int]] = LRU(max_items=65536)
        # Masked pictures' boxes as masks, per picture size and boxes (Explain's 16 cells of a
        # 448x448 picture: 3.2 MB on the GPU).
        self._box_masks: LRU[tuple[int, int, tuple[tuple[int, int, int, int], ...], str], torch.Tensor] = LRU(
            max_items=8, max_size=64 << 20, size_of=lambda mask: mask.numel())
        self._overheads: dict[str, int] = {}
        # Documents' text runs tokenized before (run_ids.py); 0 bytes: every run is tokenized.
        self.run_ids = RunIds(run_ids_bytes)
        self._bounds_tag = f"{min_image_pixels}:{max_image_pixels}".encode()
        self._tail = self._suffix_tail()
        self._image_run = self._image_markers()

    # ---- images -------------------------------------------------------------------------
    def _picture(self, part: ImagePart) -> torch.Tensor:
        return part_pixels(part, self.image_limits, fast_jpeg=self._fast_jpeg, pin=self._pin)

    def _grid(self, height: int, width: int) -> tuple[int, int, int]:
        # Qwen2.5-VL's own resize rule, so the token count is known before any pixel work.
        patch = self.image_processor.patch_size
        h, w = smart_resize(height, width, factor=patch * self.merge_size,
                            min_pixels=self.min_image_pixels, max_pixels=self.max_image_pixels)
        return (1, h // patch, w // patch)

    def encode_image(self, image: ImagePart | bytes) -> tuple[EncodedImage, bool]:
        """Validates and decodes an image (bytes, or a part: its bytes or its given pixels) unless
        its vision output is cached. Returns it (with its decoded `picture`, pinned when it goes
        to a GPU, unless cached) and whether it was cached. Safe to call from several threads: the
        decode and the copies release the GIL."""
        part = image if isinstance(image, ImagePart) else ImagePart(image)
        key = image_key(part) + self._bounds_tag
        grid = self._grids.get(key)
        cached = grid is not None and self._vision_cached(key)
        given = part.picture
        fill = _fill_of(part)
        picture = None
        if not cached:
            if given is not None:
                # Given pixels are not copied here: a masked picture's are its base's, shared by its
                # cells (and by the base itself where Explain gives it decoded), copied to the GPU
                # once where the batch's pixels are made, each cell's box filled there (16 pinned
                # copies of a 448x448 picture kept Explain's decode threads busy for ~4 ms before its
                # tower; bench/RESULTS.md).
                check_picture(given, self.image_limits)
                picture = torch.from_numpy(given.source).permute(2, 0, 1)
            else:
                picture = self._picture(part)
            grid = self._grid(picture.shape[1], picture.shape[2])
        assert grid is not None
        t, h, w = grid
        edit = None
        if given is not None and given.base is not None and given.box is not None:
            edit = Edit(given.base + self._bounds_tag, given.box, (given.height, given.width))
        encoded = EncodedImage(
            key=key,
            grid_thw=grid,
            tokens=t * h * w // self.merge_size**2,
            pixel_values=None,
            decode=lambda: self._picture(part),
            picture=picture,
            edit=edit,
            fill=fill,
        )
        return encoded, cached

    def _decode_all(self, part_lists: Sequence[Sequence[Part]]) -> list[list[_Outcome]]:
        """Starts decoding every image part (the decoders release the GIL). An image repeated within
        the call is decoded once and its parts share one outcome, so one EncodedImage: Explain's 40
        word variants carry the pair's photo, and candidates may share a product photo (each copy
        was decoded, pinned and normalized: Explain's documents took 22.6 ms to prepare on the H200
        host, bench/RESULTS.md).

        An image that is likely cached (seen before, its vision output still held) needs only its
        content key and two lookups: up to INLINE_LOOKUP_BYTES it is looked up here, on this
        thread. As a decode task each, 100 cached images took 8 ms on the H200 host: the tasks
        waited for the GIL until this thread had submitted them all, then for each other
        (bench/RESULTS.md, "Warm image documents"). So is an image given as pixels (Explain's photo
        and its masked cells), which `encode_image` takes without decoding or copying them."""
        started: dict[bytes, list[tuple[ImagePart, _Outcome]]] = {}
        return [[self._decode_once(p, started) for p in parts if isinstance(p, ImagePart)] for parts in part_lists]

    def _decode_once(self, part: ImagePart, started: dict[bytes, list[tuple[ImagePart, _Outcome]]]) -> _Outcome:
        # A cheap key for any image (its picture's digest, or `cheap_key` of its bytes, which can
        # collide), then the parts compared in full: bytes byte for byte (the same object at once),
        # pictures by digest. The cheap key only predicts a cache hit; the content key decides it.
        key = part.picture.key if part.picture is not None else cheap_key(part.data)
        for other, outcome in started.get(key, ()):
            if other == part:
                return outcome
        seen = self._seen.get(key)
        if part.picture is not None or (
                seen is not None and len(part.data) <= INLINE_LOOKUP_BYTES
                and self._grids.get(seen) is not None and self._vision_cached(seen)):
            try:
                outcome: _Outcome = _Ready(self._encode_noting(part, key))
            except Exception as exc:  # raised where the caller reads it, as a task's would be
                outcome = _Ready(exc)
        else:
            outcome = self._decoder.submit(self._encode_noting, part, key)
        started.setdefault(key, []).append((part, outcome))
        return outcome

    def _encode_noting(self, part: ImagePart, cheap: bytes) -> tuple[EncodedImage, bool]:
        encoded = self.encode_image(part)
        self._seen.put(cheap, encoded[0].key)
        return encoded

    def fill_pixels(self, pending: Sequence[EncodedImage]) -> None:
        """Pixels for decoded images (uint8 [3, h, w] pictures), made on the processing device by
        the image processor's own resize, rescale+normalize and patchify steps, once per group of
        same-size pictures: a few torch calls per group, where the processor's full call made ~50
        per image (25 images: 0.8 ms of this thread's time instead of 1.6-3 ms; bench/RESULTS.md, "History", run 18)."""
        proc = self.image_processor
        device = torch.device(self.image_device) if self.image_device else None
        groups: dict[tuple[tuple[int, ...], tuple[int, int, int]], list[tuple[EncodedImage, torch.Tensor]]] = {}
        for image in pending:
            if image.picture is None:
                raise RuntimeError("fill_pixels needs decoded pictures")
            groups.setdefault((tuple(image.picture.shape), image.grid_thw), []).append((image, image.picture))
        size = SizeDict(shortest_edge=self.min_image_pixels, longest_edge=self.max_image_pixels)
        for (_, grid), members in groups.items():
            images = [image for image, _ in members]
            pictures = [picture for _, picture in members]
            if device is not None:
                # Each pinned picture copied as it lies in memory (decoders give a [3, h, w] view of
                # [h, w, 3]): asynchronous. Copying into a device batch's [3, h, w] slots is not a plain
                # memcpy and made this thread wait for the GPU (bench/RESULTS.md, "Host-to-device copies
                # of pictures"). The stack runs on the GPU. Pictures that are one memory (a masked
                # picture's cells) are copied once.
                copies: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
                for picture in pictures:
                    if _memory(picture) not in copies:
                        copies[_memory(picture)] = _pinned(picture).to(device, non_blocking=True)
                pictures = [copies[_memory(picture)] for picture in pictures]
            batch = torch.stack(self._with_boxes_filled(images, pictures))
            batch = proc.resize(batch, size=size, resample=proc.resample, factor=proc.patch_size * self.merge_size)
            batch = proc.rescale_and_normalize(batch, proc.do_rescale, proc.rescale_factor, proc.do_normalize,
                                               tuple(proc.image_mean), tuple(proc.image_std))
            patches, grid_h, grid_w = proc.patchify(batch, patch_size=proc.patch_size, merge_size=self.merge_size,
                                                   temporal_patch_size=proc.temporal_patch_size)
            if (1, grid_h, grid_w) != grid:
                raise RuntimeError(f"image processor made grid {(1, grid_h, grid_w)}, expected {grid}")
            for image, pixels in zip(images, patches.unbind(0)):
                image.pixel_values = pixels
                self._grids.put(image.key, grid)

    def _with_boxes_filled(self, images: Sequence[EncodedImage], pictures: list[torch.Tensor]) -> list[torch.Tensor]:
        """`pictures` ([3, h, w] each, on one device) with each masked picture's box filled: the
        cells of one base in one `torch.where` over their boxes' masks (kept per size and boxes:
        Explain's grid repeats), so a few torch calls in all, not a few per cell (this runs on the
        GPU thread beside the documents' preparation, and each call waits for the GIL)."""
        cells: dict[tuple[int, tuple[int, ...]], list[tuple[int, Fill]]] = {}  # by the memory they are made from
        for i, image in enumerate(images):
            if image.fill is not None:
                cells.setdefault(_memory(pictures[i]), []).append((i, image.fill))
        out = list(pictures)
        for members in cells.values():
            base = pictures[members[0][0]]
            boxes = tuple(fill.box for _, fill in members)
            key = (base.shape[1], base.shape[2], boxes, str(base.device))
            masks = self._box_masks.get(key)
            if masks is None:
                masks = _box_masks(base.shape[1], base.shape[2], boxes, base.device)
                self._box_masks.put(key, masks)
            colours = torch.tensor([fill.colour for _, fill in members], dtype=torch.uint8)
            if base.device.type == "cuda":
                colours = colours.pin_memory().to(base.device, non_blocking=True)
            made = torch.where(masks, colours.view(-1, 3, 1, 1), base).unbind(0)
            for (i, _), picture in zip(members, made):
                out[i] = picture
        return out

    def _prefetch_ready(self, pending: list[EncodedImage], chunk: int, prefetch: Prefetch) -> None:
        """Hands `pending` to `prefetch` once it holds `chunk` images, while the request's budget
        of image tokens lasts; `pending` keeps what is not handed over."""
        if prefetch.budget <= 0 or not pending or len(pending) < chunk:
            return
        tokens = sum(image.tokens for image in pending)
        if tokens > prefetch.budget:
            prefetch.budget = 0  # the rest are computed in their batches, as without prefetching
            return
        prefetch.budget -= tokens
        prefetch.start(pending[:])
        pending.clear()

    def certainly_over(self, text: str, max_tokens: int) -> bool:
        """Whether `text` is certainly over `max_tokens`, judged from its length alone: a huge text
        is refused before the tokenizer allocates for all of it (a 24 MB title took ~2 GB)."""
        return len(text) > max_tokens * self._chars_per_token

    def _encode_parts(
        self, parts: Sequence[Part], path: str, violations: list[FieldViolation], pending: list[EncodedImage],
        decoded: list[_Outcome], max_tokens: int, listed: set[int],
    ) -> tuple[list[EncodedImage], int]:
        """`listed`: the ids of the images put in `pending` so far in this call (a repeated image is
        one EncodedImage, whose pixels and tower output are computed once)."""
        images: list[EncodedImage] = []
        cached = 0
        decoded_iter = iter(decoded)
        if not parts:
            violations.append(FieldViolation(f"{path}.parts", "must have at least one part"))
        for i, part in enumerate(parts):
            if isinstance(part, TextPart):
                if not part.text or part.text.isspace():  # as `not strip()`, without copying the text
                    violations.append(FieldViolation(f"{path}.parts[{i}].text", "text is empty"))
                elif self.certainly_over(part.text, max_tokens):
                    violations.append(FieldViolation(f"{path}.parts[{i}].text", f"text is {len(part.text)} "
                                                     f"characters, certainly over the limit of {max_tokens} tokens"))
            elif isinstance(part, ImagePart):
                try:
                    image, hit = next(decoded_iter).result()
                except ImageRejected as exc:
                    violations.append(FieldViolation(f"{path}.parts[{i}].image", str(exc)))
                    continue
                if image.picture is not None and id(image) not in listed:
                    listed.add(id(image))
                    pending.append(image)
                images.append(image)
                cached += hit
            else:
                violations.append(FieldViolation(f"{path}.parts[{i}]", "part has neither text nor image"))
        if len(parts) > 1:
            chars = sum(len(part.text) for part in parts if isinstance(part, TextPart))
            if chars > max_tokens * self._chars_per_token:
                violations.append(FieldViolation(path, f"texts are {chars} characters, certainly over the limit of "
                                                 f"{max_tokens} tokens"))
        return images, cached

    # ---- query --------------------------------------------------------------------------
    def prepare_query(self, query: Query, instruction: str) -> PreparedQuery:
        start = time.perf_counter()
        violations: list[FieldViolation] = []
        pending: list[EncodedImage] = []
        images, _ = self._encode_parts(query.parts, "query", violations, pending,
                                       self._decode_all([query.parts])[0], self.text_limits.max_query_tokens, set())
        if instruction and (self.certainly_over(instruction, self.text_limits.max_instruction_tokens)
                            or self._count_instruction(instruction) > self.text_limits.max_instruction_tokens):
            violations.append(
                FieldViolation(
                    "instruction", f"over {self.text_limits.max_instruction_tokens} tokens"
                )
            )
        if violations:
            raise InvalidInput(violations)
        self.fill_pixels(pending)
        query_pieces = template.parts_pieces(query.parts)  # one pad per image, expanded after tokenization
        prefix_ids = self._expand_pads(self.encode_pieces([template.prefix_pieces(instruction, query_pieces)])[0],
                                       images).tolist()
        query_tokens = len(prefix_ids) - self._prefix_overhead(instruction)
        if query_tokens > self.text_limits.max_query_tokens:
            raise InvalidInput(
                [FieldViolation("query", f"query is {query_tokens} tokens, over the limit of "
                                f"{self.text_limits.max_query_tokens}")]
            )
        # The last token may merge with the document's first characters; leave it to the document.
        shared = len(prefix_ids) - 1
        ids = torch.tensor(prefix_ids[:shared], dtype=torch.long)
        positions = mrope_positions(
            torch.tensor(prefix_ids), self.image_token_id, [im.grid_thw for im in images], self.merge_size
        )
        first_position = int(positions[0, shared])
        positions = positions[:, :shared]
        return PreparedQuery(
            instruction=instruction,
            prefix=Segment(ids=ids, positions=positions, images=list(images)),
            prefix_ids=prefix_ids[:shared],
            query_pieces=query_pieces,
            images=images,
            prepare_ms=(time.perf_counter() - start) * 1e3,
            clean_boundary_ids=prefix_ids if clean_boundary(query) else None,
            first_position=first_position,
        )

    def _count_instruction(self, instruction: str) -> int:
        # Instructions are few (a default and some presets): each is tokenized once.
        count = self._instruction_tokens.get(instruction)
        if count is None:
            count = len(self.plain_text([instruction])[0])
            if len(self._instruction_tokens) < 1024:
                self._instruction_tokens[instruction] = count
        return count

    def _prefix_overhead(self, instruction: str) -> int:
        # Template tokens around the query; depends only on the instruction.
        overhead = self._overheads.get(instruction)
        if overhead is None:
            overhead = len(self.encode_pieces([template.prefix_pieces(instruction, [])])[0])
            if len(self._overheads) < 1024:  # instructions are few; don't grow without bound
                self._overheads[instruction] = overhead
        return overhead

    def encode_pieces(self, sequences: Sequence[Sequence[template.Piece]]) -> list[list[int]]:
        """Token ids of prompts given as pieces: markers become their special token, every text
        run is tokenized as plain text.

        Two paths give those ids. A prompt whose added-token strings are exactly its markers
        (no user text holds one: `_added` finds the markers' spans and nothing else) is tokenized
        whole, as its rendered string, by the ordinary tokenizer: it splits the markers off
        before BPE, so each text run is tokenized on its own, as the literal path does, in one
        text per prompt instead of one per run (bench/RESULTS.md, "The per-call cost"). Every
        other prompt takes the literal path: each run through the plain-text copy, markers
        placed between (all runs of all such prompts in one tokenizer call)."""
        shaped = [template.runs(pieces) for pieces in sequences]
        out: list[list[int] | None] = [None] * len(shaped)
        if self._ordinary is not None and self._added is not None:
            whole: list[int] = []
            texts: list[str] = []
            for i, pieces in enumerate(shaped):
                text, markers = template.render_with_spans(pieces)
                if _ordinary_path_takes(self._added, text, markers):
                    whole.append(i)
                    texts.append(text)
            for i, ids in zip(whole, self._ordinary_ids(texts)):
                out[i] = ids
        literal = [i for i, ids in enumerate(out) if ids is None]
        if literal:
            for i, ids in zip(literal, self._encode_literal([shaped[i] for i in literal])):
                out[i] = ids
        return [ids for ids in out if ids is not None]

    def _suffix_tail(self) -> tuple[list[int], str, int] | None:
        """The ids of template.SUFFIX_TAIL on the ordinary path, its text, and the end of its first
        marker (the tail starts with one); None when that path cannot tokenize it as its markers."""
        if self._ordinary is None or self._added is None:
            return None
        text, markers = template.render_with_spans(template.runs(template.SUFFIX_TAIL))
        if not markers or markers[0][0] != 0 or not _ordinary_path_takes(self._added, text, markers):
            return None
        return self._ordinary([text])[0], text, markers[0][1]

    def _image_markers(self) -> tuple[int, int, int] | None:
        """The ids of an image's three markers, on the ordinary path tokenized as exactly those
        markers; None otherwise, or when some added-token string holds a marker's string and more
        (one could then reach across a marker): no document is laid out from its runs."""
        if self._ordinary is None or self._added is None:
            return None
        markers = (template.IM_START, template.IM_END, template.VISION_START, template.IMAGE_PAD, template.VISION_END)
        backend = self.tokenizer.backend_tokenizer
        if any(marker in token.content and marker != token.content
               for token in backend.get_added_tokens_decoder().values() for marker in markers):
            return None
        text, markers = template.render_with_spans(template.parts_pieces((ImagePart(b"x"),)))
        if not _ordinary_path_takes(self._added, text, markers):
            return None
        ids = self._ordinary([text])[0]
        return (ids[0], ids[1], ids[2]) if len(ids) == 3 else None

    def _encode_text_runs(self, runs: Sequence[str | None]) -> list[Sequence[int] | None]:
        """For each text-only document's suffix run (`template.text_suffix_run`), the ids of the run
        alone, to which the tail's ids are appended to make the suffix's (None where the run is None
        or must take `encode_pieces`).

        The condition is `encode_pieces`' own for its ordinary path (`_ordinary_path_takes`) on the
        rendered suffix (run + tail): its added-token strings are exactly its markers. Then the
        tokenizer splits the tail off at its first marker and tokenizes the run on its own, so its
        ids are the run's followed by the tail's, which are the same for every document and
        computed once. The check stops at the tail's first marker: the rest are the tail's (checked
        once, in `_suffix_tail`). Every document of a text request was rendered, spanned and
        tokenized whole before: this is one string and one search each (T100's documents:
        bench/RESULTS.md, "Preparing T100's documents")."""
        out: list[Sequence[int] | None] = [None] * len(runs)
        if self._tail is None or self._ordinary is None or self._added is None:
            return out
        _, tail_text, first_end = self._tail
        added = self._added
        whole: list[int] = []
        texts: list[str] = []
        for i, run in enumerate(runs):
            if run is None:
                continue
            if _run_takes(added, run, tail_text, first_end):
                whole.append(i)
                texts.append(run)
        for i, ids in zip(whole, self._run_ids(texts)):
            out[i] = ids
        return out

    def _run_ids(self, texts: list[str]) -> list[Sequence[int]]:
        """`_ordinary_ids` of documents' text runs, those tokenized before from `run_ids`."""
        return self.run_ids.ids(texts, self._ordinary_ids)

    def _ordinary_ids(self, texts: list[str]) -> list[list[int]]:
        """The ordinary tokenizer's ids of `texts`, the ASCII ones through its copy without the
        normalizer (the same ids)."""
        assert self._ordinary is not None
        if self._ordinary_ascii is None:
            return self._ordinary(texts)
        plain = [i for i, text in enumerate(texts) if text.isascii()]
        if len(plain) == len(texts):
            return self._ordinary_ascii(texts)
        if not plain:
            return self._ordinary(texts)
        out: list[list[int]] = [[] for _ in texts]
        for i, ids in zip(plain, self._ordinary_ascii([texts[i] for i in plain])):
            out[i] = ids
        others = [i for i, text in enumerate(texts) if not text.isascii()]
        for i, ids in zip(others, self._ordinary([texts[i] for i in others])):
            out[i] = ids
        return out

    def _encode_literal(self, shaped: Sequence[Sequence[template.Piece]]) -> list[list[int]]:
        texts = [piece for pieces in shaped for piece in pieces if isinstance(piece, str)]
        encoded = iter(self.plain_text(texts))
        out: list[list[int]] = []
        for pieces in shaped:
            ids: list[int] = []
            for piece in pieces:
                ids += next(encoded) if isinstance(piece, str) else [self._marker_id(piece)]
            out.append(ids)
        return out

    def _marker_id(self, marker: template.Marker) -> int:
        token_id = self._marker_ids.get(marker.token)
        if token_id is None:
            token_id = self.tokenizer.convert_tokens_to_ids(marker.token)
            if not isinstance(token_id, int) or token_id == self.tokenizer.unk_token_id:
                raise RuntimeError(f"the tokenizer has no special token {marker.token}")
            self._marker_ids[marker.token] = token_id
        return token_id

    def _expand_pads(self, ids: list[int], images: Sequence[EncodedImage]) -> np.ndarray:
        """Token ids with each image's single <|image_pad|> repeated to its token count."""
        arr = np.asarray(ids, dtype=np.int64)
        if not images:
            return arr
        where = np.flatnonzero(arr == self.image_token_id)
        if where.size != len(images):  # text is tokenized as plain text: only our markers make pads
            raise RuntimeError(f"{where.size} image pads for {len(images)} images")
        counts = np.ones(arr.size, dtype=np.int64)
        counts[where] = [image.tokens for image in images]
        return np.repeat(arr, counts)

    # ---- documents ----------------------------------------------------------------------
    def start_decoding(self, query: Query, documents: Sequence[tuple[int, Document]]) -> EarlyDecodes | None:
        """Starts decoding `documents`' images before their query is prepared (a request's first
        documents and its query are prepared in one hop): `prepare_documents` takes them with
        `early`. None where the query has images of its own, which are decoded first."""
        if any(isinstance(part, ImagePart) for part in query.parts):
            return None
        if not any(isinstance(part, ImagePart) for _, doc in documents for part in doc.parts):
            return None
        return EarlyDecodes(self._decode_all([doc.parts for _, doc in documents]))

    def prepare_documents(
        self, query: PreparedQuery, documents: Sequence[tuple[int, Document]], prefetch: Prefetch | None = None,
        truncation: Truncation = Truncation.NONE, max_tokens_per_document: int | None = None,
        early: EarlyDecodes | None = None,
    ) -> list[PreparedDocument]:
        """Validates and encodes documents; raises InvalidInput naming every bad field. With
        `prefetch`, chunks of new images are handed to it as soon as they are decoded. A document
        over `max_tokens_per_document` (None: the configured limit) is refused, or with `Truncation.END`
        has the end of its text cut to fit (images are never cut). `early`: `start_decoding` of
        these documents."""
        limit = max_tokens_per_document or self.text_limits.max_tokens_per_document
        cut_ends = truncation is Truncation.END
        if cut_ends:
            # Text past this many characters is certainly past the limit: cut it before tokenizing
            # (a huge title costs no memory), where without truncation it would be refused.
            documents = [(index, text_head(doc, limit * self._chars_per_token)) for index, doc in documents]
        violations: list[FieldViolation] = []
        pending: list[EncodedImage] = []
        encoded: list[tuple[int, Document, list[EncodedImage], int]] = []
        clean = query.clean_boundary_ids is not None
        laid = self._plan_laid_out(query, documents, limit) if clean else None  # its tokenizing may start here
        if early is not None and len(early.outcomes) != len(documents):
            raise ValueError(f"early decodes of {len(early.outcomes)} documents for {len(documents)}")
        decoded = early.outcomes if early is not None else self._decode_all([doc.parts for _, doc in documents])
        chunk = prefetch_chunk(len({id(future) for futures in decoded for future in futures}))
        listed: set[int] = set()
        for (index, doc), futures in zip(documents, decoded):
            images, cached = self._encode_parts(doc.parts, f"documents[{index}]", violations, pending, futures,
                                                self.text_limits.max_tokens_per_document, listed)
            encoded.append((index, doc, images, cached))
            if not violations and prefetch is not None:
                self._prefetch_ready(pending, chunk, prefetch)
        if violations:
            raise InvalidInput(violations)
        if prefetch is not None:
            self._prefetch_ready(pending, 1, prefetch)  # the last, shorter chunk
        # One <|image_pad|> per image, expanded after tokenization: it is a special token, split off
        # before BPE, so this equals tokenizing every pad (256 per 448x448 image) at a fraction of the work.
        shared = len(query.prefix_ids)
        prefix_ids = np.asarray(query.prefix_ids, dtype=np.int64)
        # Text-only documents after a clean boundary of a text query (whose positions are the tokens'
        # indices): their suffix is their run's ids and the tail's.
        text_ids: list[Sequence[int] | None] = (
            self._encode_text_runs([template.text_suffix_run(doc.parts) for _, doc, _, _ in encoded])
            if clean and not query.images else [None] * len(encoded))
        rest = [k for k, ids in enumerate(text_ids) if ids is None]
        all_ids: list[np.ndarray | None] = [None] * len(encoded)
        if clean:
            # The prefix's tokens cannot change with the document: tokenize only the suffixes.
            prefix = np.asarray(query.clean_boundary_ids, dtype=np.int64)
            fast = self._text_segments(query, text_ids)
            if laid is not None:
                fast.update(self._laid_out_segments(query, laid, {k: encoded[k][2] for k in rest if k in laid.plans}))
                rest = [k for k in rest if k not in fast]
            suffixes = [template.suffix_pieces(template.parts_pieces(encoded[k][1].parts)) for k in rest]
            for k, ids in zip(rest, self.encode_pieces(suffixes)):
                all_ids[k] = np.concatenate((prefix, self._expand_pads(ids, encoded[k][2])))
        else:
            prefix_pieces = template.prefix_pieces(query.instruction, query.query_pieces)
            suffixes = [template.suffix_pieces(template.parts_pieces(doc.parts)) for _, doc, _, _ in encoded]
            for k, ids in enumerate(self.encode_pieces([prefix_pieces + x for x in suffixes])):
                all_ids[k] = self._expand_pads(ids, query.images + encoded[k][2])
            fast = {}
        out: list[PreparedDocument] = []
        for k, (index, doc, images, cached) in enumerate(encoded):
            ids = all_ids[k]
            if ids is None:  # a document after a clean boundary, laid out from its runs' ids
                segment = fast[k]
                doc_tokens = len(segment)
                if doc_tokens <= limit:
                    out.append(PreparedDocument(index=index, id=doc.id, segment=segment, uses_prefix=True,
                                                prompt_tokens=shared + doc_tokens, images=len(images),
                                                cached_images=cached))
                    continue
                ids = np.concatenate((prefix_ids, segment.ids.numpy()))  # truncated or refused below
            doc_tokens = ids.size - shared
            truncated = False
            if doc_tokens > limit and cut_ends:
                def prompt_ids(parts: Sequence[Part], images: list[EncodedImage] = images) -> np.ndarray:
                    return self._document_ids(query, parts, images)

                cut = truncate(self.tokenizer, doc, prompt_ids, shared, limit, doc_tokens)
                if cut is None:
                    violations.append(FieldViolation(
                        f"documents[{index}]",
                        f"document is {doc_tokens} tokens and its images alone exceed the limit of {limit} "
                        "(images are never truncated)"))
                    continue
                (doc, ids), truncated = cut, True
            elif doc_tokens > limit:
                violations.append(
                    FieldViolation(f"documents[{index}]", f"document is {doc_tokens} tokens, over the limit of {limit}")
                )
                continue
            all_images = query.images + images
            ids_t = torch.from_numpy(ids)
            positions = (
                mrope_positions(ids_t, self.image_token_id, [im.grid_thw for im in all_images], self.merge_size)
                if all_images
                else torch.arange(ids.size).expand(3, -1)  # text only: all three axes advance together
            )
            # A clean boundary's ids start with the prefix itself (concatenated above).
            uses_prefix = (clean and not truncated) or bool(np.array_equal(ids[:shared], prefix_ids))
            if uses_prefix:
                segment = Segment(ids=ids_t[shared:], positions=positions[:, shared:], images=images)
            else:
                segment = Segment(ids=ids_t, positions=positions, images=all_images)
            out.append(
                PreparedDocument(
                    index=index,
                    id=doc.id,
                    segment=segment,
                    uses_prefix=uses_prefix,
                    prompt_tokens=int(ids.size),
                    images=len(images),
                    cached_images=cached,
                    truncated=truncated,
                    kept_text=tuple(p.text for p in doc.parts if isinstance(p, TextPart)) if truncated else None,
                )
            )
        if violations:
            raise InvalidInput(violations)
        return out

    def _text_segments(self, query: PreparedQuery, text_ids: Sequence[Sequence[int] | None]) -> dict[int, Segment]:
        """By document, the segments after the shared prefix of text-only documents (those whose
        run ids `text_ids` holds) after a clean boundary of a text query: the prefix's last tokens,
        the run's and the tail's. All their ids make one array and one tensor, split into views, and
        their positions are views of one range (a text token's three positions are its index):
        a torch call or two per document, where each made ~8 (bench/RESULTS.md, "Preparing T100's
        documents")."""
        if self._tail is None or query.clean_boundary_ids is None:
            return {}
        tail = self._tail[0]
        shared = len(query.prefix_ids)
        head = query.clean_boundary_ids[shared:]
        rows: list[int] = []
        flat: list[int] = []
        sizes: list[int] = []
        for k, ids in enumerate(text_ids):
            if ids is None:
                continue
            rows.append(k)
            flat += head
            flat += ids
            flat += tail
            sizes.append(len(head) + len(ids) + len(tail))
        if not rows:
            return {}
        segments = torch.split(torch.from_numpy(np.fromiter(flat, dtype=np.int64, count=len(flat))), sizes)
        # Each document's positions count from `shared`: its range, laid end to end with the others'.
        counts = np.asarray(sizes)
        positions = np.arange(len(flat), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts - shared, counts)
        spans = torch.split(torch.from_numpy(positions).expand(3, -1), sizes, dim=1)
        return {k: Segment(ids=ids_t, positions=pos, images=[]) for k, ids_t, pos in zip(rows, segments, spans)}

    def _plan_laid_out(self, query: PreparedQuery, documents: Sequence[tuple[int, Document]], limit: int
                       ) -> _LaidOut | None:
        """The documents (by position in `documents`) after a clean boundary that are laid out from
        their text runs' ids, each one's runs, and those ids: every document with an image, and a
        text-only one when the query has images (after a text query those take
        `_encode_text_runs`), whose suffix `encode_pieces` would tokenize on its ordinary path.

        That path splits the rendered suffix at its markers only, then tokenizes each text run
        between them on its own. So a document's ids are its runs' ids (each run tokenized alone,
        one tokenizer call for every distinct run of the call) with the markers' ids between them,
        each image's one pad expanded, and the tail's ids; its positions follow from that layout
        (`laid_out_positions`) without scanning the ids. The condition is checked per run, against
        the marker after it (`_run_takes`, the text documents' check too): as `_ordinary_path_takes`
        checks a whole suffix, the added-token strings found there must be exactly the markers, and
        no added-token string holds a marker
        (`_image_markers`), so none can reach across one. A document with more text than `limit`
        tokens can hold is left to the general path (it is refused or truncated there).

        When some document has an image, the runs are tokenized in a decode task, started before the
        images are looked up or decoded, which it overlaps (the tokenizer releases the GIL); if it has
        not started when its ids are needed, they are made on the preparing thread instead. Runs the
        token cache holds (`run_ids`) are not tokenized again; when it holds them all, no task starts. Image
        documents took ~12 ids and positions calls each on the general path (bench/RESULTS.md,
        "Warm image documents")."""
        if self._tail is None or self._added is None or self._image_run is None or query.clean_boundary_ids is None:
            return None
        _, tail_text, first_end = self._tail
        added = self._added
        image_start = template.VISION_START
        max_chars = limit * self._chars_per_token
        plans: dict[int, list[str]] = {}
        with_images = False
        for k, (_, doc) in enumerate(documents):
            runs = [template.DOCUMENT_LEAD]
            chars = 0
            for part in doc.parts:
                if isinstance(part, TextPart):
                    chars += len(part.text)
                    if chars > max_chars:
                        break
                    runs[-1] += part.text
                elif isinstance(part, ImagePart):
                    runs.append("")
                else:
                    break
            else:
                if len(runs) == 1 and not query.images:
                    continue
                last = len(runs) - 1
                if all(_run_takes(added, run, tail_text, first_end) if i == last
                       else _run_takes(added, run, image_start, len(image_start)) for i, run in enumerate(runs)):
                    plans[k] = runs
                    with_images |= last > 0
        if not plans:
            return None
        unique = list({run: None for runs in plans.values() for run in runs if run})
        known = self.run_ids.known(unique)
        if known is not None:  # every run tokenized before: no task to start or wait for
            return _LaidOut(plans, None, unique, known)
        if with_images:
            return _LaidOut(plans, self._decoder.submit(self._run_ids, unique), unique)
        return _LaidOut(plans, None, unique, self._run_ids(unique))

    def _laid_out_segments(self, query: PreparedQuery, laid: _LaidOut, images: dict[int, list[EncodedImage]]
                           ) -> dict[int, Segment]:
        """By document (a key of `images`, its encoded images), its segment after the shared
        prefix, laid out as `_plan_laid_out` planned."""
        assert self._tail is not None and self._image_run is not None and query.clean_boundary_ids is not None
        ids_of = dict(zip(laid.runs, laid.ids(self._run_ids)))
        ids_of[""] = []
        tail_ids = self._tail[0]
        vs, pad, ve = self._image_run
        head = query.clean_boundary_ids[len(query.prefix_ids):]
        out: dict[int, Segment] = {}
        for k, doc_images in images.items():
            runs = laid.plans[k]
            flat = [*head, *ids_of[runs[0]]]
            blocks: list[tuple[int, tuple[int, int, int]]] = []
            for image, run in zip(doc_images, runs[1:]):
                flat.append(vs)
                blocks.append((len(flat), image.grid_thw))
                flat += [pad] * image.tokens
                flat.append(ve)
                flat += ids_of[run]
            flat += tail_ids
            ids = torch.from_numpy(np.asarray(flat, dtype=np.int64))
            positions = laid_out_positions(query.first_position, len(flat), blocks, self.merge_size)
            out[k] = Segment(ids=ids, positions=torch.from_numpy(positions), images=doc_images)
        return out

    def _document_ids(self, query: PreparedQuery, parts: Sequence[Part], images: list[EncodedImage]) -> np.ndarray:
        """The whole prompt's ids for one document, tokenized as `prepare_documents` does."""
        suffix = template.suffix_pieces(template.parts_pieces(parts))
        if query.clean_boundary_ids is not None:
            prefix = np.asarray(query.clean_boundary_ids, dtype=np.int64)
            return np.concatenate((prefix, self._expand_pads(self.encode_pieces([suffix])[0], images)))
        prefix_pieces = template.prefix_pieces(query.instruction, query.query_pieces)
        return self._expand_pads(self.encode_pieces([prefix_pieces + suffix])[0], query.images + images)
