"""Images that equal another of the call outside a box (Explain's masked cells) run the windows
they share once through the tower's window-only blocks: the same embeddings and scores as without
sharing (bit for bit in the batch-invariant mode), and a box's reach covers every pixel the image
processor's resize changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.image_utils import SizeDict

from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.config import ImageLimits
from lychee_grpc.engine.engine import Engine
from lychee_grpc.engine.lm.fused import FusedOps
from lychee_grpc.engine.model.loader import load_model
from lychee_grpc.engine.prompt.image_files import content_key
from lychee_grpc.engine.prompt.images import decode_pixels
from lychee_grpc.engine.prompt.prepared import Edit, EncodedImage
from lychee_grpc.engine.types import Document, ImagePart, Picture, Query, TextPart, grid_cells
from lychee_grpc.engine.vision.sharing import WindowShare, masked_cells, reach, window_shares
from lychee_grpc.engine.vision.tower import VisionTower

from ...helpers import CallingCapturer, engine_config, noise_image

GRID = (1, 16, 16)  # 224 x 224 pixels: 8 x 8 merge units, 2 x 2 windows of 4 x 4 units
UNIT = 28  # pixels a side of a merge unit


def _pictures(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 224, 224), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _image(key: bytes, edit: Edit | None = None, grid=GRID) -> EncodedImage:
    return EncodedImage(key=key, grid_thw=grid, tokens=grid[1] * grid[2] // 4, pixel_values=None,
                        decode=lambda: torch.zeros(0), edit=edit)


def _unit_rows(r: int, c: int) -> slice:
    """The patch rows (image order, the processor's patchify) of merge unit (r, c) of GRID."""
    u = r * (GRID[2] // 2) + c
    return slice(4 * u, 4 * u + 4)


def test_masked_pictures_say_what_they_share_and_refuse_a_box_outside_them():
    pixels = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    colour = np.array([1, 2, 3], dtype=np.uint8)
    boxes = [(4, 5, 6, 7), (0, 0, 30, 1)]
    masked = Picture.masked(pixels, b"base", boxes, colour)
    assert [(m.base, m.box) for m in masked] == [(b"base", box) for box in boxes]
    for m, (x, y, width, height) in zip(masked, boxes):
        inside = np.zeros((20, 30), dtype=bool)
        inside[y : y + height, x : x + width] = True
        assert (m.pixels[~inside] == pixels[~inside]).all() and (m.pixels[inside] == colour).all()
    # A key says what the picture was made from: made again, it is equal; another base, box or
    # colour makes another key, and so does a picture of the same pixels made from them.
    assert masked == Picture.masked(pixels.copy(), b"base", boxes, colour.copy())
    others = [*Picture.masked(pixels, b"other", boxes[:1], colour),
              *Picture.masked(pixels, b"base", [(4, 5, 6, 8)], colour),
              *Picture.masked(pixels, b"base", boxes[:1], colour + 1), Picture.of(masked[0].pixels)]
    assert len({masked[0].key, masked[1].key, *(o.key for o in others)}) == 6
    for box in [(25, 0, 6, 1), (0, 15, 1, 6), (-1, 0, 2, 2), (0, 0, 0, 3)]:
        with pytest.raises(ValueError, match="is not inside a 30x20 picture"):
            Picture.masked(pixels, b"base", [(0, 0, 1, 1), box], colour)


@pytest.mark.parametrize(("height", "width"), [(224, 224), (448, 336), (480, 640), (300, 300), (150, 700), (900, 1000)])
def test_a_box_reaches_every_pixel_the_resize_changes(loaded, height, width):
    proc = loaded.processor.image_processor
    size = SizeDict(shortest_edge=proc.size["shortest_edge"], longest_edge=proc.size["longest_edge"])
    rng = np.random.default_rng(height * width)
    base = torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8))
    for _ in range(6):
        w, h = int(rng.integers(1, width // 2)), int(rng.integers(1, height // 2))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        masked = base.clone()
        masked[:, y : y + h, x : x + w] = torch.from_numpy(rng.integers(0, 256, (3, 1, 1), dtype=np.uint8))
        out = [proc.resize(p[None], size=size, resample=proc.resample, factor=28)[0] for p in (base, masked)]
        grid = (1, out[0].shape[1] // 14, out[0].shape[2] // 14)
        y0, y1, x0, x1 = reach(Edit(b"b", (x, y, w, h), (height, width)), grid, 14)
        differ = (out[0] != out[1]).any(0)
        rows, cols = np.flatnonzero(differ.any(1).numpy()), np.flatnonzero(differ.any(0).numpy())
        assert rows.size and y0 <= rows.min() and rows.max() < y1 and x0 <= cols.min() and cols.max() < x1
        if out[0].shape[1:] == (height, width):  # not resized: exactly the box
            assert (y0, y1, x0, x1) == (y, y + h, x, x + w)


def test_the_windows_a_region_reaches(loaded):
    tower = VisionTower(loaded.model.model.visual)
    assert tower.changed_windows(GRID, (0, 1, 0, 1)).tolist() == [True, False, False, False]
    assert tower.changed_windows(GRID, (111, 113, 0, 1)).tolist() == [True, False, True, False]
    assert tower.changed_windows(GRID, (112, 224, 112, 224)).tolist() == [False, False, False, True]
    assert tower.changed_windows(GRID, (5, 5, 0, 224)).tolist() == [False] * 4  # an empty region
    # A grid whose windows are cut at the edges (10 x 14 units: 3 x 4 windows).
    assert tower.changed_windows((1, 20, 28), (0, 280, 370, 392)).nonzero()[0].tolist() == [3, 7, 11]


def test_shares_pair_each_image_with_the_first_of_its_base_s_group(loaded):
    tower = VisionTower(loaded.model.model.visual)
    size = (224, 224)
    images = [
        _image(b"v1", Edit(b"base", (0, 0, UNIT, UNIT), size)),  # window 0
        _image(b"base"),
        _image(b"v2", Edit(b"base", (200, 200, 10, 10), size)),  # window 3
        _image(b"other"),
        _image(b"w", Edit(b"elsewhere", (0, 0, 224, 224), size)),  # alone, and every window changed
        _image(b"x", Edit(b"base", (0, 0, 1, 1), size), grid=(1, 16, 20)),  # another size than its base
    ]
    shares = window_shares(images, tower.changed_windows, 14)
    assert shares is not None
    got = [None if s is None else (s.source, s.same.tolist()) for s in shares]
    assert got == [None, (0, [False, True, True, True]), (0, [False, True, True, False]), None, None, None]
    assert window_shares([_image(b"a"), _image(b"b")], tower.changed_windows, 14) is None


def test_shared_windows_give_the_embeddings_of_the_whole_computation(loaded):
    visual = loaded.model.model.visual
    tower = VisionTower(visual)
    assert tower.window_only == 1  # the tiny tower: one window-only block, then a full one
    g = torch.Generator().manual_seed(1)
    base = torch.randn(256, 1176, generator=g)
    v1, v2 = base.clone(), base.clone()
    v1[_unit_rows(0, 0)] = torch.randn(4, 1176, generator=g)  # window 0
    v2[_unit_rows(7, 7)] = torch.randn(4, 1176, generator=g)  # window 3
    pixels, grids = torch.cat([base, v1, v2]), [GRID] * 3
    shares = [None, WindowShare(0, np.array([False, True, True, True])),
              WindowShare(0, np.array([True, True, True, False]))]
    whole = tower(pixels, grids)
    shared = tower(pixels, grids, shares)
    torch.testing.assert_close(shared, whole, rtol=1e-4, atol=1e-5)
    # The claim is what the tower goes by: claimed equal, v1's changed window is the base's.
    lie = tower(pixels, grids, [None, WindowShare(0, np.ones(4, dtype=bool)), None])
    assert torch.equal(lie[64:128], lie[:64]) and not torch.allclose(lie[64:128], whole[64:128])
    with pytest.raises(ValueError, match="cannot share windows with image 2"):
        tower(pixels, grids, [None, WindowShare(2, np.ones(4, dtype=bool)), None])


@pytest.mark.parametrize("threads", [1, 16])
def test_shared_windows_change_no_bit_in_the_batch_invariant_mode(loaded, threads):
    """Five images of one picture, four with one merge unit changed each; under 16 threads torch's
    CPU loops cut the rows at other places with and without sharing (util/invariant.py, `rowwise`)."""
    tower = VisionTower(loaded.model.model.visual, FusedOps(torch.device("cpu"), batch_invariant=True))
    g = torch.Generator().manual_seed(1)
    images, shares = [torch.randn(256, 1176, generator=g)], [None]
    for k in range(4):
        variant = images[0].clone()
        variant[_unit_rows(k, 0)] = torch.randn(4, 1176, generator=g)
        images.append(variant)
        shares.append(WindowShare(0, ~tower.changed_windows(GRID, (k * UNIT, (k + 1) * UNIT, 0, UNIT))))
    pixels, grids = torch.cat(images), [GRID] * 5
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert torch.equal(tower(pixels, grids, shares), tower(pixels, grids))
    finally:
        torch.set_num_threads(before)


def _masked_documents(data: bytes, boxes, with_base: bool) -> list[Document]:
    pixels = decode_pixels(data, ImageLimits()).permute(1, 2, 0).numpy()
    colour = np.rint(pixels.reshape(-1, 3).mean(0)).astype(np.uint8)
    docs = [Document("full", (ImagePart(data), TextPart("a red lamp")))] if with_base else []
    return docs + [Document(f"m{k}", (ImagePart(picture=picture), TextPart("a red lamp")))
                   for k, picture in enumerate(Picture.masked(pixels, content_key(data), boxes, colour))]


@pytest.mark.parametrize(("width", "height"), [(224, 224), (250, 190)])  # as it is; resized
@pytest.mark.parametrize("with_base", [True, False])
async def test_explain_s_masked_cells_score_the_same_with_shared_windows(make_engine, width, height, with_base):
    data = noise_image(width, height, seed=5)
    boxes = [(0, 0, width // 2, height // 2), (width // 2, height // 2, width - width // 2, height - height // 2),
             (3, 100, 20, 20), (100, 3, 8, 9)]
    docs = _masked_documents(data, boxes, with_base)
    query = Query((TextPart("a lamp for the desk"),))
    for mode in [{}, {"batch_invariant": True}]:
        shared = await score_documents(await make_engine(**mode), query, docs)
        whole = await score_documents(await make_engine(share_windows=False, **mode), query, docs)
        got, want = [s.logit for s in shared.scores], [s.logit for s in whole.scores]
        if mode:  # every row alone on the CPU: not a bit moves
            assert got == want, (mode, got, want)
        else:  # the shared rows are batched with fewer others: the parity tolerance
            assert got == pytest.approx(want, abs=1e-4), (got, want)


async def test_a_false_claim_is_what_the_engine_goes_by(make_engine):
    """Proof that the engine shares: a picture that claims a base it differs from everywhere
    scores as the base where sharing is on, and as itself where it is off."""
    data = noise_image(224, 224, seed=6)
    other = decode_pixels(noise_image(224, 224, seed=7), ImageLimits()).permute(1, 2, 0).numpy()
    made = Picture.of(other)
    liar = Picture(made.pixels, made.key, content_key(data), (0, 0, 1, 1))
    docs = [Document("base", (ImagePart(data), TextPart("lamp"))), Document("liar", (ImagePart(picture=liar),
                                                                                     TextPart("lamp")))]
    query = Query((TextPart("a lamp"),))
    shared = (await score_documents(await make_engine(), query, docs)).scores
    whole = (await score_documents(await make_engine(share_windows=False), query, docs)).scores
    assert shared[0].logit == pytest.approx(whole[0].logit, abs=1e-4)
    assert abs(shared[1].logit - whole[1].logit) > 1e-2



async def test_the_stand_ins_of_a_captured_call_share_the_windows_real_masked_cells_share(make_engine):
    """What the executor captures at start-up (`masked_cells`) and what a request of a picture's
    masked cells sends the tower share the same windows, so the request meets the graph."""
    engine = await make_engine()
    tower, pre = engine.executor.tower, engine.preprocessor
    data = noise_image(448, 448, seed=4)
    real = [pre.encode_image(part)[0] for doc in _masked_documents(data, grid_cells(448, 448, 4), True)
            for part in doc.parts if isinstance(part, ImagePart)]
    stand_ins = masked_cells((1, 32, 32), (448, 448), 4, tokens=256)
    assert [im.grid_thw for im in real] == [im.grid_thw for im in stand_ins] == [(1, 32, 32)] * 17
    for call in (slice(None), slice(1, None)):  # with the picture; its cells alone
        got = window_shares(real[call], tower.changed_windows, 14)
        want = window_shares(stand_ins[call], tower.changed_windows, 14)
        assert got is not None and want is not None
        assert [(s.source, s.same.tolist()) if s else None for s in got] == \
            [(s.source, s.same.tolist()) if s else None for s in want]


async def test_a_picture_and_its_masked_cells_replay_the_tower_call_captured_at_start_up(make_engine):
    """The tower's graphs run the CPU's captured function again at each replay (CallingCapturer):
    a replay is counted, and its embeddings give the scores of an engine without graphs."""
    engine = await make_engine()
    tower = engine.executor.tower
    tower.graphs = capturer = CallingCapturer()
    engine.executor.capture_tower_graphs()
    assert [len(grids) for grids in tower.captured_calls] == [1, 17, 16]  # one image; with its 16 cells; the cells
    eager = await make_engine()
    query = Query((TextPart("a lamp for the desk"),))

    async def logits(on: Engine, docs: list[Document]) -> list[float]:
        return [s.logit for s in (await score_documents(on, query, docs)).scores]

    docs = _masked_documents(noise_image(448, 448, seed=9), grid_cells(448, 448, 4), True)
    replays = capturer.replays
    assert await logits(engine, docs) == await logits(eager, docs)
    assert capturer.replays == replays + 1
    # The picture's output cached by a Rerank of the pair first (one image: its own graph), its
    # cells alone meet theirs.
    docs = _masked_documents(noise_image(448, 448, seed=10), grid_cells(448, 448, 4), True)
    assert await logits(engine, docs[:1]) == await logits(eager, docs[:1])
    assert capturer.replays == replays + 2
    assert await logits(engine, docs[1:]) == await logits(eager, docs[1:])
    assert capturer.replays == replays + 3
    # Another grid of cells, or another size of picture, runs eagerly.
    for width, grid in ((448, 3), (420, 4)):
        docs = _masked_documents(noise_image(width, 448, seed=11), grid_cells(width, 448, grid), True)
        assert await logits(engine, docs) == await logits(eager, docs)
    assert capturer.replays == replays + 3

@pytest.mark.gpu
async def test_shared_windows_change_no_bit_in_the_batch_invariant_mode_on_the_gpu(tiny_model_dir):
    loaded = load_model(engine_config(tiny_model_dir, device="cuda"))
    data = noise_image(448, 448, seed=8)
    docs = _masked_documents(data, [(112 * (k % 4), 112 * (k // 4), 112, 112) for k in range(16)], True)
    query = Query((TextPart("a lamp for the desk"),))
    logits = {}
    for share in (True, False):
        engine = Engine(engine_config(tiny_model_dir, device="cuda", batch_invariant=True, share_windows=share),
                        loaded)
        await engine.start()
        try:
            logits[share] = [s.logit for s in (await score_documents(engine, query, docs)).scores]
        finally:
            await engine.stop()
    assert logits[True] == logits[False]



@pytest.mark.gpu
def test_a_real_graph_of_a_picture_and_its_cells_replays_as_eager_after_the_allocator_reused_memory(tiny_model_dir):
    """The shared rows' indices and tables live as long as the graph: a replay after the allocator
    has handed freed memory out again gives the eager embeddings."""
    from lychee_grpc.engine.util.graphs import GraphCapturer

    loaded = load_model(engine_config(tiny_model_dir, device="cuda", dtype="bfloat16"))
    visual = loaded.model.model.visual
    device = visual.patch_embed.proj.weight.device
    tower = VisionTower(visual, FusedOps(device))
    tower.graphs = GraphCapturer(device)
    images = masked_cells((1, 32, 32), (448, 448), 4, tokens=256)
    shares = window_shares(images, tower.changed_windows, 14)
    grids = [im.grid_thw for im in images]
    assert tower.capture(grids, torch.bfloat16, shares)
    churn = [torch.full((n,), 1 << 40, dtype=torch.long, device=device) for n in range(1, 4096, 7)]
    g = torch.Generator().manual_seed(12)
    base = torch.randn(1024, 1176, generator=g)
    pictures = [base]
    for k in range(16):  # each cell's 4 x 4 merge units (its window) new, the rest the picture's
        cell = base.clone()
        for r in range(4 * (k // 4), 4 * (k // 4) + 4):
            for c in range(4 * (k % 4), 4 * (k % 4) + 4):
                u = r * 16 + c  # merge unit (r, c) of 16 x 16: its 4 patch rows, as the processor's patchify lays them
                cell[4 * u : 4 * u + 4] = torch.randn(4, 1176, generator=g)
        pictures.append(cell)
    pixels = torch.cat(pictures).to(device, torch.bfloat16)
    replayed = tower(pixels, grids, shares).float()
    eager = VisionTower(visual, FusedOps(device))(pixels, grids, shares).float()
    torch.cuda.synchronize()
    del churn
    assert (replayed - eager).abs().max() <= 0.05 + 0.02 * eager.abs().max()
