"""Documents of one request that begin alike share their head: it is computed once, and each
document's score is still the one it gets alone (within the parity tolerance; bit for bit in the
batch-invariant mode). Documents whose tokens agree but whose pictures differ share nothing."""

from __future__ import annotations

import itertools

import pytest
import torch

from lychee_grpc.engine.api import score_documents
from lychee_grpc.engine.faults import NoFaults
from lychee_grpc.engine.heads import MIN_HEAD, MIN_NESTED_HEAD, shared_heads, split
from lychee_grpc.engine.lm.executor import BatchItem
from lychee_grpc.engine.prompt.prepared import EncodedImage, Segment
from lychee_grpc.engine.types import Document, ImagePart, TextPart

from ...helpers import noise_image, text_query

PHOTO = noise_image(112, 112, seed=21)  # 16 image tokens on the tiny model
TITLES = ["blue linen shirt with a relaxed fit and two chest pockets, machine washable",
          "blue linen shirt, relaxed fit, short sleeves, made of pure flax",
          "a blue shirt made of linen for warm summer days on the beach",
          "linen shirt in sky blue"]
# Long enough that the photo's head (the template's opening, the photo, a shared start of the
# title) passes MIN_HEAD on the tiny model's vocabulary.
OPENING = "Seller: Harbour Street Outfitters, official store. Listing of the season, free returns. "


def photo_docs(photo: bytes = PHOTO) -> list[Document]:
    return [Document(f"d{i}", (ImagePart(photo), TextPart(OPENING + title))) for i, title in enumerate(TITLES)]


async def alone(engine, query, docs) -> dict[str, float]:
    out = {}
    for doc in docs:
        out.update({s.id: s.logit for s in (await score_documents(engine, query, [doc])).scores})
    return out


def record_passes(engine) -> list[list[BatchItem]]:
    """From now on, the items of each of `engine`'s model calls."""
    passes: list[list[BatchItem]] = []

    class Recording(NoFaults):
        def model_call(self, items) -> None:
            passes.append(list(items))

    engine.inject_faults(Recording())
    return passes


async def test_documents_with_one_photo_share_its_head_and_score_as_alone(make_engine):
    engine = await make_engine()
    query, docs = text_query("linen shirt"), photo_docs()
    single = await alone(engine, query, docs)
    together = await score_documents(engine, query, docs)
    assert {s.id: s.logit for s in together.scores} == pytest.approx(single, abs=2e-4)
    # The same documents with other photos of the same size: as many tokens, nothing shared.
    unshared = await score_documents(engine, query, [
        Document(d.id, (ImagePart(noise_image(112, 112, seed=30 + i)), d.parts[1])) for i, d in enumerate(docs)])
    assert together.stats.usage.prompt_tokens == unshared.stats.usage.prompt_tokens
    assert together.stats.usage.computed_tokens <= unshared.stats.usage.computed_tokens - 3 * MIN_HEAD


async def test_documents_sharing_a_head_count_their_tails_against_the_batch_token_bound(make_engine):
    query, docs = text_query("linen shirt"), photo_docs()
    probe = await make_engine()
    own = (await score_documents(probe, query, docs[:1])).stats.usage.prompt_tokens - await prefix_tokens(probe, query)
    # A bound that holds two and a half documents, but all four once their photo is shared.
    engine = await make_engine(max_batch_tokens=5 * own // 2, max_wait_ms=50)
    result = await score_documents(engine, query, docs)
    assert len(result.stats.batches) == 1
    unshared = [Document(d.id, (ImagePart(noise_image(112, 112, seed=50 + i)), d.parts[1]))
                for i, d in enumerate(docs)]
    assert len((await score_documents(engine, query, unshared)).stats.batches) >= 2


async def test_documents_sharing_more_than_the_photo_share_that_too_after_it(make_engine):
    engine = await make_engine(max_wait_ms=50)
    query = text_query("linen shirt")
    longer = OPENING + ("Sizes S to XXL, colours sky blue, navy and white, all in stock today; washed cotton "
                        "lining, mother-of-pearl buttons, a straight hem and a regular collar. ")
    docs = [Document(f"d{i}", (ImagePart(PHOTO), TextPart(text))) for i, text in enumerate(
        [longer + "pockets", longer + "short sleeves", OPENING + TITLES[2], OPENING + TITLES[3]])]
    single = await alone(engine, query, docs)
    passes = record_passes(engine)
    together = await score_documents(engine, query, docs)
    assert {s.id: s.logit for s in together.scores} == pytest.approx(single, abs=2e-4)
    (items,) = passes
    heads = [i for i, it in enumerate(items) if not it.score and not it.keep_kv]
    # The photo's head for all four, then the longer text's head after it for the first two.
    assert len(heads) == 2 and items[heads[1]].context == heads[0]
    assert sum(isinstance(it.context, int) and it.context == heads[1] for it in items if it.score) == 2


async def test_word_variants_after_one_photo_nest_heads_shorter_than_a_first_head(make_engine):
    """Explain's word variants: one photo and a title with one word removed each. Past the photo's
    head they share the words before the removed one, in heads down to MIN_NESTED_HEAD tokens."""
    engine = await make_engine(max_wait_ms=50)
    query = text_query("linen shirt")
    words = ("blue linen shirt relaxed fit two chest pockets machine washable short sleeves pure flax "
             "sky blue summer beach made in portugal").split()
    docs = [Document(f"w{k}", (ImagePart(PHOTO), TextPart(OPENING + " ".join(words[:k] + words[k + 1:]))))
            for k in range(len(words))]
    single = await alone(engine, query, docs)
    passes = record_passes(engine)
    together = await score_documents(engine, query, docs)
    assert {s.id: s.logit for s in together.scores} == pytest.approx(single, abs=2e-4)
    (items,) = passes
    heads = {i: it for i, it in enumerate(items) if not it.score and not it.keep_kv}
    nested = [it for it in heads.values() if isinstance(it.context, int) and it.context in heads]
    assert any(MIN_NESTED_HEAD <= len(it.segment) < MIN_HEAD for it in nested)


async def test_same_tokens_with_other_pictures_share_nothing_past_the_picture(make_engine):
    engine = await make_engine()
    query = text_query("linen shirt")
    docs = [Document(f"p{i}", (ImagePart(noise_image(112, 112, seed=40 + i)), TextPart(OPENING + TITLES[0])))
            for i in range(4)]
    single = await alone(engine, query, docs)
    together = await score_documents(engine, query, docs)
    assert {s.id: s.logit for s in together.scores} == pytest.approx(single, abs=2e-4)
    # Their ids are identical, so a head that ignored the pictures would make the scores equal.
    assert len({round(v, 4) for v in single.values()}) == 4


async def test_the_batch_invariant_mode_keeps_its_bits_and_shares_no_head_on_the_padded_path(make_engine):
    # On the CPU attention runs one padded call per sequence, shaped by its query rows: a tail of one
    # token gave other bits than the whole document (a text pair beside longer copies of itself).
    # Flash attention keeps them (bench.invariance on the H200), so only there are heads shared.
    engine = await make_engine(batch_invariant=True)
    query = text_query("linen shirt")
    pair = Document("t", (TextPart(OPENING + TITLES[3]),))
    copies = [Document(f"c{j}", (TextPart(f"{OPENING}{TITLES[3]} and {j + 2} more in stock"),)) for j in range(3)]
    for docs in (photo_docs(), [pair, *copies]):
        single = await alone(engine, query, docs)
        together = await score_documents(engine, query, docs)
        assert {s.id: s.logit for s in together.scores} == single
        # Computed: the prefix once and every document whole.
        assert together.stats.usage.computed_tokens == (
            together.stats.usage.prompt_tokens - (len(docs) - 1) * await prefix_tokens(engine, query))


async def prefix_tokens(engine, query) -> int:
    """The query prefix's tokens: two documents sharing nothing compute it once, prompt it twice."""
    two = await score_documents(engine, query, [Document("x", (TextPart("organic green tea"),)),
                                                Document("y", (TextPart("gaming keyboard"),))])
    return two.stats.usage.prompt_tokens - two.stats.usage.computed_tokens


# ---- grouping -------------------------------------------------------------------------------
PAD = 99


def image(key: bytes, tokens: int) -> EncodedImage:
    return EncodedImage(key=key, grid_thw=(1, 2, 2 * tokens), tokens=tokens, pixel_values=None,
                        decode=lambda: torch.empty(0))


def segment(ids: list[int], images: list[EncodedImage] = ()) -> Segment:
    t = torch.tensor(ids, dtype=torch.long)
    return Segment(ids=t, positions=torch.arange(len(ids)).expand(3, -1).clone(), images=list(images))


def test_documents_sharing_a_long_start_form_one_group_and_keep_a_tail_each():
    common = list(range(1, 41))
    segs = [segment([*common, 50, 51]), segment([7, 8, 9] * 20), segment([*common, 60]), segment(common)]
    heads = shared_heads(segs, PAD)
    assert [(h.length, h.members) for h in heads] == [(39, (0, 2, 3))]  # d3 keeps its last token


def test_a_start_shorter_than_the_minimum_is_not_shared():
    segs = [segment(list(range(1, 11)) + [50] * 40), segment(list(range(1, 11)) + [60] * 40)]
    assert shared_heads(segs, PAD) == []
    assert shared_heads(segs, PAD, min_head=10)[0].length == 10


def test_pad_tokens_of_different_pictures_differ_and_a_head_never_splits_a_picture():
    lead = list(range(1, 35))
    a, b = image(b"a", 8), image(b"b", 8)
    same = [segment(lead + [PAD] * 8 + [70, 71], [a]), segment(lead + [PAD] * 8 + [80, 81], [a])]
    other = segment(lead + [PAD] * 8 + [70, 71], [b])
    heads = shared_heads([*same, other], PAD)
    assert [(h.length, h.members) for h in shared_heads(same, PAD)] == [(42, (0, 1))]
    # Beside a third with another picture: 34 tokens shared by three save more than 42 by two.
    assert [(h.length, h.members) for h in heads] == [(34, (0, 1, 2))]
    head, tail = split(same[0], 42, PAD)
    assert head.images == [a] and tail.images == [] and len(head) == 42 and tail.ids.tolist() == [70, 71]
    # A head that would end inside a picture's pads ends before the picture.
    cut = shared_heads([segment(lead + [PAD] * 8 + [1], [a]), segment(lead + [PAD] * 8 + [2], [a]),
                        segment(lead + [PAD] * 4 + [3], [image(b"a", 4)])], PAD)
    assert [(h.length, h.members) for h in cut] == [(34, (0, 1, 2))]


def test_a_long_head_of_many_is_not_given_up_for_a_short_one_of_all():
    board = list(range(1, 41))  # 40 tokens all six share
    photo = [PAD] * 30
    a, b = image(b"a", 30), image(b"b", 30)
    with_a = [segment(board + photo + [200 + i, 1], [a]) for i in range(4)]
    with_b = [segment(board + photo + [300 + i, 1], [b]) for i in range(2)]
    heads = shared_heads(with_a + with_b, PAD)
    # One group of six at 40 saves 200; four at 70 and two at 70 save 280.
    assert sorted((h.length, h.members) for h in heads) == [(70, (0, 1, 2, 3)), (70, (4, 5))]


def test_candidates_with_one_layout_and_other_pictures_are_told_apart_without_signatures(monkeypatch):
    """A request's image candidates begin with the same ids (the template, then their pads): their
    pictures tell them apart before any signature is computed, where a batch of them is formed
    (common_head) and where it is launched (shared_heads). Two with one picture still share."""
    from lychee_grpc.engine import heads

    lead = list(range(1, 8))
    candidates = [segment(lead + [PAD] * 40 + [70 + i, 1], [image(bytes([i]), 40)]) for i in range(6)]
    computed: list[int] = []
    signatures = heads.signatures
    monkeypatch.setattr(heads, "signatures", lambda segs, pad: (computed.append(len(segs)), signatures(segs, pad))[1])
    assert shared_heads(candidates, PAD) == []
    assert all(heads.common_head(a, b, PAD) == 0 for a, b in itertools.pairwise(candidates))
    assert computed == []
    twins = [segment(lead + [PAD] * 40 + [70 + i, 1], [image(b"same", 40)]) for i in range(2)]
    assert [(h.length, h.members) for h in shared_heads([*candidates, *twins], PAD)] == [(47, (6, 7))]
    assert heads.common_head(twins[0], twins[1], PAD) == 47 and computed
