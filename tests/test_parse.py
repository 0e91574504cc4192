"""The chat grammar: text → whole GenerationRequest, or a ParseError naming the flag."""

from __future__ import annotations

import pytest

from bot.parse import ParseError, parse_request
from engine.request import GenerationRequest

R = GenerationRequest


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1girl, smile", R(prompt="1girl, smile", requester="u")),
        (
            "1girl, {{silver hair}}, (smile:1.2) --seed 42 --size 512x768",
            R(
                prompt="1girl, {{silver hair}}, (smile:1.2)",
                seed=42,
                width=512,
                height=768,
                requester="u",
            ),
        ),
        (
            "a cat --neg ugly, blurry --steps 20 --scale 7.5",
            R(
                prompt="a cat",
                negative_prompt="ugly, blurry",
                num_inference_steps=20,
                guidance_scale=7.5,
                requester="u",
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
                requester="u",
            ),
        ),
        ("a cat --seed -1", R(prompt="a cat", seed=None, requester="u")),
        (
            "a cat --model anything-v3 --size 640×640",
            R(prompt="a cat", model="anything-v3", width=640, height=640, requester="u"),
        ),
        ("a--b, \\(x\\) --SEED 3", R(prompt="a--b, \\(x\\)", seed=3, requester="u")),
    ],
)
def test_parses_whole_requests(text: str, expected: GenerationRequest) -> None:
    assert parse_request(text, requester="u") == expected


def test_user_defaults_fill_unset_fields() -> None:
    saved = R(prompt="", negative_prompt="lowres", num_inference_steps=20, sampler="DDIM")
    got = parse_request("a cat --steps 30", saved, requester="telegram:1")
    assert got == R(
        prompt="a cat",
        negative_prompt="lowres",
        num_inference_steps=30,
        sampler="DDIM",
        requester="telegram:1",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a cat --sede 4", r"Unknown flag --sede\. Did you mean --seed\?"),
        ("a cat --xyzzy", r"Unknown flag --xyzzy\. Known flags: --seed"),
        ("a cat --seed 4 more words", r"Unexpected 'more' after --seed 4"),
        ("a cat --seed four", r"--seed needs a whole number, not 'four'"),
        ("a cat --scale nan", r"--scale needs a finite number"),
        ("a cat --size 512", r"--size needs WIDTHxHEIGHT, e.g. 512x768"),
        ("a cat --steps", r"--steps needs a value \(denoising steps\)"),
        ("--seed 4", r"The prompt is empty"),
        ("   ", r"The prompt is empty"),
        ('a cat --neg "unclosed', r"check your quotes"),
    ],
)
def test_bad_text_names_what_was_wrong(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_request(text)
