"""75-token chunks and CLIP conditioning, checked on the real tokenizer and the demo model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.demo.model import TRAINED_TEXT_CONFIG
from engine.generate import generate
from engine.prompting.chunks import (
    ChunkFix,
    EmbeddingIndex,
    EmbeddingRef,
    prompt_chunks,
    trigger_ids,
)
from engine.prompting.conditioning import (
    apply_emphasis,
    encode_conditioning,
    encode_prompts,
    encode_tokens,
)
from engine.prompting.tokenizer import build_tokenizer
from engine.request import GenerationRequest, Limits
from tests.conftest import png_pixels

CPU = torch.device("cpu")
TOKENIZER = build_tokenizer()
WIDTH = int(TRAINED_TEXT_CONFIG["hidden_size"])  # the demo model's text encoder width
BOS, EOS, COMMA = 49406, 49407, 267


def ids(text: str) -> list[int]:
    return list(TOKENIZER(text, add_special_tokens=False, verbose=False)["input_ids"])


def words(n: int, word: str = "cat") -> str:
    """n copies of a word that is one CLIP token."""
    assert len(ids(word)) == 1
    return " ".join([word] * n)


# --- chunks --------------------------------------------------------------------------------------


def test_a_chunk_is_bos_75_tokens_or_padding_eos() -> None:
    [chunk] = prompt_chunks(TOKENIZER, "a cat")
    assert len(chunk.tokens) == len(chunk.multipliers) == 77
    assert chunk.tokens[:3] == (BOS, *ids("a cat"))
    assert chunk.tokens[3:] == (EOS,) * 74  # padding is EOS for SD1, then EOS
    assert chunk.used == 2


def test_an_empty_prompt_is_one_chunk_of_padding() -> None:
    [chunk] = prompt_chunks(TOKENIZER, "")
    assert chunk.used == 0 and chunk.tokens == (BOS,) + (EOS,) * 76


@pytest.mark.parametrize(
    ("text", "used"),
    [
        (words(75), [75]),
        (words(76), [75, 1]),
        (words(150), [75, 75]),
        (words(240), [75, 75, 75, 15]),  # > 225 tokens: four chunks, nothing truncated
        (words(10) + " BREAK " + words(10), [10, 10]),
        ("BREAK " + words(3), [0, 3]),  # a leading BREAK gives a chunk of padding
        (words(3) + " BREAK", [3]),
        (words(70) + " BREAK " + words(70), [70, 70]),
        (words(240) + " BREAK " + words(5), [75, 75, 75, 15, 5]),
        ("(" + words(3) + " BREAK " + words(3) + ")", [7]),  # in brackets BREAK is a word
    ],
)
def test_prompts_split_into_75_token_chunks(text: str, used: list[int]) -> None:
    assert [c.used for c in prompt_chunks(TOKENIZER, text)] == used


def test_a_full_chunk_moves_the_words_after_its_last_comma_to_the_next() -> None:
    # 35 × "cat," = 70 tokens, then 8 words: the chunk fills at 75 with a comma 6 tokens back.
    text = "cat, " * 35 + words(8, "dog")
    first, second = prompt_chunks(TOKENIZER, text)
    assert first.used == 70 and first.tokens[70] == COMMA
    assert second.used == 8 and second.tokens[1:9] == tuple(ids(words(8, "dog")))


def test_the_comma_backtrack_reaches_20_tokens_at_most() -> None:
    text = "cat, " + words(74, "dog")  # the only comma is 74 tokens before the chunk's end
    assert [c.used for c in prompt_chunks(TOKENIZER, text)] == [75, 1]
    assert [c.used for c in prompt_chunks(TOKENIZER, text, comma_backtrack=0)] == [75, 1]
    near = words(60, "dog") + ", " + words(20, "cat")  # comma at 61, 14 from the end
    assert [c.used for c in prompt_chunks(TOKENIZER, near)] == [61, 20]
    assert [c.used for c in prompt_chunks(TOKENIZER, near, comma_backtrack=0)] == [75, 6]


def test_a_comma_that_would_be_token_76_opens_the_next_chunk() -> None:
    first, second = prompt_chunks(TOKENIZER, words(75) + ", dog")
    assert first.used == 75 and second.tokens[1:3] == (COMMA, *ids("dog"))


def test_tokens_carry_their_segment_weight() -> None:
    [chunk] = prompt_chunks(TOKENIZER, "a (fluffy cat:1.5) [sits]")
    tokens = TOKENIZER.convert_ids_to_tokens(list(chunk.tokens))
    weights = dict(zip(tokens, chunk.multipliers, strict=True))
    assert weights["fluffy</w>"] == weights["cat</w>"] == 1.5
    assert weights["sits</w>"] == pytest.approx(1 / 1.1)
    assert weights["a</w>"] == 1.0 and chunk.multipliers[0] == chunk.multipliers[-1] == 1.0


def test_emphasis_none_reads_brackets_as_text() -> None:
    [chunk] = prompt_chunks(TOKENIZER, "(cat:1.5)", emphasis="None")
    assert set(chunk.multipliers) == {1.0}
    assert chunk.used == len(ids("(cat:1.5)")) > 1


# --- chunks with textual-inversion embeddings (torch-free: names, trigger ids, vector counts) -----


def index(**vectors: int) -> EmbeddingIndex:
    """Embeddings by trigger name and vector count (registered in the order given)."""
    names = list(vectors)
    refs = trigger_ids(TOKENIZER, names)
    return EmbeddingIndex(EmbeddingRef(n, i, vectors[n]) for n, i in zip(names, refs, strict=True))


def test_an_embedding_fills_its_vector_count_of_placeholder_tokens() -> None:
    [chunk] = prompt_chunks(TOKENIZER, "a mychar cat", embeddings=index(mychar=3))
    assert chunk.tokens[:6] == (BOS, *ids("a"), 0, 0, 0, *ids("cat"))
    assert chunk.fixes == (ChunkFix(1, "mychar"),) and chunk.used == 5
    # Without the lookup (or with none installed) the trigger is plain words.
    assert prompt_chunks(TOKENIZER, "a mychar cat") == prompt_chunks(
        TOKENIZER, "a mychar cat", embeddings=index()
    )
    assert prompt_chunks(TOKENIZER, "a mychar cat")[0].fixes == ()


def test_an_embedding_that_would_cross_the_75_token_boundary_opens_the_next_chunk() -> None:
    fits = prompt_chunks(TOKENIZER, words(72) + " threevec", embeddings=index(threevec=3))
    assert [c.used for c in fits] == [75] and fits[0].fixes == (ChunkFix(72, "threevec"),)
    text = words(73) + " threevec cat"
    first, second = prompt_chunks(TOKENIZER, text, embeddings=index(threevec=3))
    assert first.used == 73 and first.fixes == ()  # padded, never split
    assert second.tokens[1:5] == (0, 0, 0, *ids("cat"))
    assert second.fixes == (ChunkFix(0, "threevec"),)


def test_the_longest_trigger_wins_and_matches_stay_within_one_weighted_segment() -> None:
    lookup = index(foo=1, foo_bar=2)
    [chunk] = prompt_chunks(TOKENIZER, "foo_bar foo bar", embeddings=lookup)
    assert chunk.fixes == (ChunkFix(0, "foo_bar"), ChunkFix(2, "foo"))
    assert chunk.tokens[1:5] == (0, 0, 0, *ids("bar"))
    # Registration order does not matter, and brackets split a trigger into plain words.
    assert prompt_chunks(TOKENIZER, "foo_bar", embeddings=index(foo_bar=2, foo=1))[0].fixes == (
        ChunkFix(0, "foo_bar"),
    )
    [split] = prompt_chunks(TOKENIZER, "(foo)_bar", embeddings=lookup)
    assert split.fixes == (ChunkFix(0, "foo"),)


def test_an_embedding_takes_its_segment_weight() -> None:
    [chunk] = prompt_chunks(TOKENIZER, "a (twovec:1.3) [cat]", embeddings=index(twovec=2))
    assert chunk.multipliers[2:4] == (1.3, 1.3)
    assert chunk.multipliers[4] == pytest.approx(1 / 1.1) and chunk.multipliers[1] == 1.0


def test_a_comma_backtrack_moves_placeholders_but_leaves_the_fix_behind_as_a1111_does() -> None:
    # 60 words, a comma (token 61), a 3-vector embedding, 11 words: 75 tokens, then one more.
    text = words(60, "dog") + ", threevec " + words(12)
    first, second = prompt_chunks(TOKENIZER, text, embeddings=index(threevec=3))
    assert first.used == 61 and first.fixes == (ChunkFix(61, "threevec"),)
    assert first.tokens[62:65] == (EOS, EOS, EOS)  # the vectors will land on padding
    assert second.fixes == () and second.tokens[1:5] == (0, 0, 0, *ids("cat"))
    assert second.used == 15


def test_a_later_embedding_of_the_same_name_replaces_the_earlier() -> None:
    [foo] = trigger_ids(TOKENIZER, ["foo"])
    lookup = EmbeddingIndex([EmbeddingRef("foo", foo, 1), EmbeddingRef("foo", foo, 4)])
    [chunk] = prompt_chunks(TOKENIZER, "foo", embeddings=lookup)
    assert chunk.used == 4 and chunk.fixes == (ChunkFix(0, "foo"),)


# --- encoding on the demo model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(demo_model):  # type: ignore[no-untyped-def]
    return demo_model.pipe.tokenizer, demo_model.pipe.text_encoder


def encode(clip, texts, clip_skip=2, emphasis="Original"):  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        return encode_prompts(*clip, texts, clip_skip=clip_skip, device=CPU, emphasis=emphasis)


def raw(clip, text: str, clip_skip: int = 2) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The encoder output of one unweighted chunk, before any emphasis."""
    [chunk] = prompt_chunks(clip[0], text)
    with torch.inference_mode():
        return encode_tokens(clip[1], torch.tensor([chunk.tokens]), clip_skip=clip_skip)


def test_weight_one_everywhere_equals_no_weighting(clip) -> None:  # type: ignore[no-untyped-def]
    plain = raw(clip, "a cat, smiling")
    for mode in ("Original", "No norm"):
        assert torch.equal(encode(clip, ["a cat, smiling"], emphasis=mode), plain)
        assert torch.equal(encode(clip, ["(a cat, smiling:1.0)"], emphasis=mode), plain)


def test_a_weight_scales_only_its_token_rows_before_the_mean_restore(clip) -> None:  # type: ignore[no-untyped-def]
    plain = raw(clip, "a cat smiling")[0]
    cat = 2  # BOS, a, cat, …
    no_norm = encode(clip, ["a (cat:1.5) smiling"], emphasis="No norm")[0]
    assert torch.allclose(no_norm[cat], plain[cat] * 1.5)
    others = [i for i in range(77) if i != cat]
    assert torch.equal(no_norm[others], plain[others])
    # "Original" is the same up to one factor that restores the original mean.
    original = encode(clip, ["a (cat:1.5) smiling"])[0]
    assert torch.allclose(original.mean(), plain.mean(), atol=1e-6)
    factor = plain.mean() / no_norm.mean()
    assert torch.allclose(original, no_norm * factor, atol=1e-6)
    assert not torch.allclose(original, plain)


def test_emphasis_ignore_parses_brackets_but_drops_weights(clip) -> None:  # type: ignore[no-untyped-def]
    assert torch.equal(encode(clip, ["(cat:1.5)"], emphasis="Ignore"), raw(clip, "cat"))
    assert not torch.equal(encode(clip, ["(cat:1.5)"], emphasis="None"), raw(clip, "cat"))


def test_clip_skip_is_counted_as_a1111_counts_it(clip, demo_model) -> None:  # type: ignore[no-untyped-def]
    tokenizer, encoder = clip
    tokens = torch.tensor([prompt_chunks(tokenizer, "1girl, smile")[0].tokens])
    with torch.inference_mode():
        hidden = encoder(tokens, output_hidden_states=True).hidden_states
        # diffusers `encode_prompt(clip_skip=n)`: hidden_states[-(n + 1)], then the final norm.
        diffusers_clip_skip_1 = encoder.final_layer_norm(hidden[-2])
        diffusers_clip_skip_2 = encoder.final_layer_norm(hidden[-3])
        diffusers_none, _ = demo_model.pipe.encode_prompt("1girl, smile", CPU, 1, False)
    assert torch.equal(encode(clip, ["1girl, smile"], clip_skip=2), diffusers_clip_skip_1)
    assert torch.equal(encode(clip, ["1girl, smile"], clip_skip=3), diffusers_clip_skip_2)
    assert torch.allclose(encode(clip, ["1girl, smile"], clip_skip=1), diffusers_none)


def test_chunks_are_encoded_separately_and_concatenated(clip) -> None:  # type: ignore[no-untyped-def]
    text = words(200)
    chunks = prompt_chunks(clip[0], text)
    z = encode(clip, [text])
    assert z.shape == (1, 77 * 3, WIDTH)
    with torch.inference_mode():
        each = [encode_tokens(clip[1], torch.tensor([c.tokens]), clip_skip=2) for c in chunks]
    assert torch.allclose(z, torch.cat(each, dim=1), atol=1e-6)


def test_break_starts_a_new_chunk_in_the_embedding(clip) -> None:  # type: ignore[no-untyped-def]
    z = encode(clip, ["a cat BREAK a dog"])
    assert z.shape == (1, 154, WIDTH)
    assert torch.allclose(z[:, 77:], raw(clip, "a dog"), atol=1e-6)


def test_mean_restore_spans_the_whole_chunk_batch() -> None:
    # A1111 sd_emphasis "Original": one mean over the whole (B, 77, D) tensor.
    z = torch.tensor([[[1.0, 3.0]], [[2.0, 2.0]]])
    weights = torch.tensor([[2.0], [1.0]])
    out = apply_emphasis(z, weights, "Original")
    assert torch.allclose(out.mean(), z.mean())
    assert torch.allclose(out, z * weights[..., None] * (2.0 / 3.0))


def conditioning(clip, prompts, negatives, steps=10):  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        return encode_conditioning(*clip, prompts, negatives, clip_skip=2, steps=steps, device=CPU)


def test_cond_and_uncond_may_differ_in_length(clip) -> None:  # type: ignore[no-untyped-def]
    cond = conditioning(clip, [words(100)], ["lowres"])
    c, u = cond.at(0)
    assert c.shape == (1, 154, WIDTH) and u.shape == (1, 77, WIDTH)
    assert cond.lengths == [(154, 77)]
    # A1111's pad_cond_uncond: the shorter one gets the empty prompt's chunk.
    pc, pu = cond.padded_at(0)
    assert pc.shape == pu.shape == (1, 154, WIDTH)
    assert torch.equal(pu[:, :77], u)
    assert torch.allclose(pu[:, 77:], encode(clip, [""]), atol=1e-6)


def test_batch_images_of_different_lengths_stack_as_a1111_does(clip) -> None:  # type: ignore[no-untyped-def]
    cond = conditioning(clip, ["a cat", words(100)], ["", ""])
    c, _ = cond.at(0)
    assert c.shape == (2, 154, WIDTH)
    assert torch.equal(c[0, 77:], c[0, 76:77].expand(77, WIDTH))  # last vector repeated
    assert cond.lengths == [(77, 77), (154, 77)]
    alone, _ = cond.at(0, images=[0])
    assert alone.shape == (1, 77, WIDTH)


def test_prompt_editing_switches_conditioning_per_step(clip) -> None:  # type: ignore[no-untyped-def]
    cond = conditioning(clip, ["a [cat:dog:0.5]", "[cat|dog]"], ["", ""])
    cat, dog = raw(clip, "a cat")[0], raw(clip, "a dog")[0]
    # Steps 0-5 (0-based) use "a cat": A1111 switches after step `when`, inclusive.
    for step in range(10):
        got = cond.at(step)[0][0]
        assert torch.allclose(got, cat if step <= 5 else dog, atol=1e-6), step
    alternating = [cond.at(step)[0][1] for step in range(5)]
    expected = ["cat", "cat", "dog", "cat", "dog"]  # A1111: step 0 and 1 both take entry 1
    for got, word in zip(alternating, expected, strict=True):
        assert torch.allclose(got, raw(clip, word)[0], atol=1e-6)


def test_each_distinct_prompt_is_encoded_once(clip) -> None:  # type: ignore[no-untyped-def]
    cond = conditioning(clip, ["a cat", "a cat", "a dog"], ["x", "x", "x"])
    assert cond.conds[0] is cond.conds[1] and cond.unconds[0] is cond.unconds[2]


def test_unknown_emphasis_is_refused(clip) -> None:  # type: ignore[no-untyped-def]
    from engine.errors import InvalidRequest

    with (
        pytest.raises(InvalidRequest, match="Unknown emphasis mode 'loud'"),
        torch.inference_mode(),
    ):
        encode_conditioning(*clip, ["a"], [""], clip_skip=2, steps=4, device=CPU, emphasis="loud")


# --- end to end: generate() ----------------------------------------------------------------------

BASE = GenerationRequest(prompt="1girl, smile", width=64, height=64, num_inference_steps=3, seed=7)


def draw(model, **changes):  # type: ignore[no-untyped-def]
    return generate(model, [dataclasses.replace(BASE, **changes)], limits=Limits())[0]


@pytest.mark.slow
def test_weights_reach_the_image(demo_model) -> None:  # type: ignore[no-untyped-def]
    plain = png_pixels(draw(demo_model).png)
    assert np.array_equal(png_pixels(draw(demo_model, prompt="(1girl, smile:1.0)").png), plain)
    weighted = png_pixels(draw(demo_model, prompt="(1girl:1.6), smile").png)
    assert np.abs(weighted - plain).max() > 0


@pytest.mark.slow
def test_long_prompts_and_prompt_editing_draw(demo_model) -> None:  # type: ignore[no-untyped-def]
    long = draw(demo_model, prompt=", ".join(["1girl, smile"] * 60), negative_prompt="lowres")
    edited = draw(demo_model, prompt="1girl, [smile:frown:0.5]")
    assert png_pixels(long.png).std() > 0
    assert np.abs(png_pixels(edited.png) - png_pixels(draw(demo_model).png)).max() > 0


@pytest.mark.slow
def test_emphasis_mode_reaches_the_image(demo_model) -> None:  # type: ignore[no-untyped-def]
    original = draw(demo_model, prompt="(1girl:1.6), smile")
    no_norm = draw(demo_model, prompt="(1girl:1.6), smile", emphasis="No norm")
    assert np.abs(png_pixels(no_norm.png) - png_pixels(original.png)).max() > 0
