"""Textual-inversion embeddings: A1111's file formats, refusals, and placement in the conditioning.

Encoding is checked two ways on the demo model (64-wide text encoder): an embedding made of the
very token rows of some words must condition exactly as those words do, and a reference written
here from A1111 v1.9.4's source (`tokenize_line`, `find_embedding_at_position`,
`EmbeddingsWithFixes`, the CLIP layers by hand) must agree with ours.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.errors import BadAddonFile
from engine.models.embeddings import Embedding, EmbeddingDB
from engine.prompting.conditioning import encode_conditioning, encode_prompts
from engine.prompting.syntax import parse_attention
from engine.prompting.tokenizer import build_tokenizer

CPU = torch.device("cpu")
TOKENIZER = build_tokenizer()
WIDTH = 64  # the demo model's text encoder


def ids(text: str) -> list[int]:
    return list(TOKENIZER(text, add_special_tokens=False, verbose=False)["input_ids"])


# --- writing files in A1111's formats ------------------------------------------------------------


def save_pt(path: Path, vectors: torch.Tensor, *, inner_name: str = "something else") -> Path:
    """As A1111's `Embedding.save` writes a trained embedding."""
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": torch.nn.Parameter(vectors.clone())},
            "name": inner_name,
            "step": 1500,
            "sd_checkpoint": "abcd1234",
            "sd_checkpoint_name": "model",
        },
        path,
    )
    return path


def save_st(path: Path, vectors: torch.Tensor) -> Path:
    save_file({"emb_params": vectors.contiguous()}, str(path))
    return path


def save_concept(path: Path, vectors: torch.Tensor) -> Path:
    """A diffusers concept (`learned_embeds.bin`): {token: vector or vectors}."""
    torch.save({"<concept>": vectors.clone()}, path)
    return path


def rand(n: int, width: int = WIDTH, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed)) * 0.05


def refused(path: Path, name: str = "x") -> str:
    with pytest.raises(BadAddonFile) as caught:
        Embedding.load(path, name)
    message = str(caught.value)
    assert message.startswith(f"Cannot use the embedding {path.name}: ")
    assert "\n" not in message and str(path.parent) not in message
    return message


# --- files ---------------------------------------------------------------------------------------


def test_a1111_pt_files_load_with_the_stem_as_trigger(tmp_path: Path) -> None:
    vectors = rand(3)
    emb = Embedding.load(save_pt(tmp_path / "mychar.pt", vectors), "mychar")
    assert emb.name == "mychar" and emb.count == 3 and emb.width == WIDTH
    assert emb.vectors.dtype == torch.float32 and not emb.vectors.requires_grad
    assert torch.equal(emb.vectors, vectors)


def test_safetensors_concepts_and_half_precision_load(tmp_path: Path) -> None:
    vectors = rand(2)
    st = Embedding.load(save_st(tmp_path / "a.safetensors", vectors.half()), "a")
    assert st.vectors.dtype == torch.float32 and torch.equal(st.vectors, vectors.half().float())
    one = Embedding.load(save_concept(tmp_path / "c.bin", vectors[0]), "c")
    assert one.vectors.shape == (1, WIDTH)  # a 1-D concept is one vector
    two = Embedding.load(save_concept(tmp_path / "d.bin", vectors), "d")
    assert torch.equal(two.vectors, vectors)


def test_the_original_ldm_parameterdict_format_loads(tmp_path: Path) -> None:
    vectors = rand(2)
    path = tmp_path / "ldm.pt"
    torch.save({"string_to_param": torch.nn.ParameterDict({"*": vectors.clone()})}, path)
    assert torch.equal(Embedding.load(path, "ldm").vectors, vectors)


class _Touch:
    """Unpickling this creates a file: code in a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": rand(1)}, "x": _Touch(marker)}, path)
    assert "could run code" in refused(path)
    assert not marker.exists()
    legacy = tmp_path / "evil.bin"
    torch.save({"x": _Touch(marker)}, legacy, _use_new_zipfile_serialization=False)
    assert "could run code" in refused(legacy)
    (tmp_path / "plain.bin").write_bytes(pickle.dumps({"x": _Touch(marker)}))
    refused(tmp_path / "plain.bin")  # not even torch's format
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file is armed: a plain load runs it
    assert marker.exists()


def test_damaged_files_are_refused(tmp_path: Path) -> None:
    good = save_pt(tmp_path / "good.pt", rand(2)).read_bytes()
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    assert "damaged" in refused(tmp_path / "cut.pt")
    legacy = tmp_path / "legacy.pt"
    torch.save({"string_to_param": {"*": rand(2)}}, legacy, _use_new_zipfile_serialization=False)
    assert Embedding.load(legacy, "legacy").count == 2
    (tmp_path / "cut-legacy.pt").write_bytes(legacy.read_bytes()[:100])
    assert "damaged" in refused(tmp_path / "cut-legacy.pt")
    st = save_st(tmp_path / "good.safetensors", rand(2)).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(st[: len(st) - 10])
    assert "damaged" in refused(tmp_path / "cut.safetensors")
    (tmp_path / "text.safetensors").write_text("hello")
    assert "damaged" in refused(tmp_path / "text.safetensors")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty" in refused(tmp_path / "empty.pt")
    assert "cannot be read" in refused(tmp_path / "missing.pt")


def test_files_without_one_embedding_tensor_are_refused(tmp_path: Path) -> None:
    torch.save({"name": "x", "step": 3}, tmp_path / "none.pt")
    assert "holds no embedding" in refused(tmp_path / "none.pt")
    torch.save(rand(2), tmp_path / "bare.pt")
    assert "holds no embedding" in refused(tmp_path / "bare.pt")
    torch.save({"string_to_param": {"*": rand(1), "+": rand(1)}}, tmp_path / "two.pt")
    assert "2 terms" in refused(tmp_path / "two.pt")
    torch.save({"string_to_param": {}}, tmp_path / "empty-terms.pt")
    assert "no tensor" in refused(tmp_path / "empty-terms.pt")
    torch.save({"a": rand(1), "b": rand(1)}, tmp_path / "two.bin")
    assert "2 terms" in refused(tmp_path / "two.bin")
    save_file({"a": rand(1), "b": rand(1)}, str(tmp_path / "two.safetensors"))
    assert "2 tensors" in refused(tmp_path / "two.safetensors")
    save_file({"clip_l": rand(1, 768), "clip_g": rand(2, 1280)}, str(tmp_path / "xl.safetensors"))
    assert "one count" in refused(tmp_path / "xl.safetensors")
    torch.save({"string_to_param": {"*": rand(1)[0]}}, tmp_path / "flat.pt")
    assert "not (vectors × width)" in refused(tmp_path / "flat.pt")
    torch.save({"string_to_param": {"*": rand(76)}}, tmp_path / "long.pt")
    assert "76 vectors" in refused(tmp_path / "long.pt")
    (tmp_path / "emb.png").write_bytes(b"\x89PNG")
    assert ".safetensors" in refused(tmp_path / "emb.png")


def test_the_db_skips_what_does_not_fit_the_model(tmp_path: Path) -> None:
    wide = Embedding.load(save_pt(tmp_path / "wide.pt", rand(1, 768)), "wide")
    fits = Embedding.load(save_pt(tmp_path / "fits.pt", rand(1)), "fits")
    nameless = Embedding.load(save_pt(tmp_path / " .pt", rand(1)), " ")
    db = EmbeddingDB([wide, fits, nameless], TOKENIZER, WIDTH)
    assert "fits" in db and "wide" not in db and len(db) == 1
    assert set(db.skipped) == {"wide", " "}
    assert str(db.skipped["wide"]) == (
        "Cannot use the embedding wide.pt: its vectors are 768 wide and this model's text "
        "encoder takes 64."
    )
    assert "no words" in str(db.skipped[" "])
    # A skipped file does not unregister an earlier one of its name (A1111).
    wide_fits = Embedding.load(save_pt(tmp_path / "sub-fits.pt", rand(1, 768)), "fits")
    assert "fits" in EmbeddingDB([fits, wide_fits], TOKENIZER, WIDTH)


# --- encoding on the demo model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(demo_model):  # type: ignore[no-untyped-def]
    return demo_model.pipe.tokenizer, demo_model.pipe.text_encoder


def token_rows(clip, text: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The token embeddings of a text's tokens: an embedding that says exactly these words."""
    return clip[1].embeddings.token_embedding.weight[ids(text)].detach().clone()


def db_of(clip, folder: Path, **vectors: torch.Tensor) -> EmbeddingDB:  # type: ignore[no-untyped-def]
    """Embeddings written as files (alternating formats) and loaded back."""
    loaded = []
    for i, (name, v) in enumerate(vectors.items()):
        writer, suffix = [(save_pt, ".pt"), (save_st, ".safetensors"), (save_concept, ".bin")][
            i % 3
        ]
        loaded.append(Embedding.load(writer(folder / f"{name}{suffix}", v), name))
    return EmbeddingDB(loaded, clip[0], WIDTH)


def encode(clip, texts, db=None, clip_skip=2, emphasis="Original"):  # type: ignore[no-untyped-def]
    with torch.inference_mode():
        return encode_prompts(
            *clip, texts, clip_skip=clip_skip, device=CPU, emphasis=emphasis, embeddings=db
        )


def hooks(clip) -> int:  # type: ignore[no-untyped-def]
    return len(clip[1].embeddings.token_embedding._forward_hooks)


@pytest.mark.slow
@pytest.mark.parametrize("clip_skip", [1, 2, 3])
def test_an_embedding_of_words_token_rows_conditions_exactly_as_the_words(
    clip, tmp_path: Path, clip_skip: int
) -> None:  # type: ignore[no-untyped-def]
    db = db_of(
        clip, tmp_path, mychar=token_rows(clip, "1girl smile"), hair=token_rows(clip, "silver hair")
    )
    pairs = [
        ("mychar, blue eyes", "1girl smile, blue eyes"),
        (
            "(mychar:1.3), [hair], red background",
            "(1girl smile:1.3), [silver hair], red background",
        ),
        ("mychar BREAK hair", "1girl smile BREAK silver hair"),
    ]
    for with_embeddings, with_words in pairs:
        got = encode(clip, [with_embeddings], db, clip_skip=clip_skip)
        assert torch.equal(got, encode(clip, [with_words], clip_skip=clip_skip)), with_embeddings
    assert hooks(clip) == 0
    # Random vectors do change it, and a prompt without triggers is untouched by the DB.
    other = db_of(clip, tmp_path, mychar=rand(3, seed=5))
    assert not torch.allclose(
        encode(clip, ["mychar, blue eyes"], other),
        encode(clip, ["1girl smile, blue eyes"]),
        atol=1e-3,
    )
    assert torch.equal(
        encode(clip, ["1girl, blue eyes"], other), encode(clip, ["1girl, blue eyes"])
    )


# A reference from A1111 v1.9.4's source, sharing nothing with engine/prompting but the parser.


def reference_chunks(text: str, lookup: dict[int, list[tuple[list[int], str, int]]]):  # type: ignore[no-untyped-def]
    """`tokenize_line` with `find_embedding_at_position`: [(tokens, multipliers, fixes)]."""
    bos, eos, comma = 49406, 49407, ids(",")[0]
    parsed = parse_attention(text)
    tokenized = TOKENIZER([t for t, _ in parsed], truncation=False, add_special_tokens=False)[
        "input_ids"
    ]
    chunks: list = []
    chunk: dict = {"tokens": [], "mults": [], "fixes": []}
    last_comma = -1

    def next_chunk() -> None:
        nonlocal chunk, last_comma
        pad = 75 - len(chunk["tokens"])
        chunk["tokens"] = [bos, *chunk["tokens"], *[eos] * pad, eos]
        chunk["mults"] = [1.0, *chunk["mults"], *[1.0] * pad, 1.0]
        chunks.append(chunk)
        chunk = {"tokens": [], "mults": [], "fixes": []}
        last_comma = -1

    def find(tokens: list[int], offset: int):  # type: ignore[no-untyped-def]
        for trigger, name, n in lookup.get(tokens[offset], []):
            if tokens[offset : offset + len(trigger)] == trigger:
                return name, n, len(trigger)
        return None

    for tokens, (segment, weight) in zip(tokenized, parsed, strict=True):
        if segment == "BREAK" and weight == -1:
            next_chunk()
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma:
                last_comma = len(chunk["tokens"])
            elif len(chunk["tokens"]) == 75 and last_comma != -1 and 75 - last_comma <= 20:
                cut = last_comma + 1
                moved = chunk["tokens"][cut:], chunk["mults"][cut:]
                chunk["tokens"], chunk["mults"] = chunk["tokens"][:cut], chunk["mults"][:cut]
                next_chunk()
                chunk["tokens"], chunk["mults"] = list(moved[0]), list(moved[1])
            if len(chunk["tokens"]) == 75:
                next_chunk()
            found = find(tokens, position)
            if found is None:
                chunk["tokens"].append(token)
                chunk["mults"].append(weight)
                position += 1
                continue
            name, n, length = found
            if len(chunk["tokens"]) + n > 75:
                next_chunk()
            chunk["fixes"].append((len(chunk["tokens"]), name))
            chunk["tokens"] += [0] * n
            chunk["mults"] += [weight] * n
            position += length
    if chunk["tokens"] or not chunks:
        next_chunk()
    return chunks


def reference_encode(encoder, tokens, fixes, vectors, clip_skip: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """`EmbeddingsWithFixes` on the token embeddings, position embeddings, then CLIP's causal
    pre-norm layers by hand up to A1111's clip-skip layer, then the final norm."""
    table = encoder.embeddings
    rows = []
    for row, row_fixes in zip(
        table.token_embedding.weight[torch.tensor(tokens)], fixes, strict=True
    ):
        for offset, name in row_fixes:
            emb = vectors[name]
            n = min(row.shape[0] - offset - 1, emb.shape[0])
            row = torch.cat([row[: offset + 1], emb[:n], row[offset + 1 + n :]])
        rows.append(row)
    h = torch.stack(rows) + table.position_embedding.weight[:77]
    layers = encoder.encoder.layers
    keep = len(layers) if clip_skip <= 1 else len(layers) - clip_skip + 1
    mask = torch.full((77, 77), float("-inf")).triu(1)
    for layer in layers[:keep]:
        attn, x = layer.self_attn, layer.layer_norm1(h)
        b, t, d = x.shape
        heads = attn.num_heads

        shape = (b, t, heads, d // heads)
        q, k, v = (
            proj(x).reshape(shape).transpose(1, 2)
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj)
        )
        weights = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5 + mask, dim=-1)
        h = h + attn.out_proj((weights @ v).transpose(1, 2).reshape(b, t, d))
        y = layer.mlp.fc1(layer.layer_norm2(h))
        h = h + layer.mlp.fc2(y * torch.sigmoid(1.702 * y))  # quick_gelu
    return encoder.final_layer_norm(h)


def reference_forward(clip, texts: Sequence[str], vectors: dict[str, torch.Tensor], clip_skip: int):  # type: ignore[no-untyped-def]
    """A1111 `forward`: chunks per text, one batch per chunk index, "Original" emphasis."""
    lookup: dict[int, list[tuple[list[int], str, int]]] = {}
    for name, v in vectors.items():
        trigger = ids(name)
        lookup.setdefault(trigger[0], []).append((trigger, name, v.shape[0]))
        lookup[trigger[0]].sort(key=lambda entry: len(entry[0]), reverse=True)
    per_text = [reference_chunks(t, lookup) for t in texts]
    empty = {"tokens": [49406] + [49407] * 76, "mults": [1.0] * 77, "fixes": []}
    zs = []
    for i in range(max(len(c) for c in per_text)):
        batch = [c[i] if i < len(c) else empty for c in per_text]
        z = reference_encode(
            clip[1], [c["tokens"] for c in batch], [c["fixes"] for c in batch], vectors, clip_skip
        )
        mults = torch.tensor([c["mults"] for c in batch])
        original = z.mean()
        z = z * mults[..., None]
        zs.append(z * (original / z.mean()))
    return torch.hstack(zs), per_text


@pytest.mark.slow
@pytest.mark.parametrize("clip_skip", [1, 2])
def test_placement_agrees_with_a_reference_from_a1111s_source(
    clip, tmp_path: Path, clip_skip: int
) -> None:  # type: ignore[no-untyped-def]
    vectors = {
        "foo": rand(1, seed=1),
        "foo_bar": rand(2, seed=2),
        "threevec": rand(3, seed=3),
        "mychar": rand(5, seed=4),
    }
    db = db_of(clip, tmp_path, **vectors)
    cats = " ".join(["cat"] * 73)
    batches = [
        ["mychar, blue eyes, (foo_bar:1.3) smile, [foo] bar"],
        [cats + " threevec, smile", "foo " + cats + ", mychar"],  # crossing 75; padding chunks
        [" ".join(["dog"] * 60) + ", threevec " + " ".join(["cat"] * 12)],  # comma backtrack
        ["1girl, (threevec:0.8) BREAK foo_bar mychar", "1girl, smile"],
    ]
    for texts in batches:
        want, chunks = reference_forward(clip, texts, vectors, clip_skip)
        with torch.inference_mode():
            got = encode(clip, texts, db, clip_skip=clip_skip)
        assert got.shape == want.shape
        assert (got - want).abs().max() <= 1e-5, texts
    assert any(c["fixes"] for c in chunks[0])


@pytest.mark.slow
def test_variants_with_the_same_tokens_but_different_embeddings_stay_apart(
    clip, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    db = db_of(clip, tmp_path, emb_a=rand(2, seed=1), emb_b=rand(2, seed=2))
    with torch.inference_mode():
        cond = encode_conditioning(
            *clip,
            ["1girl, [emb_a:emb_b:0.5]"],
            [""],
            clip_skip=2,
            steps=10,
            device=CPU,
            embeddings=db,
        )
    first, last = cond.at(0)[0][0], cond.at(9)[0][0]
    assert torch.allclose(first, encode(clip, ["1girl, emb_a"], db)[0], atol=1e-6)
    assert torch.allclose(last, encode(clip, ["1girl, emb_b"], db)[0], atol=1e-6)
    assert not torch.allclose(first, last, atol=1e-3)


@pytest.mark.slow
def test_embeddings_used_per_image_prompt_then_negative(clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = db_of(
        clip,
        tmp_path,
        emb_a=rand(1, seed=1),
        emb_b=rand(1, seed=2),
        emb_c=rand(1, seed=3),
        bad=rand(2, seed=4),
    )
    long = " ".join(["cat"] * 80)
    prompts = ["[emb_b:emb_a:0.5], emb_c, emb_b", f"emb_a {long} emb_c", "1girl"]
    negatives = ["bad, emb_c", "", "(bad:1.2)"]
    with torch.inference_mode():
        cond = encode_conditioning(
            *clip, prompts, negatives, clip_skip=2, steps=10, device=CPU, embeddings=db
        )
        plain = encode_conditioning(*clip, prompts, negatives, clip_skip=2, steps=10, device=CPU)
    # Chunk by chunk, each chunk's variants in schedule order (A1111's used_embeddings).
    assert cond.embeddings_used(0) == (("emb_b", "emb_c", "emb_a"), ("bad", "emb_c"))
    assert cond.embeddings_used(1) == (("emb_a", "emb_c"), ())
    assert cond.embeddings_used(2) == ((), ("bad",))
    assert plain.embeddings_used(0) == ((), ())
    # The negative prompt's embedding reaches the uncond only.
    assert torch.equal(cond.at(0, [2])[0], plain.at(0, [2])[0])
    assert not torch.allclose(cond.at(0, [2])[1], plain.at(0, [2])[1], atol=1e-3)


@pytest.mark.slow
def test_a_skipped_embedding_leaves_its_trigger_as_words(clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wide = Embedding.load(save_pt(tmp_path / "smile.pt", rand(1, 768)), "smile")
    db = EmbeddingDB([wide], clip[0], WIDTH)
    assert torch.equal(encode(clip, ["1girl, smile"], db), encode(clip, ["1girl, smile"]))


@pytest.mark.slow
def test_vectors_take_the_encoders_dtype_and_the_hook_always_goes(clip, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = db_of(clip, tmp_path, mychar=token_rows(clip, "1girl smile"))
    half = copy.deepcopy(clip[1]).to(torch.bfloat16)
    z = encode((clip[0], half), ["mychar, smile"], db)
    assert z.dtype == torch.bfloat16
    assert torch.equal(z, encode((clip[0], half), ["1girl smile, smile"]))
    broken = copy.deepcopy(clip[1])
    broken.encoder.layers[0].forward = None  # the encoder call fails mid-way
    with pytest.raises(TypeError):
        encode((clip[0], broken), ["mychar"], db)
    assert len(broken.embeddings.token_embedding._forward_hooks) == 0
