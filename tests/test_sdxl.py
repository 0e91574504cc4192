"""SDXL-family checkpoints: detection, offline loading, A1111's SDXL conditioning, drawing,
v-prediction and zero terminal SNR, on a tiny SDXL-architecture model built from config."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from diffusers.schedulers.scheduling_euler_discrete import rescale_zero_terminal_snr
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from bot.cli import main
from engine.device import DeviceOptions
from engine.errors import InvalidRequest
from engine.generate import generate
from engine.infotext import request_from_infotext
from engine.models import SDXL_CONFIG, LoadedModel, ModelRegistry
from engine.models.architecture import (
    Architecture,
    UnknownArchitecture,
    checkpoint_architecture,
    from_keys,
)
from engine.preview import SDXL_PREVIEW
from engine.prompting.presets import NAI_PRESETS
from engine.prompting.sdxl import (
    SdxlEncoders,
    encode_sdxl_conditioning,
    encode_sdxl_prompts,
    size_numbers,
    unet_inputs,
)
from engine.request import GenerationRequest, Limits
from engine.sampling.denoiser import ZERO_SNR_LAST, CFGDenoiser, NoiseSchedule
from engine.sampling.loop import sample
from engine.sampling.samplers import SAMPLERS
from tests.conftest import png_pixels
from tests.sdxl_tiny import SCHEDULER, TIME_DIM, build_tiny_sdxl, write_sdxl_checkpoint

FOLDER, SINGLE, VPRED = "tiny-sdxl", "tiny-xl", "tiny-xl-vpred"
CONFIG = ".configs/tiny-sdxl"  # a dot-folder: the registry does not list it as a model
REQUEST = GenerationRequest(
    prompt="1girl, (smile:1.3), [cat:dog:0.5], cherry blossoms",
    negative_prompt="lowres",
    width=64,
    height=64,
    num_inference_steps=4,
    guidance_scale=6.0,
    sampler="Euler a",
    seed=1234,
)
LIMITS = Limits()


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ with the tiny SDXL as a diffusers folder, as an A1111-layout single file, and
    as a v-prediction + ztsnr single file. The single files' sidecars name a config-only copy
    of the folder (JSON files only, no tokenizers: the shipped configs' layout)."""
    models = tmp_path_factory.mktemp("sdxl-models")
    pipe = build_tiny_sdxl()
    pipe.save_pretrained(models / FOLDER)
    for config in (models / FOLDER).rglob("*.json"):
        if config.parent.name not in ("tokenizer", "tokenizer_2"):
            target = models / CONFIG / config.relative_to(models / FOLDER)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(config.read_bytes())
    write_sdxl_checkpoint(pipe, models / f"{SINGLE}.safetensors")
    write_sdxl_checkpoint(pipe, models / f"{VPRED}.safetensors", v_pred=True, ztsnr=True)
    for name in (SINGLE, VPRED):
        (models / f"{name}.toml").write_text(f'config = "{CONFIG}"\n', encoding="utf-8")
    # A LoRA for both text encoders and the UNet, and an SDXL embedding.
    gen = torch.Generator().manual_seed(7)
    lora: dict[str, torch.Tensor] = {}
    for key, shape in (
        ("lora_te2_text_model_encoder_layers_3_mlp_fc1", (96, 48)),
        ("lora_te1_text_model_encoder_layers_1_mlp_fc1", (64, 32)),
        ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", (64, 80)),
    ):
        lora[f"{key}.lora_down.weight"] = torch.randn((4, shape[1]), generator=gen)
        lora[f"{key}.lora_up.weight"] = torch.randn((shape[0], 4), generator=gen)
    (models / "Lora").mkdir()
    save_file(lora, str(models / "Lora" / "xl-style.safetensors"))
    (models / "embeddings").mkdir()
    pair = {
        "clip_l": torch.randn((2, 32), generator=gen),
        "clip_g": torch.randn((2, 48), generator=gen),
    }
    save_file(pair, str(models / "embeddings" / "xlemb.safetensors"))
    return models


@pytest.fixture(scope="module")
def registry(sdxl_dir: Path) -> ModelRegistry:
    return ModelRegistry(sdxl_dir)


@pytest.fixture(scope="module")
def single(registry: ModelRegistry) -> LoadedModel:
    return registry.load(SINGLE, DeviceOptions(device="cpu"))


@pytest.fixture(scope="module")
def folder(registry: ModelRegistry) -> LoadedModel:
    return registry.load(FOLDER, DeviceOptions(device="cpu"))


# --- the shipped configs and detection ------------------------------------------------------


def test_shipped_sdxl_configs_have_the_published_parameter_counts() -> None:
    with init_empty_weights():  # meta tensors: no memory for 3.5 billion parameters
        unet = UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(SDXL_CONFIG / "unet")
        )
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SDXL_CONFIG / "vae"))
        clip_l = CLIPTextModel(CLIPTextConfig.from_pretrained(SDXL_CONFIG / "text_encoder"))
        big_g = CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(SDXL_CONFIG / "text_encoder_2")
        )

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert count(unet) == 2_567_463_684
    assert count(clip_l) == 123_060_480
    assert count(big_g) == 694_659_840
    assert count(vae) == 83_653_863
    assert vae.config.scaling_factor == 0.13025


def test_architecture_from_checkpoint_keys() -> None:
    sd1 = ["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
    sd2 = ["cond_stage_model.model.ln_final.weight"]
    xl = ["conditioner.embedders.1.model.ln_final.weight"]
    assert from_keys(sd1) == Architecture("SD-1.x")
    assert from_keys(sd2) == Architecture("SD-2.x")
    assert from_keys(xl) == Architecture("SDXL")
    noob = from_keys([*xl, "v_pred", "ztsnr"])
    assert noob == Architecture("SDXL", "v_prediction", zero_snr=True)
    assert str(noob) == "SDXL, v-prediction, zero terminal SNR"
    with pytest.raises(UnknownArchitecture, match="refiner"):
        from_keys(["conditioner.embedders.0.model.ln_final.weight"])
    with pytest.raises(UnknownArchitecture):
        from_keys(["model.diffusion_model.out.2.weight"])


def test_registry_lists_sdxl_models_with_their_architecture_and_defaults(
    registry: ModelRegistry, sdxl_dir: Path
) -> None:
    assert str(registry.models[FOLDER].architecture) == "SDXL"
    assert str(registry.models[SINGLE].architecture) == "SDXL"
    assert registry.models[VPRED].architecture == Architecture("SDXL", "v_prediction", True)
    assert checkpoint_architecture(sdxl_dir / f"{SINGLE}.safetensors").is_sdxl
    assert registry.models[SINGLE].preview == SDXL_PREVIEW  # A1111's SDXL live-preview map
    d = registry.models[SINGLE].defaults
    assert (d.width, d.height, d.guidance_scale, d.ensd) == (832, 1216, 6.0, 0)


def test_a_sidecar_says_what_the_file_does_not(sdxl_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "x.safetensors").write_bytes((sdxl_dir / f"{SINGLE}.safetensors").read_bytes())
    sidecar = models / "x.toml"
    sidecar.write_text(
        'prediction_type = "v_prediction"\nzero_terminal_snr = true\n[defaults]\nwidth = 1024\n'
    )
    entry = ModelRegistry(models).models["x"]
    assert entry.architecture == Architecture("SDXL", "v_prediction", True)
    assert (entry.defaults.width, entry.defaults.height) == (1024, 1216)
    sidecar.write_text('prediction_type = "v"\n')
    registry = ModelRegistry(models)
    assert "x" not in registry.models and "prediction_type" in registry.problems[0]


# --- loading --------------------------------------------------------------------------------


def test_single_file_loads_the_folders_exact_weights(
    single: LoadedModel, folder: LoadedModel
) -> None:
    assert type(single.pipe).__name__ == "StableDiffusionXLPipeline"
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours, theirs = (
            getattr(single.pipe, part).state_dict(),
            getattr(folder.pipe, part).state_dict(),
        )
        assert ours.keys() == theirs.keys(), part
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), part
    assert single.pipe.tokenizer_2.pad_token_id == 0  # OpenCLIP pads with "!"
    assert single.pipe.tokenizer.pad_token_id == single.pipe.tokenizer.eos_token_id
    assert single.scheduler_config["prediction_type"] == "epsilon"


@pytest.mark.timeout(60)
def test_single_file_draws_the_folders_pixels_and_a1111s_infotext(
    single: LoadedModel, folder: LoadedModel
) -> None:
    a = generate(single, [REQUEST], limits=LIMITS)[0]
    b = generate(folder, [REQUEST], limits=LIMITS)[0]
    assert (png_pixels(a.png) == png_pixels(b.png)).all()
    assert png_pixels(a.png).std() > 0
    assert "Size: 64x64" in a.infotext and f"Model: {SINGLE}" in a.infotext
    again = request_from_infotext(a.infotext)
    assert generate(single, [again], limits=LIMITS)[0].png == a.png


@pytest.mark.timeout(60)
def test_the_cli_lists_and_draws_an_sdxl_single_file(
    sdxl_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(f'[engine]\nmodels_dir = "{sdxl_dir}"\n', encoding="utf-8")
    assert main(["--settings", str(settings), "models"]) == 0
    out = capsys.readouterr().out
    assert f"  {SINGLE}  [single_file, SDXL] " in out
    assert f"  {VPRED}  [single_file, SDXL, v-prediction, zero terminal SNR] " in out
    assert "832x1216, Euler a, 28 steps, CFG 6, clip skip 2" in out
    png = tmp_path / "xl.png"
    text = f"1girl --model {SINGLE} --steps 3 --size 64x64 --seed 5"
    assert main(["--settings", str(settings), "draw", text, "--out", str(png)]) == 0
    with Image.open(png) as image:
        info = image.info["parameters"]
    assert f"Model: {SINGLE}" in info and "Size: 64x64" in info and "Seed: 5" in info


@pytest.mark.timeout(60)
def test_loras_embeddings_hires_and_img2img_draw_on_sdxl(single: LoadedModel) -> None:
    plain = generate(single, [REQUEST], limits=LIMITS)[0]
    styled = dataclasses.replace(REQUEST, prompt="<lora:xl-style:0.8> 1girl, xlemb, smile")
    with_extras = generate(single, [styled], limits=LIMITS)[0]
    assert 'Lora hashes: "xl-style: ' in with_extras.infotext
    assert 'TI hashes: "xlemb: ' in with_extras.infotext
    assert (png_pixels(with_extras.png) != png_pixels(plain.png)).any()
    again = generate(single, [request_from_infotext(with_extras.infotext)], limits=LIMITS)[0]
    assert again.png == with_extras.png
    hires = dataclasses.replace(REQUEST, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2)
    bigger = generate(single, [hires], limits=LIMITS)[0]
    assert png_pixels(bigger.png).shape == (96, 96, 3) and "Hires upscale: 1.5" in bigger.infotext


# --- A1111's SDXL conditioning --------------------------------------------------------------


def a1111_sdxl_reference(
    encoders: SdxlEncoders, text: str, height: int, width: int, negative: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(crossattn, vector) for one short prompt, written out from A1111 v1.9.4
    `sd_models_xl.get_learned_conditioning`, `sd_hijack_clip` and sgm's embedders: each
    encoder's `hidden_states[layer_idx]` (penultimate), "Original" emphasis per encoder, bigG
    pooled = ln_final(last)[argmax(tokens)] @ text_projection, the sizes each through sgm's
    256-wide (here TIME_DIM) sinusoidal `timestep_embedding`, an empty negative zeroed."""
    tok_l = encoders.tokenizer  # bigG reads the same ids (one vocabulary), padded with 0
    pieces = [("1girl, ", 1.0), ("smile", 1.3), (", cherry blossoms", 1.0)]
    ids, weights = [tok_l.bos_token_id], [1.0]
    if text:
        for piece, weight in pieces:
            got = tok_l(piece, add_special_tokens=False)["input_ids"]
            ids += got
            weights += [weight] * len(got)
    ids += [tok_l.eos_token_id] * (77 - len(ids))
    weights += [1.0] * (77 - len(weights))
    ids_g = list(ids)
    first_end = ids_g.index(tok_l.eos_token_id)
    ids_g[first_end + 1 :] = [0] * (76 - first_end)  # A1111's id_pad = 0 for OpenCLIP
    multipliers = torch.tensor([weights])[..., None]

    def emphasised(z: torch.Tensor) -> torch.Tensor:
        original = z.mean()
        z = z * multipliers
        return z * (original / z.mean())

    clip_l, big_g = encoders.text_encoder, encoders.text_encoder_2
    out_l = clip_l(torch.tensor([ids]), output_hidden_states=True)
    z_l = emphasised(out_l.hidden_states[clip_l.config.num_hidden_layers - 1])
    out_g = big_g(torch.tensor([ids_g]), output_hidden_states=True)
    z_g = emphasised(out_g.hidden_states[big_g.config.num_hidden_layers - 1])
    last = big_g.text_model.final_layer_norm(out_g.hidden_states[-1])
    pooled = last[0, torch.tensor(ids_g).argmax()] @ big_g.text_projection.weight.T
    crossattn = torch.cat([z_l, z_g], dim=-1)[0]
    if negative and text == "":
        crossattn, pooled = torch.zeros_like(crossattn), torch.zeros_like(pooled)
    half = TIME_DIM // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)

    def embed(value: float) -> torch.Tensor:
        args = value * freqs
        return torch.cat([torch.cos(args), torch.sin(args)])

    sizes = [embed(v) for v in (height, width, 0, 0, height, width)]
    return crossattn, torch.cat([pooled, *sizes])


@pytest.mark.parametrize(("text", "negative"), [("x", False), ("", False), ("", True)])
def test_conditioning_is_a1111s(single: LoadedModel, text: str, negative: bool) -> None:
    encoders = SdxlEncoders.of(single.pipe)
    prompt = "1girl, (smile:1.3), cherry blossoms" if text else ""
    with torch.inference_mode():
        packed = encode_sdxl_prompts(
            encoders, [prompt], sizes=size_numbers(96, 64), device=torch.device("cpu"),
            zero=negative and prompt == "",
        )  # fmt: skip
        context, added = unet_inputs(packed, encoders.pooled_dim)
        unet = single.pipe.unet
        time_embeds = unet.add_time_proj(added["time_ids"].flatten()).reshape(1, -1)
        vector = torch.cat([added["text_embeds"], time_embeds], dim=-1)[0]
        ref_crossattn, ref_vector = a1111_sdxl_reference(encoders, prompt, 96, 64, negative)
    assert context.shape == (1, 77, 80) and vector.shape == ref_vector.shape
    torch.testing.assert_close(context[0], ref_crossattn, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vector, ref_vector, atol=1e-5, rtol=1e-5)
    assert added["time_ids"].tolist() == [[96.0, 64.0, 0.0, 0.0, 96.0, 64.0]]


def test_long_prompts_break_and_editing(single: LoadedModel) -> None:
    encoders = SdxlEncoders.of(single.pipe)
    cpu = torch.device("cpu")
    with torch.inference_mode():
        long = encode_sdxl_prompts(
            encoders, ["a, " * 50 + "b"], sizes=size_numbers(64, 64), device=cpu
        )
        short = encode_sdxl_prompts(encoders, ["a, " * 20], sizes=size_numbers(64, 64), device=cpu)
        broken = encode_sdxl_prompts(
            encoders, ["a BREAK b"], sizes=size_numbers(64, 64), device=cpu
        )
        editing = encode_sdxl_conditioning(
            encoders, ["[cat:dog:2]"], [""], size=(64, 64), steps=4, device=cpu
        )
    assert long.shape[1] == 1 + 2 * 77 and broken.shape[1] == 1 + 2 * 77
    assert short.shape[1] == 1 + 77
    cond_early, uncond = editing.at(0)
    cond_late, _ = editing.at(3)
    assert not torch.equal(cond_early, cond_late)
    assert torch.equal(cond_early[:, 0], cond_early[:, 0])  # same size row
    assert (
        uncond[:, 1:].abs().max() == 0
        and uncond[0, 0, 48:54].tolist() == [64.0] * 2 + [0.0] * 2 + [64.0] * 2
    )


def test_hypernetworks_are_refused_on_sdxl(single: LoadedModel) -> None:
    request = dataclasses.replace(REQUEST, prompt="1girl <hypernet:anime:1>")
    with pytest.raises(InvalidRequest, match="SD-1.x models only") as caught:
        generate(single, [request], limits=LIMITS)
    assert caught.value.key == "hypernet_sd1_only"


# --- v-prediction and zero terminal SNR ----------------------------------------------------


def fake_unet(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in for a v-prediction UNet (depends on x and t)."""
    return 0.4 * x - 0.1 * torch.sin(t / 150.0)[:, None, None, None] * x.flip(-1)


@pytest.mark.parametrize("steps", [10, 28])
def test_v_prediction_euler_matches_diffusers(steps: int) -> None:
    config = {**SCHEDULER, "prediction_type": "v_prediction", "timestep_spacing": "linspace"}
    schedule = NoiseSchedule.from_config(config)
    context = torch.zeros(1, 77, 8)
    denoiser = CFGDenoiser(
        fake_unet, schedule, lambda step: (context, context), 1.0, dtype=torch.float32
    )
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    ours = sample(
        SAMPLERS["Euler"], denoiser, noise, steps, lambda s, n: torch.zeros_like(noise),
        lambda i, x, d: None,
    )  # fmt: skip
    scheduler = EulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(steps)
    latents = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        v = fake_unet(model_input, t.reshape(1).float(), context)
        latents = scheduler.step(v, t, latents).prev_sample
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, latents, atol=2e-4, rtol=2e-4)


def test_zero_terminal_snr_is_a1111s_rescale() -> None:
    plain = NoiseSchedule.from_config(SCHEDULER)
    rescaled = NoiseSchedule.from_config({**SCHEDULER, "rescale_betas_zero_snr": True})
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    reference = torch.cumprod(1 - rescale_zero_terminal_snr(betas), dim=0)
    torch.testing.assert_close(
        rescaled.alphas_cumprod[:-1].double(), reference[:-1], atol=1e-6, rtol=1e-4
    )
    assert rescaled.alphas_cumprod[-1].item() == pytest.approx(ZERO_SNR_LAST)
    assert rescaled.alphas_cumprod[0] == plain.alphas_cumprod[0]
    assert rescaled.sigma_max == pytest.approx(((1 - ZERO_SNR_LAST) / ZERO_SNR_LAST) ** 0.5)


@pytest.mark.timeout(60)
def test_a_v_prediction_checkpoint_draws_with_v_and_ztsnr(registry: ModelRegistry) -> None:
    model = registry.load(VPRED, DeviceOptions(device="cpu"))
    assert model.scheduler_config["prediction_type"] == "v_prediction"
    assert model.scheduler_config["rescale_betas_zero_snr"] is True
    schedule = NoiseSchedule.from_config(model.scheduler_config)
    assert schedule.prediction_type == "v_prediction" and schedule.sigma_max > 4000
    request = dataclasses.replace(REQUEST, sampler="Euler", num_inference_steps=3)
    image = generate(model, [request], limits=LIMITS)[0]
    assert png_pixels(image.png).std() > 0


# --- extra networks -------------------------------------------------------------------------

# kohya SDXL key → our module (model, path); sgm-named UNet keys, as SDXL trainers write them.
SDXL_LORA_LAYERS = {
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (
        "unet",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    ),
    "lora_unet_output_blocks_0_1_transformer_blocks_1_attn2_to_k": (
        "unet",
        "up_blocks.0.attentions.0.transformer_blocks.1.attn2.to_k",
    ),
    "lora_unet_down_blocks_1_attentions_1_proj_in": ("unet", "down_blocks.1.attentions.1.proj_in"),
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (
        "te1",
        "encoder.layers.0.self_attn.q_proj",
    ),
    "lora_te1_text_model_encoder_layers_2_mlp_fc2": ("te1", "encoder.layers.2.mlp.fc2"),
    **{
        f"lora_te2_text_model_encoder_layers_1_self_attn_{p}_proj": (
            "te2",
            f"encoder.layers.1.self_attn.{p}_proj",
        )
        for p in ("q", "k", "v", "out")
    },
    "lora_te2_text_model_encoder_layers_3_mlp_fc1": ("te2", "encoder.layers.3.mlp.fc1"),
}
# bigG attention with only q: A1111 patches a MultiheadAttention only with all of q, k, v, out.
LONE_Q = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"


def test_an_sdxl_lora_merges_by_a1111s_formula_in_both_encoders(
    single: LoadedModel, tmp_path: Path
) -> None:
    from engine.models.lora import Lora, LoraPatcher, network_layer_names

    pipe = single.pipe
    models = {
        "unet": copy.deepcopy(pipe.unet),
        "te1": copy.deepcopy(pipe.text_encoder),
        "te2": copy.deepcopy(pipe.text_encoder_2),
    }

    def module_at(model: str, path: str) -> Any:
        """transformers 5 flattened CLIPTextModel; CLIPTextModelWithProjection still wraps."""
        inner = getattr(models[model], "text_model", models[model])
        return inner.get_submodule(path)

    names = network_layer_names(models["unet"], models["te1"], models["te2"])
    assert "diffusion_model_label_emb_0_0" in names
    assert "0_transformer_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert "1_model_transformer_resblocks_3_mlp_c_fc" in names
    gen = torch.Generator().manual_seed(0)
    tensors: dict[str, torch.Tensor] = {}
    layers = {**SDXL_LORA_LAYERS, LONE_Q: ("te2", "encoder.layers.0.self_attn.q_proj")}
    for key, (model, path) in layers.items():
        weight = module_at(model, path).weight
        tensors[f"{key}.lora_down.weight"] = torch.randn((4, weight.shape[1]), generator=gen)
        tensors[f"{key}.lora_up.weight"] = torch.randn((weight.shape[0], 4), generator=gen)
        tensors[f"{key}.alpha"] = torch.tensor(2.0)
    save_file(tensors, str(tmp_path / "xl.safetensors"))
    before = {key: module_at(m, p).weight.clone() for key, (m, p) in layers.items()}
    patcher = LoraPatcher(models["unet"], models["te1"], models["te2"])
    patcher.use([(Lora.load(tmp_path / "xl.safetensors", "xl"), 0.5, 0.8)])
    for key, (model, path) in layers.items():
        weight = module_at(model, path).weight
        if key == LONE_Q:
            assert torch.equal(weight, before[key])
            continue
        up, down = tensors[f"{key}.lora_up.weight"], tensors[f"{key}.lora_down.weight"]
        multiplier = 0.8 if model == "unet" else 0.5
        expected = before[key] + (up @ down) * (2.0 / 4) * multiplier
        torch.testing.assert_close(weight, expected, atol=1e-5, rtol=1e-5)
    patcher.use([])
    for key, (model, path) in layers.items():
        assert torch.equal(module_at(model, path).weight, before[key])


def test_sdxl_embeddings_put_clip_l_and_clip_g_vectors_into_their_encoders(
    single: LoadedModel, tmp_path: Path
) -> None:
    from engine.models.embeddings import Embedding, EmbeddingDB

    gen = torch.Generator().manual_seed(3)
    clip_l, clip_g = torch.randn((2, 32), generator=gen), torch.randn((2, 48), generator=gen)
    save_file({"clip_l": clip_l, "clip_g": clip_g}, str(tmp_path / "xlemb.safetensors"))
    torch.save({"string_to_param": {"*": torch.randn(1, 32)}}, tmp_path / "sd1emb.pt")
    xl = Embedding.load(tmp_path / "xlemb.safetensors", "xlemb")
    sd1 = Embedding.load(tmp_path / "sd1emb.pt", "sd1emb")
    tokenizer = single.pipe.tokenizer
    db = EmbeddingDB([xl, sd1], tokenizer, 80, 32)
    assert "xlemb" in db and "sd1emb" in db.skipped
    assert "SDXL" in str(EmbeddingDB([xl], tokenizer, 32).skipped["xlemb"])

    # Reference: encoders whose "cat" and "dog" rows are the embedding's vectors.
    encoders = SdxlEncoders.of(single.pipe)
    te1, te2 = copy.deepcopy(encoders.text_encoder), copy.deepcopy(encoders.text_encoder_2)
    ids = tokenizer("cat dog", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        for model, vectors in ((te1, clip_l), (te2, clip_g)):
            inner = getattr(model, "text_model", model)
            inner.embeddings.token_embedding.weight[ids] = vectors
    reference = dataclasses.replace(encoders, text_encoder=te1, text_encoder_2=te2)
    cpu, sizes = torch.device("cpu"), size_numbers(64, 64)
    with torch.inference_mode():
        ours = encode_sdxl_conditioning(
            encoders, ["1girl, (xlemb:1.2), smile"], ["lowres"], size=(64, 64), steps=4,
            device=cpu, embeddings=db,
        )  # fmt: skip
        expected = encode_sdxl_prompts(
            reference, ["1girl, (cat dog:1.2), smile"], sizes=sizes, device=cpu
        )
        plain = encode_sdxl_prompts(
            encoders, ["1girl, (xlemb:1.2), smile"], sizes=sizes, device=cpu
        )
    torch.testing.assert_close(ours.at(0)[0], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours.at(0)[0], plain)
    assert ours.embeddings_used(0) == (("xlemb",), ())


def test_named_sizes_are_the_models_own(registry: ModelRegistry, tmp_path: Path) -> None:
    from bot.parse import parse_request
    from engine.checks import check_request

    portrait = parse_request("1girl --size portrait")
    assert (portrait.width, portrait.height, portrait.size_name) == (512, 768, "portrait")
    xl = registry.models[SINGLE]
    checked = check_request(portrait, LIMITS, xl.defaults, xl.presets)
    assert (checked.width, checked.height, checked.size_name) == (832, 1216, None)
    wide = check_request(parse_request("1girl --size landscape"), LIMITS, xl.defaults, xl.presets)
    assert (wide.width, wide.height) == (1216, 832)
    # A name the model has no size for keeps NAI's; SD-1.x models have none of their own.
    large = check_request(parse_request("x --size large portrait"), LIMITS, xl.defaults, xl.presets)
    assert (large.width, large.height, large.size_name) == (512, 1024, None)
    plain = check_request(portrait, LIMITS, None, NAI_PRESETS)
    assert (plain.width, plain.height, plain.size_name) == (512, 768, None)
    # A sidecar's [sizes] win.
    models = tmp_path / "models"
    models.mkdir()
    (models / "x.safetensors").write_bytes((registry.models[SINGLE].path).read_bytes())
    (models / "x.toml").write_text("[sizes]\nportrait = [64, 96]\n")
    entry = ModelRegistry(models).models["x"]
    mine = check_request(portrait, LIMITS, entry.defaults, entry.presets)
    assert (mine.width, mine.height) == (64, 96)
    (models / "x.toml").write_text("[sizes]\ntall = [64, 96]\n")
    assert "sizes.tall: not a size name" in ModelRegistry(models).problems[0]


def test_a_models_own_prompt_presets_replace_nais(sdxl_dir: Path, tmp_path: Path) -> None:
    from bot.parse import parse_request
    from engine.checks import check_request

    models = tmp_path / "models"
    models.mkdir()
    (models / "x.safetensors").write_bytes((sdxl_dir / f"{SINGLE}.safetensors").read_bytes())
    (models / "x.toml").write_text(
        '[prompt]\nquality_tags = "masterpiece, best quality, very aesthetic, "\n'
        'negative = "worst quality, low quality"\n'
    )
    entry = ModelRegistry(models).models["x"]
    parsed = parse_request("1girl, smile --neg hat")
    assert parsed.prompt == "masterpiece, best quality, 1girl, smile" and parsed.preset_quality
    assert parsed.preset_negative == "Low Quality + Bad Anatomy"
    checked = check_request(parsed, LIMITS, entry.defaults, entry.presets)
    assert checked.prompt == "masterpiece, best quality, very aesthetic, 1girl, smile"
    assert checked.negative_prompt == "worst quality, low quality, hat"
    assert not checked.preset_quality and checked.preset_negative is None
    # Typed tags, pasted infotexts and `--no-quality --uc none` are the user's words: kept.
    typed = parse_request("masterpiece, best quality, 1girl --no-quality --uc none")
    kept = check_request(typed, LIMITS, entry.defaults, entry.presets)
    assert (kept.prompt, kept.negative_prompt) == (typed.prompt, typed.negative_prompt)
    # Models without presets of their own keep NAI's.
    nai = check_request(parsed, LIMITS, None, NAI_PRESETS)
    assert (nai.prompt, nai.negative_prompt) == (parsed.prompt, parsed.negative_prompt)
    (models / "x.toml").write_text('[prompt]\nquality = "x"\n')
    assert "prompt.quality: unknown key" in ModelRegistry(models).problems[0]


# --- memory ---------------------------------------------------------------------------------


def test_medvram_tiles_the_sdxl_vae_and_draws_the_same(
    registry: ModelRegistry, single: LoadedModel
) -> None:
    from engine.device import resolve_vram

    cpu = torch.device("cpu")
    assert resolve_vram("auto", cpu, sdxl=True) == "normal"  # no GPU memory to spare here
    assert single.memory == ()
    model = registry.load(SINGLE, DeviceOptions(device="cpu", vram="medvram"))
    assert "vae_tiling" in model.memory and "attention_slicing" in model.memory
    sliced = generate(model, [REQUEST], limits=LIMITS)[0]
    plain = generate(single, [REQUEST], limits=LIMITS)[0]
    assert int(abs(png_pixels(sliced.png) - png_pixels(plain.png)).max()) <= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("vram", ["auto", "medvram", "lowvram"])
def test_sdxl_draws_in_fp16_on_cuda(registry: ModelRegistry, vram: str) -> None:
    model = registry.load(SINGLE, DeviceOptions(vram=vram))  # type: ignore[arg-type]
    assert model.device.type == "cuda" and model.dtype == torch.float16
    if vram != "auto":
        assert any("offload" in m for m in model.memory)
        assert "vae_tiling" in model.memory
    first, second = (generate(model, [REQUEST], limits=LIMITS)[0] for _ in range(2))
    assert first.png == second.png and png_pixels(first.png).std() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_an_sdxl_fp16_vae_that_overflows_decodes_again_in_fp32(single: LoadedModel) -> None:
    from engine.models.vae import decode

    vae = copy.deepcopy(single.pipe.vae).to("cuda", torch.float16)
    latents = torch.full((1, 4, 8, 8), 30000.0, device="cuda")  # ×1/0.13025 > fp16 max 65504
    with torch.inference_mode():
        images = decode(vae, latents)
    assert vae.dtype == torch.float32 and torch.isfinite(images).all()


def test_a_refiner_is_listed_as_unknown_and_refused_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.errors import GenerationFailed

    models = tmp_path / "models"
    models.mkdir()
    save_file(
        {"conditioner.embedders.0.model.ln_final.weight": torch.ones(4)},
        str(models / "refiner.safetensors"),
    )
    registry = ModelRegistry(models)
    assert "refiner" in registry.models["refiner"].unknown
    with pytest.raises(GenerationFailed, match=r"it is an SDXL refiner"):
        registry.load("refiner", DeviceOptions(device="cpu"))
    settings = tmp_path / "settings.toml"
    settings.write_text(f'[engine]\nmodels_dir = "{models}"\n', encoding="utf-8")
    assert main(["--settings", str(settings), "models"]) == 0
    assert "[single_file, unknown (an SDXL refiner" in capsys.readouterr().out


def test_folder_architecture_from_its_configs(tmp_path: Path) -> None:
    import json

    from engine.models.architecture import from_folder

    def folder(name: str, pipeline: str, width: int, scheduler: dict[str, object]) -> Path:
        root = tmp_path / name
        for part in ("text_encoder", "scheduler"):
            (root / part).mkdir(parents=True)
        index = {"_class_name": pipeline, "text_encoder": ["transformers", "CLIPTextModel"]}
        (root / "model_index.json").write_text(json.dumps(index))
        (root / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": width}))
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
        return root

    sd2v = folder("sd2", "StableDiffusionPipeline", 1024, {"prediction_type": "v_prediction"})
    assert from_folder(sd2v) == Architecture("SD-2.x", "v_prediction")
    sd1 = folder("sd1", "StableDiffusionPipeline", 768, {})
    assert from_folder(sd1) == Architecture("SD-1.x")
    noob = folder(
        "noob",
        "StableDiffusionXLPipeline",
        768,
        {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True},
    )
    assert from_folder(noob) == Architecture("SDXL", "v_prediction", zero_snr=True)
    assert from_folder(SDXL_CONFIG) == Architecture("SDXL")


def test_family_defaults() -> None:
    from engine.models.architecture import architecture_defaults
    from engine.request import RequestDefaults

    base = RequestDefaults()
    assert architecture_defaults(base, Architecture("SD-1.x")) == base
    xl = architecture_defaults(base, Architecture("SDXL", "v_prediction", True))
    assert (xl.width, xl.height, xl.guidance_scale, xl.ensd, xl.clip_skip) == (832, 1216, 6, 0, 2)
    sd2 = architecture_defaults(base, Architecture("SD-2.x"))
    sd2v = architecture_defaults(base, Architecture("SD-2.x", "v_prediction"))
    assert (sd2.width, sd2v.width, sd2v.height) == (512, 768, 768)
