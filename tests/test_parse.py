"""The chat grammar: text → whole GenerationRequest, or a ParseError naming the flag."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.parse import FLAGS, ParseError, PromptSettings, parse_request, read_request
from engine.errors import InvalidRequest
from engine.prompting import extra_networks, to_a1111
from engine.prompting.presets import UC_PRESETS
from engine.request import GenerationRequest
from engine.sampling.samplers import V19_SAMPLERS

R = GenerationRequest
# Flags and lines on their own: no NAI quality tags and no undesired-content preset.
PLAIN = PromptSettings(quality_tags=False, uc_preset="None")
LQBA = UC_PRESETS["Low Quality + Bad Anatomy"]
LQ = UC_PRESETS["Low Quality"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1girl, smile", R(prompt="1girl, smile")),
        (
            "1girl, {{silver hair}}, (smile:1.2) --seed 42 --size 512x768",
            R(prompt="1girl, (silver hair:1.1025), (smile:1.2)", seed=42, width=512, height=768),
        ),
        (
            "a cat --neg ugly, blurry --steps 20 --scale 7.5",
            R(
                prompt="a cat",
                negative_prompt="ugly, blurry",
                num_inference_steps=20,
                guidance_scale=7.5,
            ),
        ),
        (
            'a cat --no "bad hands, text" --cfg=9 --sampler Euler a --n 2',
            R(
                prompt="a cat",
                negative_prompt="bad hands, text",
                guidance_scale=9.0,
                sampler="Euler a",
                batch_size=2,
            ),
        ),
        ("a cat --seed -1", R(prompt="a cat", seed=None)),
        (
            "a cat --model anything-v3 --size 640×640",
            R(prompt="a cat", model="anything-v3", width=640, height=640),
        ),
        ("a--b, \\(x\\) --SEED 3", R(prompt="a--b, \\(x\\)", seed=3)),
        # NAI size names and aspect ratios
        ("a cat --size portrait", R(prompt="a cat", width=512, height=768, size_name="portrait")),
        ("a cat --size landscape", R(prompt="a cat", width=768, height=512, size_name="landscape")),
        (
            "a cat --size large square",
            R(prompt="a cat", width=1024, height=1024, size_name="large-square"),
        ),
        ("a cat --ar 2:3", R(prompt="a cat", width=512, height=768)),
        ("a cat --ar 16:9", R(prompt="a cat", width=840, height=472)),
        ("a cat --ar 1:1", R(prompt="a cat", width=624, height=624)),
        # A1111 and NAI settings
        ("a cat --clip-skip 1 --ensd 0", R(prompt="a cat", clip_skip=1, ensd=0)),
        ("a cat --syntax nai", R(prompt="a cat")),
        ("a [cat] --syntax nai", R(prompt="a (cat:0.9524)")),
        ("a [cat] {dog}", R(prompt="a [cat] (dog:1.05)")),
        ("a [cat:dog:0.5] [x|y]", R(prompt="a [cat:dog:0.5] [x|y]")),
        # a second line with the negative prompt; flags may end any line
        ("a cat\nNegative prompt: ugly", R(prompt="a cat", negative_prompt="ugly")),
        (
            "a cat --steps 20\nNegative prompt: {ugly} --seed 3",
            R(prompt="a cat", negative_prompt="(ugly:1.05)", num_inference_steps=20, seed=3),
        ),
        ("a cat\nNegative prompt: ugly --neg bad", R(prompt="a cat", negative_prompt="ugly, bad")),
        ("a cat\non a mat\n--seed 1", R(prompt="a cat\non a mat", seed=1)),
        ("a cat\n--seed 1\nNegative prompt: x", R(prompt="a cat", negative_prompt="x", seed=1)),
        # full-width punctuation from CJK keyboards
        ("（杰作：1.2），1girl ——seed 3", R(prompt="(杰作:1.2),1girl", seed=3)),
        ("1girl --neg “bad hands, text”", R(prompt="1girl", negative_prompt="bad hands, text")),
    ],
)
def test_parses_whole_requests(text: str, expected: GenerationRequest) -> None:
    assert parse_request(text, requester="u", settings=PLAIN) == dataclasses.replace(
        expected, requester="u"
    )


@pytest.mark.parametrize(
    ("text", "settings", "prompt", "negative"),
    [
        ("1girl", PromptSettings(), "masterpiece, best quality, 1girl", LQBA),
        ("1girl --no-quality --uc none", PromptSettings(), "1girl", ""),
        ("1girl --neg hat", PromptSettings(), "masterpiece, best quality, 1girl", f"{LQBA}, hat"),
        ("1girl --uc lq --no-quality", PromptSettings(), "1girl", LQ),
        ("1girl --uc Low Quality", PLAIN, "1girl", LQ),
        (
            "{1girl}",
            PromptSettings(uc_preset="None"),
            "masterpiece, best quality, (1girl:1.05)",
            "",
        ),
        ("[1girl]", PromptSettings(syntax="nai", quality_tags=False), "(1girl:0.9524)", LQBA),
        (
            "[1girl] --syntax a1111",
            PromptSettings(syntax="nai", quality_tags=False),
            "[1girl]",
            LQBA,
        ),
    ],
)
def test_nai_presets_and_syntax_follow_settings_and_flags(
    text: str, settings: PromptSettings, prompt: str, negative: str
) -> None:
    request = parse_request(text, settings=settings)
    assert (request.prompt, request.negative_prompt) == (prompt, negative)


def test_user_defaults_fill_unset_fields() -> None:
    saved = R(prompt="", negative_prompt="lowres", num_inference_steps=20, sampler="DDIM")
    got = parse_request("a cat --steps 30", saved, requester="telegram:1", settings=PLAIN)
    assert got == R(
        prompt="a cat",
        negative_prompt="lowres",
        num_inference_steps=30,
        sampler="DDIM",
        requester="telegram:1",
    )
    with_preset = parse_request("a cat", saved, settings=PromptSettings(quality_tags=False))
    assert with_preset.negative_prompt == f"{LQBA}, lowres"


_PASTED = "a cat\nSteps: 20, Sampler: {}, CFG scale: 7, Seed: 1, Size: 512x512"


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("a cat", ("DPM++ 2M", "Exponential")),  # the saved pair
        ("a cat --sampler 'Euler a'", ("Euler a", "Exponential")),
        ("a cat --schedule sgm_uniform", ("DPM++ 2M", "SGM Uniform")),
        ("a cat --schedule auto", ("DPM++ 2M", "Automatic")),
        # An old name carries its schedule; --schedule still replaces it (the door's rule).
        ("a cat --sampler 'DPM++ 2M Karras'", ("DPM++ 2M Karras", None)),
        ("a cat --sampler k_lms_ka", ("k_lms_ka", None)),
        ("a cat --sampler 'DPM++ 2M Karras' --schedule Uniform", ("DPM++ 2M Karras", "Uniform")),
        ("a cat --sampler 'Warp drive'", ("Warp drive", "Exponential")),  # the door refuses it
        # A pasted infotext is drawn as written: no Schedule type is the name's own schedule.
        (_PASTED.format("DPM++ 2M Karras"), ("DPM++ 2M Karras", None)),
        (_PASTED.format("Euler a"), ("Euler a", None)),
        (_PASTED.format("DPM++ 2M, Schedule type: Karras"), ("DPM++ 2M", "Karras")),
        (_PASTED.format("Euler a") + " --schedule karras", ("Euler a", "Karras")),
    ],
)
def test_a_saved_schedule_type_never_replaces_the_one_a_name_or_a_paste_gives(
    text: str, pair: tuple[str, str | None]
) -> None:
    saved = R(prompt="", sampler="DPM++ 2M", schedule_type="Exponential")
    got = parse_request(text, saved, settings=PLAIN)
    assert (got.sampler, got.schedule_type) == pair


def test_the_sampler_help_lists_a1111_v19s_names_in_groups_common_first() -> None:
    said = str(FLAGS["--sampler"].help)
    listing, old = said.split("; ")
    groups = dict(group.split(": ") for group in listing.split(" · "))
    assert list(groups) == ["common", "more", "special"]
    assert groups["common"].startswith("Euler a, Euler, DPM++ 2M, ")
    assert [n for names in groups.values() for n in names.split(", ")] == list(V19_SAMPLERS)
    assert old == "or an old name, e.g. 'DPM++ 2M Karras'"


def test_the_reply_hears_what_was_normalised() -> None:
    parsed = read_request("1girl，{{smile}} ——seed 3")
    assert parsed.notes == (
        "Replaced full-width ， —— with ASCII.",
        "Wrote NAI emphasis as A1111 weights: 1girl,(smile:1.1025)",
    )
    assert read_request("1girl, smile").notes == ()


# --- pasted A1111 infotext ----------------------------------------------------------------------

A1111_DOCSTRING = """\
girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate
Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing
Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"""  # noqa: E501

ASUKA = """\
masterpiece portrait of smiling Asuka \\(evangelion\\), evangelion \\(Hideaki\\), caustics, textile shading, high resolution illustration, blue eyes, contempt, feminine, woman disdain, disgust, no pupils, hair over face,orange hair,  long hair, red suit, ilya kuvshinov
Negative prompt: nsfw, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry, headdress, loli,
Steps: 28, Sampler: Euler a, CFG scale: 12, Seed: 2870305590, Size: 512x512, Model hash: 925997e9, Clip skip: 2, ENSD: 31337"""  # noqa: E501


def test_a1111_docstring_infotext_is_read_as_a1111_reads_it() -> None:
    parsed = read_request(A1111_DOCSTRING, requester="u")  # default settings: presets on
    prompt, negative, _ = A1111_DOCSTRING.split("\n")
    assert parsed.infotext
    assert parsed.request == R(
        prompt=prompt,  # no quality tags, no UC preset: the text is used as written
        negative_prompt=negative.removeprefix("Negative prompt: "),
        num_inference_steps=20,
        sampler="Euler a",
        guidance_scale=7.0,
        seed=965400086,
        width=512,
        height=512,
        clip_skip=1,  # A1111: no "Clip skip" means 1
        ensd=0,  # no "ENSD" means 0
        rng="GPU",
        emphasis="Original",
        requester="u",
        model_hash="45dee52b",  # the model A1111 drew it with, picked if it is here
    )


def test_nai_leak_infotext_keeps_clip_skip_ensd_and_escapes() -> None:
    request = parse_request(ASUKA)
    assert request.prompt.startswith("masterpiece portrait of smiling Asuka \\(evangelion\\),")
    assert request.negative_prompt.endswith("blurry, headdress, loli,")
    assert (request.clip_skip, request.ensd, request.seed) == (2, 31337, 2870305590)
    assert (request.num_inference_steps, request.guidance_scale) == (28, 12.0)


def test_flags_after_a_pasted_infotext_override_it() -> None:
    parsed = read_request(A1111_DOCSTRING + " --seed 5 --steps 30 --model mine")
    assert (parsed.request.seed, parsed.request.num_inference_steps) == (5, 30)
    assert parsed.request.model == "mine"


def test_pasted_infotext_text_is_a1111_text() -> None:
    text = "{x}, （y）\nNegative prompt: [z]\nSteps: 4, Sampler: Euler, Seed: 1, Size: 64x64"
    parsed = read_request(text, settings=PromptSettings(syntax="nai"))
    # A1111 reads braces and full-width brackets as text, and [z] as ÷1.1: keep them all.
    assert (parsed.request.prompt, parsed.request.negative_prompt) == ("{x}, （y）", "[z]")
    assert not any("full-width" in note for note in parsed.notes)


def test_pasted_infotext_notes_what_is_not_used() -> None:
    text = A1111_DOCSTRING + ", Model: animefull, Face restoration: CodeFormer, Tiling: True"
    notes = read_request(text).notes
    assert any("'animefull'" in note and "--model" in note for note in notes)
    assert "Ignored infotext settings this bot does not use: Face restoration, Tiling." in notes


def test_a_pasted_infotexts_model_is_asked_for_unless_model_is_given() -> None:
    text = A1111_DOCSTRING + ", Model: animefull"
    parsed = read_request(text)
    assert (parsed.request.model, parsed.request.model_hash) == ("animefull", "45dee52b")
    assert "Drawing with the infotext's model 'animefull' 45dee52b" in " ".join(parsed.notes)
    chosen = read_request(text + " --model aidraw-demo").request
    assert (chosen.model, chosen.model_hash) == ("aidraw-demo", None)


def test_emphasis_mode_comes_from_the_infotext() -> None:
    text = "a (cat:1.2)\nSteps: 4, Sampler: Euler, Seed: 1, Emphasis: No norm"
    assert parse_request(text).emphasis == "No norm"


def test_a_short_last_line_is_prompt_not_settings() -> None:
    # A1111: the last line is settings only with three or more `key: value` pairs.
    request = parse_request("a cat\nstyle: anime, mood: calm", settings=PLAIN)
    assert request.prompt == "a cat\nstyle: anime, mood: calm"


# What users really type: weights, prompt editing, colons and braces on the last line. None of
# these is a pasted settings line (A1111 always writes `Steps:` there); each stays the prompt.
EVERYDAY_PROMPTS = [
    "1girl, (smile:1.2), (hat:1.1), (red eyes:1.3)",
    "(masterpiece:1.2), (best quality:1.1), 1girl, (silver hair:1.3), (blue eyes:1.2), smile",
    "1girl, [cat:dog:0.5], (hat:0.8), [red|blue] hair, (outdoors:1.4)",
    "a clock, time: 3pm, place: tokyo, mood: calm, weather: rain",
    "{{silver hair}}, {smile}, [[frown]], (steps:1.2), (seed:1.1), (size:0.9)",
    "1girl, (Steps:1.2), (Sampler:1.1), (Seed:1.3)",
    "portrait\nNegative prompt: (bad hands:1.4), (lowres:1.2), (text:1.1)",
    "1girl, smile\n(red hair:1.2), (blue background:1.3), (hat:1.1)",
]


@pytest.mark.parametrize("text", EVERYDAY_PROMPTS)
def test_everyday_weighted_prompts_stay_prompts(text: str) -> None:
    parsed = read_request(text, settings=PLAIN)
    typed, _, negative = text.partition("\nNegative prompt: ")
    assert not parsed.infotext
    assert parsed.request.prompt == to_a1111(typed)
    assert parsed.request.negative_prompt == negative
    assert parsed.request.num_inference_steps is None and parsed.request.seed is None


@pytest.mark.parametrize(
    "settings",
    [
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512",
        "Steps: 28, Seed: 1",
        "Seed: 1, Steps: 28, Model: nai",
    ],
)
def test_a_settings_line_with_steps_is_a_pasted_infotext(settings: str) -> None:
    parsed = read_request(f"1girl, (smile:1.2)\n{settings}", settings=PLAIN)
    assert parsed.infotext
    assert parsed.request.prompt == "1girl, (smile:1.2)"
    assert parsed.request.seed == 1


def test_flags_that_do_not_work_yet_are_never_advertised() -> None:
    with pytest.raises(ParseError) as unknown:
        parse_request("a cat --bogus 1")
    for flag in ("--hn", "--vae", "--strength", "--hires", "--upscaler"):
        assert flag in FLAGS and flag in str(unknown.value)
    with pytest.raises(ParseError, match=r"Did you mean --strength\?"):
        parse_request("a cat --strenght 0.5")


@pytest.mark.parametrize(
    ("text", "prompt"),
    [
        # Tags stay in the prompt (A1111 keeps them in the infotext); CLIP never sees them.
        ("1girl, <lora:foo:0.8> smile", "1girl, <lora:foo:0.8> smile"),
        ("<hypernet:aini:1>1girl", "<hypernet:aini:1>1girl"),
        (  # a pasted NAI infotext's Hypernet key is a tag too (A1111 appends it to the prompt)
            "1girl\nSteps: 28, Seed: 1, Hypernet: aini, Hypernet strength: 0.6",
            "1girl<hypernet:aini:0.6>",
        ),
        ("1girl --hn anime", "1girl<hypernet:anime>"),  # strength 1 (A1111)
        ("1girl --hn anime_3:0.6", "1girl<hypernet:anime_3:0.6>"),
    ],
)
def test_extra_networks_are_read_from_the_prompt_and_hn(text: str, prompt: str) -> None:
    parsed = read_request(text, settings=PLAIN)
    assert parsed.request.prompt == prompt
    assert not any("not available" in note for note in parsed.notes)


def test_hires_and_strength_flags() -> None:
    hires = parse_request("1girl --hires")
    assert (hires.enable_hr, hires.hr_scale, hires.denoising_strength) == (True, 2.0, None)
    custom = parse_request("1girl --hires 1.5 --strength 0.55 --hires-steps 10 --upscaler Lanczos")
    assert (custom.enable_hr, custom.hr_scale, custom.hr_second_pass_steps) == (True, 1.5, 10)
    assert (custom.denoising_strength, custom.hr_upscaler) == (0.55, "Lanczos")
    assert not parse_request("1girl --strength 0.4").enable_hr  # img2img, with an image


def test_vae_comes_from_the_flag_or_a_pasted_infotext() -> None:
    assert parse_request("1girl --vae animevae.pt").vae == "animevae.pt"
    assert parse_request("1girl --vae None").vae == "None"
    assert parse_request("1girl --vae auto").vae is None  # the model's default
    pasted = read_request("1girl\nSteps: 28, Seed: 1, VAE hash: 2f11e4e6b0, VAE: animevae.pt")
    assert pasted.request.vae == "animevae.pt"
    assert not any("Ignored" in note for note in pasted.notes)
    # Extra-network tags in a negative prompt are text to A1111: left as they are.
    negative = parse_request("1girl --neg <lora:foo:1>", settings=PLAIN)
    assert negative.negative_prompt == "<lora:foo:1>"


def test_extra_network_tags_are_read_as_a1111_reads_them() -> None:
    assert extra_networks("a <lora:foo:0.8>, <hypernet:bar:1:2> b <x> <:y>") == (
        "a ,  b <x> <:y>",
        [("lora", ["foo", "0.8"]), ("hypernet", ["bar", "1", "2"])],
    )


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a cat --sede 4", r"Unknown flag --sede\. Did you mean --seed\?"),
        ("a cat --xyzzy", r"Unknown flag --xyzzy\. Known flags: --seed"),
        ("a cat --clip-sikp 2", r"Unknown flag --clip-sikp\. Did you mean --clip-skip\?"),
        ("a cat --seed 4 more words", r"Unexpected 'more' after --seed 4"),
        ("a cat --no-quality please", r"Unexpected 'please' after --no-quality"),
        ("a cat --no-quality=1", r"--no-quality takes no value"),
        ("a cat --seed four", r"--seed needs a whole number, not 'four'"),
        ("a cat --scale nan", r"--scale needs a finite number"),
        ("a cat --size 512", r"--size needs WIDTHxHEIGHT, e.g. 512x768, or a NAI size: portrait"),
        ("a cat --size huge", r"--size needs WIDTHxHEIGHT.*not 'huge'"),
        ("a cat --ar 2", r"--ar needs WIDTH:HEIGHT, e.g. 2:3"),
        ("a cat --ar 0:1", r"--ar needs WIDTH:HEIGHT"),
        ("a cat --ar 99:1", r"--ar 99:1 is too wide: use a ratio from 1:4 to 4:1"),
        ("a cat --ar 1:4.5", r"--ar 1:4\.5 is too tall: use a ratio from 1:4 to 4:1"),
        ("a cat --size 512x512 --ar 2:3", r"Use either --size or --ar"),
        ("a cat --uc bad", r"--uc: Unknown undesired-content preset 'bad'"),
        ("a cat --syntax koishi", r"--syntax needs a1111 or nai, not 'koishi'"),
        ("a cat --steps", r"--steps needs a value \(denoising steps\)"),
        ("a cat --hires big", r"--hires needs a number, not 'big'"),
        ("a cat --hires 2 3", r"Unexpected '3' after --hires 2"),
        ("a cat --hn anime:loud", r"--hn: <hypernet:anime:loud>: the weight 'loud' is not"),
        ("a cat --hn a:1:2", r"--hn needs NAME or NAME:STRENGTH, e\.g\. anime:0\.8"),
        ("a cat <lora:x:1e9>", r"<lora:x:1e9>: the weight '1e9' is not allowed: use a number"),
        ("a cat <lyco:x:2>, <embedding:y>", r"<embedding:y> is not an extra network here"),
        ("<lora:foo:0.8>", r"The prompt is empty"),
        # lengths count what was typed, not the rewrite ({ x 10,000 becomes a short weight)
        (
            "{" * 10_000 + "girl" + "}" * 10_000,
            r"The prompt is 20004 characters long: at most 4000",
        ),
        ("a cat --neg " + "x" * 4001, r"The negative prompt is 4001 characters long: at most 4000"),
        ("a (cat:1.2.3)", r"The weight in ':1\.2\.3\)' is not a number"),
        ("a cat --neg (x:.)", r"The weight in ':\.\)' is not a number"),
        ("--seed 4", r"The prompt is empty"),
        ("   ", r"The prompt is empty"),
        ("Negative prompt: ugly", r"The prompt is empty"),
        ('a cat --neg "unclosed', r"check your quotes"),
        ("a\nSteps: x, Sampler: Euler, Seed: 1", r"The infotext's Steps 'x' is not a number"),
        ("a\nSteps: 4, Seed: 1, Emphasis: loud", r"The infotext's Emphasis 'loud' is unknown"),
    ],
)
def test_bad_text_names_what_was_wrong(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_request(text)


CHAT = st.lists(
    st.sampled_from(
        [
            "1girl",
            " ",
            ", ",
            "\n",
            "{x}",
            "[y]",
            "(z:1.2)",
            "(",
            ")",
            ":",
            '"',
            "'",
            "\\",
            "，",
            "（",
            "——",
            "=",
            " --seed 3",
            " --seed",
            " --neg ",
            " --no-quality",
            " --uc ",
            " --size portrait",
            " --ar 2:3",
            " --bogus",
            " --syntax nai",
            "Negative prompt: ",
            "Steps: 4, Sampler: Euler, Seed: 1",
            ", Size: 64x64",
            ", Emphasis: None",
            "BREAK",
            "[a:b:0.5]",
            "[a|b]",
            "1e9",
            "-",
        ]
    ),
    max_size=25,
).map("".join)


@given(CHAT)
@settings(max_examples=400, deadline=None)
def test_parse_request_raises_only_parse_errors(text: str) -> None:
    try:
        request = parse_request(text)
    except ParseError:
        return
    except InvalidRequest as e:  # pragma: no cover - the failure message names the leak
        raise AssertionError(f"InvalidRequest instead of ParseError: {e}") from e
    assert request.prompt.strip()


# --- round trip through an image's infotext ----------------------------------------------------


@pytest.mark.slow
def test_an_images_infotext_pasted_back_draws_the_same_image(demo_model) -> None:  # type: ignore[no-untyped-def]
    from engine.generate import generate
    from engine.request import Limits
    from tests.conftest import png_pixels

    chat = "1girl, {{silver hair}}, [smile:frown:0.5] --seed 11 --steps 3 --size 64x64 --neg hat"
    first = generate(demo_model, [parse_request(chat)], limits=Limits())[0]
    pasted = parse_request(first.infotext)
    assert pasted.prompt == first.request.prompt  # the A1111 text, quality tags included
    assert pasted.negative_prompt == first.request.negative_prompt
    again = generate(demo_model, [pasted], limits=Limits())[0]
    assert again.infotext == first.infotext
    assert np.array_equal(png_pixels(again.png), png_pixels(first.png))


def test_a_pasted_hires_infotext_asks_for_hires() -> None:
    pasted = read_request(
        "1girl\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, "
        "Denoising strength: 0.55, Hires upscale: 1.5, Hires steps: 10, Hires upscaler: Latent"
    )
    r = pasted.request
    assert (r.enable_hr, r.hr_scale, r.hr_second_pass_steps, r.hr_upscaler) == (
        True,
        1.5,
        10,
        "Latent",
    )
    assert r.denoising_strength == 0.55
    assert not any("Ignored" in note for note in pasted.notes)
