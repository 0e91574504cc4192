"""Every user-facing string, in English and Chinese. `text(key, locale, **values)`.

Each frontend keeps its own keys in its own section below; shared keys come first. Long on
purpose: it is the string table (the code is `text`, `caption` and the error renderers).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from bot.parse import SAMPLER_LIST
from engine.errors import (
    EngineClosed,
    EngineError,
    GenerationFailed,
    InvalidRequest,
    JobCancelled,
    Phrase,
    QueueFull,
)
from engine.infotext import format_number, parse_infotext
from engine.pool.roster import WorkerInfo
from engine.request import GenerationRequest
from engine.sampling.schedules import SCHEDULE_LABELS

log = logging.getLogger(__name__)

Locale = Literal["en", "zh"]
LOCALES: tuple[Locale, ...] = ("en", "zh")

MESSAGES: dict[str, dict[Locale, str]] = {
    # --- shared -----------------------------------------------------------------------------
    "queued": {"en": "Queued: #{position} in line{eta}.", "zh": "已排队：第 {position} 位{eta}。"},
    "eta": {"en": ", about {seconds}s", "zh": "，约 {seconds} 秒"},
    "drawing": {
        "en": "Drawing… step {step}/{total}{eta}",
        "zh": "绘制中… 第 {step}/{total} 步{eta}",
    },
    "upscaling": {"en": "Upscaling…{eta}", "zh": "放大中…{eta}"},
    "done": {"en": "Done.", "zh": "完成。"},
    "cancelled": {"en": "Cancelled.", "zh": "已取消。"},
    "error": {"en": "Error: {message}", "zh": "出错了：{message}"},
    "failed": {
        "en": "Sorry, something went wrong while drawing. The admins have been told.",
        "zh": "抱歉，绘制时出错了，已通知管理员。",
    },
    "not_admin": {
        "en": "Only the bot's admins can do that.",
        "zh": "只有管理员可以这样做。",
    },
    "size_warning": {
        "en": "Heads-up: {size} is {times} times this model's own {native}. On a CPU that is "
        "slow{eta}, and the model draws best near {native}.",
        "zh": "提示：{size} 是此模型原生尺寸 {native} 的 {times} 倍。在 CPU 上会很慢{eta}，"
        "而且模型在接近 {native} 时画得最好。",
    },
    "caption": {
        "en": "Seed {seed} · {model} · {steps} steps",
        "zh": "种子 {seed} · {model} · {steps} 步",
    },
    "caption_variation": {
        "en": " · variation seed {subseed} at {strength}",
        "zh": " · 变体种子 {subseed}，强度 {strength}",
    },
    "caption_img2img": {
        "en": " · from a picture, strength {strength}",
        "zh": " · 以图生图，重绘幅度 {strength}",
    },
    "caption_inpaint": {
        "en": " · inpainted from your picture, strength {strength}",
        "zh": " · 按蒙版重绘你的图片，重绘幅度 {strength}",
    },
    "caption_extras": {
        "en": "Upscaled ×{scale} with {upscaler}",
        "zh": "用 {upscaler} 放大 ×{scale}",
    },
    "caption_hires": {
        "en": " · hires ×{scale}, strength {strength}",
        "zh": " · 高清修复 ×{scale}，重绘幅度 {strength}",
    },
    "picture_first_frame": {
        "en": "Your picture is animated: only its first frame is used.",
        "zh": "你的图片是动图：只用第一帧。",
    },
    # the admins' VAE and hypernetwork of a model (bot/addons.py)
    "addons_current": {
        "en": "{model} draws with VAE: {vae} · hypernetwork: {hypernet}.",
        "zh": "{model} 使用的 VAE：{vae} · 超网络：{hypernet}。",
    },
    "addons_set": {
        "en": "New jobs on {model} now draw with VAE: {vae} · hypernetwork: {hypernet}.",
        "zh": "{model} 的新任务现在使用 VAE：{vae} · 超网络：{hypernet}。",
    },
    "addons_installed": {
        "en": "VAEs: {vaes}\nHypernetworks: {hypernets}",
        "zh": "可用 VAE：{vaes}\n可用超网络：{hypernets}",
    },
    "addons_own_vae": {"en": "None (the model's own)", "zh": "None（模型自带的）"},
    "addons_no_hypernet": {"en": "none", "zh": "无"},
    "addons_loading": {
        "en": "Loading {model} and drawing a test image with {name}…",
        "zh": "正在加载 {model} 并用 {name} 试画一张…",
    },
    # --- discord ----------------------------------------------------------------------------
    "discord_cmd_draw": {
        "en": "Draw a picture (inline flags and a pasted A1111 infotext work too)",
        "zh": "画一张图（支持行内参数和粘贴的 A1111 图片信息）",
    },
    "discord_cmd_upscale": {
        "en": "Upscale a picture without drawing it again (Lanczos, Nearest or an upscaler file)",
        "zh": "放大一张图片，不重新绘制（Lanczos、Nearest 或放大器文件）",
    },
    "discord_cmd_queue": {"en": "Your jobs and the queue", "zh": "你的任务和队列"},
    "discord_cmd_cancel": {
        "en": "Cancel a job of yours (default: the newest)",
        "zh": "取消你的任务（默认最新的一个）",
    },
    "discord_cmd_settings": {
        "en": "Your defaults for /draw (no options: show them)",
        "zh": "你的 /draw 默认设置（不填选项则显示）",
    },
    "discord_cmd_history": {
        "en": "Your latest drawings, or one of them again with its buttons",
        "zh": "你最近的图，或带按钮重新发送其中一张",
    },
    "discord_cmd_help": {
        "en": "How to write prompts, flags and commands",
        "zh": "提示词、参数和命令的用法",
    },
    "discord_cmd_model": {"en": "Admin: models", "zh": "管理员：模型"},
    "discord_cmd_model_list": {"en": "Admin: list the models", "zh": "管理员：列出模型"},
    "discord_cmd_model_swap": {
        "en": "Admin: load a model and make it the default",
        "zh": "管理员：加载模型并设为默认",
    },
    "discord_cmd_model_vae": {
        "en": "Admin: the VAE the default model draws with (no name: show it)",
        "zh": "管理员：默认模型使用的 VAE（不填名称则显示）",
    },
    "discord_cmd_model_hypernetwork": {
        "en": "Admin: the hypernetwork the default model draws with (no name: show it)",
        "zh": "管理员：默认模型使用的超网络（不填名称则显示）",
    },
    "discord_cmd_queue_admin": {"en": "Admin: the queue", "zh": "管理员：队列"},
    "discord_cmd_pause": {
        "en": "Admin: start no new drawing (jobs still queue)",
        "zh": "管理员：暂停开始新的绘制（仍可排队）",
    },
    "discord_cmd_resume": {"en": "Admin: start drawing again", "zh": "管理员：恢复绘制"},
    "discord_cmd_clear": {
        "en": "Admin: cancel every waiting job",
        "zh": "管理员：取消所有排队任务",
    },
    "discord_cmd_quota": {"en": "Admin: daily quotas", "zh": "管理员：每日配额"},
    "discord_cmd_mod": {"en": "Admin: the moderation log", "zh": "管理员：审核日志"},
    "discord_cmd_mod_who": {
        "en": "Admin: who drew a result (its message id or link)",
        "zh": "管理员：查看某个结果是谁画的（消息 ID 或链接）",
    },
    "discord_cmd_mod_delete": {
        "en": "Admin: delete a result's message and its stored images",
        "zh": "管理员：删除某个结果的消息和保存的图片",
    },
    "discord_opt_message": {"en": "Message id or link", "zh": "消息 ID 或链接"},
    "discord_cmd_styles": {
        "en": "The styles you can use with --style NAME",
        "zh": "可以用 --style 名称 使用的风格",
    },
    "discord_cmd_quota_set": {
        "en": "Admin: set a user's image quota per 24 hours (0 = no limit)",
        "zh": "管理员：设置用户每 24 小时的图片配额（0 = 不限）",
    },
    "discord_cmd_quota_reset": {
        "en": "Admin: give a user the default quota again",
        "zh": "管理员：恢复用户的默认配额",
    },
    "discord_cmd_quota_show": {
        "en": "Admin: a user's quota and use",
        "zh": "管理员：查看用户的配额和用量",
    },
    "discord_opt_prompt": {
        "en": "What to draw; flags such as --seed 42 --steps 20 work here too",
        "zh": "要画的内容；也可以写 --seed 42 --steps 20 等参数",
    },
    "discord_opt_negative": {
        "en": "What not to draw (negative prompt)",
        "zh": "不想画的内容（反向提示词）",
    },
    "discord_opt_size": {
        "en": "WIDTHxHEIGHT, or portrait, landscape, square…",
        "zh": "宽x高，或 portrait、landscape、square…",
    },
    "discord_opt_seed": {"en": "Seed (-1 = random)", "zh": "种子（-1 = 随机）"},
    "discord_opt_steps": {"en": "Denoising steps", "zh": "采样步数"},
    "discord_opt_scale": {"en": "CFG scale", "zh": "CFG 提示词相关性"},
    "discord_opt_sampler": {
        "en": "Sampler; an older name such as DPM++ 2M Karras works as --sampler in the prompt",
        "zh": "采样器；旧名称（如 DPM++ 2M Karras）可在提示词里用 --sampler 写",
    },
    "discord_opt_schedule": {
        "en": "Schedule type; Automatic = the sampler's default (DPM++ 2M: Karras); "
        "none = as named",
        "zh": "调度类型；Automatic = 采样器的默认（DPM++ 2M 为 Karras）；不选 = 按采样器名称",
    },
    "discord_opt_model": {"en": "Model", "zh": "模型"},
    "discord_opt_count": {"en": "Number of images", "zh": "图片数量"},
    "discord_opt_image": {
        "en": "A picture to draw from (PNG, JPEG or WebP); --strength 0.3-0.9 in the prompt",
        "zh": "以这张图作画（PNG、JPEG 或 WebP）；提示词里可加 --strength 0.3-0.9",
    },
    "discord_opt_mask": {
        "en": "A mask for image: white where to redraw, black to keep (inpainting)",
        "zh": "image 的蒙版：白色处重绘，黑色处保留（局部重绘）",
    },
    "discord_opt_upscale_image": {
        "en": "The picture to upscale (PNG, JPEG or WebP)",
        "zh": "要放大的图片（PNG、JPEG 或 WebP）",
    },
    "discord_opt_upscale_scale": {
        "en": "How many times bigger: 1 to 4 (default 2)",
        "zh": "放大倍数：1 到 4（默认 2）",
    },
    "discord_opt_upscaler": {
        "en": "Lanczos, Nearest or an upscaler file (default: the bot's)",
        "zh": "Lanczos、Nearest 或放大器文件（默认：机器人的设置）",
    },
    "discord_opt_vae": {
        "en": "A VAE in models/VAE; None = the model's own; Automatic = a .vae file beside it",
        "zh": "models/VAE 中的 VAE；None = 模型自带的；Automatic = 模型旁的 .vae 文件",
    },
    "discord_opt_hypernetwork": {
        "en": "A hypernetwork in models/hypernetworks, or none",
        "zh": "models/hypernetworks 中的超网络，或 none（不用）",
    },
    "discord_opt_strength": {
        "en": "The hypernetwork's strength (default 1)",
        "zh": "超网络的强度（默认 1）",
    },
    "discord_opt_job": {"en": "Job number", "zh": "任务号"},
    "discord_opt_user": {"en": "User", "zh": "用户"},
    "discord_opt_images": {
        "en": "Images per 24 hours (0 = no limit)",
        "zh": "每 24 小时的图片数（0 = 不限）",
    },
    "discord_opt_uc": {"en": "Undesired-content preset", "zh": "NAI 反向预设"},
    "discord_opt_quality": {"en": "Prepend NAI's quality tags", "zh": "加上 NAI 的质量标签"},
    "discord_opt_syntax": {"en": "How [x] weighs: a1111 or nai", "zh": "[x] 的权重：a1111 或 nai"},
    "discord_opt_language": {"en": "Language of the bot's replies", "zh": "机器人回复的语言"},
    "discord_opt_reset": {"en": "Forget all your settings", "zh": "清除你的所有设置"},
    "discord_job_line": {"en": "Job {job} · {text}", "zh": "任务 {job} · {text}"},
    "discord_restarting": {
        "en": "The bot is restarting; this drawing stays queued and is posted here afterwards.",
        "zh": "机器人正在重启；这张图仍在队列中，重启后会发在这里。",
    },
    "discord_after_restart": {"en": "(from before the restart)", "zh": "（重启前的任务）"},
    "discord_moved": {
        "en": "Job {job} took a while: it goes on in a new message below.",
        "zh": "任务 {job} 等得较久，将在下方的新消息中继续。",
    },
    "discord_button_reroll": {"en": "Reroll", "zh": "换种子"},
    "discord_button_vary": {"en": "Vary (subtle)", "zh": "微调变体"},
    "discord_button_vary_strong": {"en": "Vary (strong)", "zh": "大幅变体"},
    "discord_button_upscale": {"en": "Upscale ×2", "zh": "放大 ×2"},
    "discord_button_edit": {"en": "Edit", "zh": "编辑"},
    "discord_button_delete": {"en": "Delete", "zh": "删除"},
    "discord_button_cancel": {"en": "Cancel", "zh": "取消"},
    "discord_edit_title": {"en": "Edit and draw again", "zh": "编辑后重画"},
    "discord_edit_prompt": {"en": "Prompt (flags work too)", "zh": "提示词（可加参数）"},
    "discord_edit_negative": {"en": "Negative prompt", "zh": "反向提示词"},
    "discord_not_yours": {
        "en": "Only whoever asked for this drawing, or an admin, can delete it.",
        "zh": "只有画这张图的人或管理员可以删除它。",
    },
    "discord_gone": {
        "en": "Job {job} is no longer in the history, and its picture has no infotext to read.",
        "zh": "任务 {job} 已不在历史记录中，图片里也没有可读的图片信息。",
    },
    "discord_already_finished": {
        "en": "Job {job} has already finished.",
        "zh": "任务 {job} 已经结束了。",
    },
    "discord_nothing_to_cancel": {
        "en": "You have no job waiting or drawing.",
        "zh": "你没有在排队或绘制的任务。",
    },
    "discord_cancelled_job": {"en": "Cancelled job {job}.", "zh": "已取消任务 {job}。"},
    "discord_queue_waiting": {
        "en": "Job {job}: #{position} in line{eta}",
        "zh": "任务 {job}：排第 {position} 位{eta}",
    },
    "discord_queue_drawing": {
        "en": "Job {job}: drawing, step {step}/{total}{eta}",
        "zh": "任务 {job}：绘制中，第 {step}/{total} 步{eta}",
    },
    "discord_queue_upscaling": {
        "en": "Job {job}: upscaling{eta}",
        "zh": "任务 {job}：放大中{eta}",
    },
    "discord_queue_total": {
        "en": "{queued} job(s) waiting in all{paused}.",
        "zh": "共 {queued} 个任务在排队{paused}。",
    },
    "discord_paused_note": {"en": " (paused)", "zh": "（已暂停）"},
    "discord_quota_today": {
        "en": "Last 24 hours: {used} of {limit} images.",
        "zh": "最近 24 小时：已用 {used}/{limit} 张。",
    },
    "discord_history_empty": {"en": "You have not drawn anything yet.", "zh": "你还没有画过图。"},
    "discord_history_line": {
        "en": "Job {job} · {when} · seed {seed} · {prompt}",
        "zh": "任务 {job} · {when} · 种子 {seed} · {prompt}",
    },
    "discord_settings_show": {
        "en": "What /draw uses for you (✎ = saved by you):\n{values}",
        "zh": "/draw 对你使用的设置（✎ = 你保存的）：\n{values}",
    },
    "discord_settings_empty": {"en": "(none)", "zh": "（无）"},
    "discord_settings_reset": {
        "en": "Your saved settings are cleared.",
        "zh": "已清除你保存的设置。",
    },
    "discord_help": {
        "en": (
            "**/draw** `prompt` draws it, e.g. `1girl, silver hair, (smile:1.2) --seed 42`.\n"
            "Flags in the prompt: {flags}.\n"
            "A line `Negative prompt: …` or a pasted A1111 infotext works too; /draw's options "
            "set the same things. Its `image` draws from a picture (`--strength 0.3` keeps it "
            "close, `0.9` changes a lot); a `mask` (white: redraw, black: keep) redraws only "
            "part of it.\n"
            "Buttons: 🎲 same request, new seed · 🔀 Vary (subtle) / Vary (strong): the first "
            "image, a new variation seed at strength {subtle} / {strong} · 🔍 Upscale: the "
            "first image at twice the size · ✏️ edit the prompt, same seed · 🗑 delete · ❌ "
            "cancel while waiting.\n"
            "**/upscale** `image` [`scale` 1–4] [`upscaler`] makes a picture bigger without "
            "redrawing it.\n"
            "Commands: /queue, /cancel [job], /settings, /history [job], /styles, /help."
        ),
        "zh": (
            "**/draw** `提示词` 画图，例如 `1girl, silver hair, (smile:1.2) --seed 42`。\n"
            "提示词中的参数：{flags}。\n"
            "也可以写一行 `Negative prompt: …`，或粘贴完整的 A1111 图片信息；/draw 的选项"
            "设置的是同样的内容。它的 `image` 选项以一张图作画（`--strength 0.3` 改动小，"
            "`0.9` 改动大）；再加上 `mask`（白色处重绘，黑色处保留）就只重绘其中一部分。\n"
            "按钮：🎲 同样的请求换种子 · 🔀 微调变体 / 大幅变体：第一张图加新的变体种子，强度 "
            "{subtle} / {strong} · 🔍 放大：第一张图放大到两倍 · ✏️ 编辑提示词后重画（同种子） · "
            "🗑 删除 · ❌ 排队时取消。\n"
            "**/upscale** `image` [`scale` 1–4] [`upscaler`] 放大一张图片，不重新绘制。\n"
            "命令：/queue、/cancel [任务号]、/settings、/history [任务号]、/styles、/help。"
        ),
    },
    "discord_help_flag": {"en": "{flag} ({help})", "zh": "{flag}（{help}）"},
    "discord_models": {
        "en": "Models (★ default for new jobs, ● loaded):\n{models}",
        "zh": "模型（★ 新任务默认，● 已加载）：\n{models}",
    },
    "discord_model_swapped": {
        "en": "New jobs now draw with {model}.",
        "zh": "新任务现在使用 {model}。",
    },
    "discord_paused": {
        "en": "Paused: jobs still queue, but no new drawing starts.",
        "zh": "已暂停：仍可排队，但不会开始新的绘制。",
    },
    "discord_resumed": {"en": "Drawing again.", "zh": "已恢复绘制。"},
    "discord_cleared": {
        "en": "Cancelled {count} waiting job(s).",
        "zh": "已取消 {count} 个排队任务。",
    },
    "discord_no_limit": {"en": "no limit", "zh": "不限"},
    "discord_quota_set": {
        "en": "{user} may draw {limit} image(s) per 24 hours.",
        "zh": "{user} 每 24 小时可画 {limit} 张。",
    },
    "discord_quota_show": {
        "en": "{user}: {used} image(s) in the last 24 hours; quota: {limit}.",
        "zh": "{user}：最近 24 小时 {used} 张；配额：{limit}。",
    },
    "discord_quota_reached": {
        "en": "You have drawn {used} of your {limit} images for the last 24 hours; "
        "cancelled and failed ones do not count. Try again later.",
        "zh": "最近 24 小时你已画 {used}/{limit} 张（取消和失败的不算），请稍后再试。",
    },
    "discord_cooldown": {
        "en": "Please wait {seconds} s before your next drawing.",
        "zh": "请等 {seconds} 秒再画下一张。",
    },
    "discord_banned": {
        "en": "This bot does not draw prompts with {word!r}.",
        "zh": "本机器人不画含有 {word!r} 的提示词。",
    },
    "discord_nsfw_refused": {
        "en": "This channel is not marked NSFW, so the bot does not draw {word!r} here.",
        "zh": "此频道未标记为 NSFW，机器人不在这里画 {word!r}。",
    },
    "discord_not_here": {
        "en": "The bot does not draw in this channel.",
        "zh": "机器人不在此频道画图。",
    },
    "discord_no_dms": {
        "en": "The bot does not draw in direct messages.",
        "zh": "机器人不在私信中画图。",
    },
    # --- telegram ---------------------------------------------------------------------------
    "tg_waiting": {"en": "Queued…", "zh": "排队中…"},
    "tg_button_cancel": {"en": "✖ Cancel", "zh": "✖ 取消"},
    "tg_button_reroll": {"en": "🎲 Reroll", "zh": "🎲 换种子"},
    "tg_button_vary_subtle": {"en": "🔀 Vary (subtle)", "zh": "🔀 微调变体"},
    "tg_button_vary_strong": {"en": "🔀 Vary (strong)", "zh": "🔀 大幅变体"},
    "tg_button_png": {"en": "📄 PNG", "zh": "📄 原图"},
    "tg_button_upscale": {"en": "🔍 Upscale ×2", "zh": "🔍 放大 ×2"},
    "tg_button_album_upscale": {"en": "{n} 🔍 ×2", "zh": "{n} 🔍 放大"},
    "tg_button_album_subtle": {"en": "{n} 🔀 subtle", "zh": "{n} 🔀 微调"},
    "tg_button_album_strong": {"en": "{n} 🔀 strong", "zh": "{n} 🔀 大幅"},
    "tg_button_album_png": {"en": "{n} 📄 PNG", "zh": "{n} 📄 原图"},
    "tg_album_buttons": {
        "en": "Job {job}, pictures {first}–{last}, numbered in the album's order:",
        "zh": "任务 {job}，第 {first}–{last} 张图，按相册中的顺序编号：",
    },
    "tg_caption_job": {"en": "Job {job} · {caption}", "zh": "任务 {job} · {caption}"},
    "tg_caption_uc": {"en": "UC: {preset}", "zh": "反向预设：{preset}"},
    "tg_caption_negative": {"en": "Negative prompt: {negative}", "zh": "反向提示词：{negative}"},
    "tg_start": {
        "en": "Hi! I draw anime pictures with Stable Diffusion.\n\n{help}",
        "zh": "你好！我用 Stable Diffusion 画动漫图。\n\n{help}",
    },
    "tg_help": {
        "en": (
            "Send me a prompt and I draw it (in groups: /draw <prompt>, or reply to me), e.g.\n"
            "1girl, silver hair, (smile:1.2) --seed 42 --steps 20\n\n"
            "Flags: --seed N, --steps N, --scale F, --size WxH|portrait|landscape|square, "
            "--ar W:H, --sampler NAME, --schedule TYPE, --neg TEXT, --uc lqba|lq|none, "
            "--no-quality, --n COUNT, --model NAME, --clip-skip N, --hires [SCALE], "
            "--strength F, --hn NAME[:S], --vae NAME, <lora:NAME:W> in the prompt.\n"
            "Samplers — {samplers}; old names such as 'DPM++ 2M Karras' work too.\n"
            "--schedule TYPE: {schedules}; Automatic is the sampler's own default.\n"
            'A second line "Negative prompt: …" and a pasted A1111 infotext work too.\n'
            "Send a picture with the prompt as its caption (or reply to a picture with a "
            "prompt) to draw from it; --strength 0.3 keeps it close, 0.9 changes a lot.\n"
            "/upscale [SCALE] [UPSCALER] as a picture's caption, or as a reply to a picture, "
            "makes it bigger without drawing it again, e.g. /upscale 2 Lanczos.\n\n"
            "Under each picture: 🎲 same prompt, new seed; 🔀 Vary (subtle or strong): that "
            "image, changed a little or a lot; 🔍 Upscale: that image at twice the size; "
            "📄 the original PNG with its infotext.\n"
            "Commands: /queue, /cancel [job|all], /settings, /history, /upscale, /help."
        ),
        "zh": (
            "发给我提示词就画（群里用 /draw <提示词>，或回复我的消息），例如：\n"
            "1girl, silver hair, (smile:1.2) --seed 42 --steps 20\n\n"
            "参数：--seed N、--steps N、--scale F、--size 宽x高|portrait|landscape|square、"
            "--ar 宽:高、--sampler 名称、--schedule 类型、--neg 文本、--uc lqba|lq|none、"
            "--no-quality、--n 数量、--model 名称、--clip-skip N、--hires [倍数]、--strength F、"
            "--hn 名称[:强度]、--vae 名称，提示词里写 <lora:名称:权重>。\n"
            "采样器——{samplers}；旧名称（如 'DPM++ 2M Karras'）也可以。\n"
            "--schedule 类型：{schedules}；Automatic 即采样器自己的默认。\n"
            '第二行写 "Negative prompt: …"，或粘贴 A1111 的图片信息，也可以。\n'
            "发送图片并把提示词写在图片说明里（或用提示词回复一张图），就以这张图作画；"
            "--strength 0.3 改动小，0.9 改动大。\n"
            "把 /upscale [倍数] [放大器] 写在图片说明里，或用它回复一张图，就放大这张图而不重新"
            "绘制，例如 /upscale 2 Lanczos。\n\n"
            "图片下的按钮：🎲 同提示词换种子；🔀 微调/大幅变体：这张图小改或大改；"
            "🔍 放大：这张图放大到两倍；📄 带图片信息的 PNG 原图。\n"
            "命令：/queue、/cancel [任务号|all]、/settings、/history、/upscale、/help。"
        ),
    },
    "tg_unknown_command": {
        "en": "There is no {command} command. Mine: /draw, /queue, /cancel, /settings, /history, "
        "/upscale, /help; any other text is a prompt.",
        "zh": "没有 {command} 这个命令。可用命令：/draw、/queue、/cancel、/settings、/history、"
        "/upscale、/help；其他文字都会当作提示词来画。",
    },
    "tg_draw_usage": {
        "en": "Write what to draw after /draw, e.g. /draw 1girl, silver hair --seed 42",
        "zh": "请在 /draw 后写要画的内容，例如：/draw 1girl, silver hair --seed 42",
    },
    "tg_picture_hint": {
        "en": "To draw from this picture, send it again with the prompt as its caption "
        "(flags work too, e.g. --strength 0.5), or reply to it with the prompt.",
        "zh": "要以这张图作画，请重新发送它并把提示词写在图片说明里（也可以加参数，例如 "
        "--strength 0.5），或者用提示词回复这张图。",
    },
    "tg_upscale_usage": {
        "en": "Send /upscale [SCALE] [UPSCALER] as the caption of a picture, or reply with it to "
        "a message with a picture, e.g. /upscale 2 Lanczos (scale 1 to 4, default 2). "
        "Upscalers here: {upscalers}.",
        "zh": "把 /upscale [倍数] [放大器] 写在图片说明里，或用它回复一条带图片的消息，例如 "
        "/upscale 2 Lanczos（倍数 1 到 4，默认 2）。这里的放大器：{upscalers}。",
    },
    "tg_banned": {
        "en": "This bot does not draw prompts with {word!r}.",
        "zh": "本机器人不画含有 {word!r} 的提示词。",
    },
    "tg_nsfw_refused": {
        "en": "This bot does not draw NSFW prompts ({word!r}).",
        "zh": "本机器人不画 NSFW 内容（{word!r}）。",
    },
    # the Redis pool's workers in /queue (Discord, Telegram) and the web chat
    "pool_header": {
        "en": "{count} worker(s) drawing for this bot:",
        "zh": "共 {count} 个绘图进程：",
    },
    "pool_worker": {
        "en": "- {name} ({device}): {model}, {state}, {speed} images/s, {done} job(s) done",
        "zh": "- {name}（{device}）：{model}，{state}，每秒 {speed} 张，已完成 {done} 个任务",
    },
    "pool_state_starting": {"en": "starting", "zh": "启动中"},
    "pool_state_idle": {"en": "idle", "zh": "空闲"},
    "pool_state_busy": {"en": "drawing", "zh": "绘制中"},
    "pool_state_draining": {"en": "stopping", "zh": "停止中"},
    "tg_queue_empty": {"en": "The queue is empty.", "zh": "队列是空的。"},
    "tg_queue_header": {
        "en": "{count} job(s) waiting or drawing.",
        "zh": "共 {count} 个任务在排队或绘制。",
    },
    "tg_queue_drawing": {
        "en": "job {job}: drawing, step {step}/{total}{eta}",
        "zh": "任务 {job}：绘制中，第 {step}/{total} 步{eta}",
    },
    "tg_queue_upscaling": {
        "en": "job {job}: upscaling{eta}",
        "zh": "任务 {job}：放大中{eta}",
    },
    "tg_queue_waiting": {
        "en": "job {job}: #{position} in line{eta}",
        "zh": "任务 {job}：排第 {position} 位{eta}",
    },
    "tg_nothing_to_cancel": {
        "en": "You have no job waiting or drawing.",
        "zh": "你没有在排队或绘制的任务。",
    },
    "tg_cancelled_jobs": {"en": "Cancelled job(s) {jobs}.", "zh": "已取消任务 {jobs}。"},
    "tg_already_finished": {
        "en": "Job {job} has already finished.",
        "zh": "任务 {job} 已经结束了。",
    },
    "tg_history_empty": {"en": "You have not drawn anything yet.", "zh": "你还没有画过图。"},
    "tg_history_line": {
        "en": "job {job} · seed {seed} · {width}x{height} · {prompt}",
        "zh": "任务 {job} · 种子 {seed} · {width}x{height} · {prompt}",
    },
    "tg_gone": {
        "en": "Job {job} is no longer in the history.",
        "zh": "任务 {job} 已不在历史记录中。",
    },
    "tg_settings": {
        "en": (
            "Your settings ({mark} = saved by you, the rest are the bot's):\n{values}\n\n"
            'Change: /settings steps=20 size=512x768 sampler="DPM++ 2M" schedule=karras '
            'scale=7 neg="lowres" uc=lq quality=off syntax=nai doc=on lang=zh\n'
            "steps=default drops a value of yours (the bot's applies again); /settings reset "
            "drops them all."
        ),
        "zh": (
            "你的设置（{mark} = 你保存的，其余为机器人的）：\n{values}\n\n"
            '修改：/settings steps=20 size=512x768 sampler="DPM++ 2M" schedule=karras '
            'scale=7 neg="lowres" uc=lq quality=off syntax=nai doc=on lang=zh\n'
            "steps=default 删除你保存的一项（恢复机器人的）；/settings reset 全部删除。"
        ),
    },
    "tg_settings_empty": {"en": "(none)", "zh": "（无）"},
    "tg_settings_saved": {"en": "Saved: {changes}.", "zh": "已保存：{changes}。"},
    "tg_settings_reset": {
        "en": "Your settings are back to the bot's defaults.",
        "zh": "你的设置已恢复为默认。",
    },
    "tg_model_status": {
        "en": "Model: {model} (for new jobs: {default}). {queued} queued{paused}.\n"
        "Switch: /model NAME",
        "zh": "当前模型：{model}（新任务用：{default}）。排队 {queued} 个{paused}。\n"
        "切换：/model 名称",
    },
    "tg_model_list": {"en": "Models: {models}", "zh": "可用模型：{models}"},
    "tg_paused_note": {"en": ", paused", "zh": "，已暂停"},
    "tg_model_loading": {"en": "Loading {name}…", "zh": "正在加载 {name}…"},
    "tg_model_swapped": {"en": "New jobs now draw with {name}.", "zh": "新任务现在使用 {name}。"},
    "tg_paused": {
        "en": "Paused: jobs are queued but no new drawing starts. /resume to go on.",
        "zh": "已暂停：仍可排队，但不会开始新的绘制。用 /resume 继续。",
    },
    "tg_resumed": {"en": "Drawing again.", "zh": "已恢复绘制。"},
    "tg_addons_usage": {
        "en": "Change: /vae NAME (None = the model's own, Automatic = a .vae file beside it) · "
        "/hypernetwork NAME or NAME:STRENGTH (none = no hypernetwork)",
        "zh": "修改：/vae 名称（None = 模型自带的，Automatic = 模型旁的 .vae 文件） · "
        "/hypernetwork 名称 或 名称:强度（none = 不用超网络）",
    },
    "tg_cmd_draw": {
        "en": "Draw a picture: /draw <prompt> --flags",
        "zh": "画图：/draw <提示词> --参数",
    },
    "tg_cmd_help": {"en": "How to write prompts and flags", "zh": "提示词和参数的写法"},
    "tg_cmd_upscale": {
        "en": "Upscale a picture: /upscale [SCALE] [UPSCALER] as its caption or a reply to it",
        "zh": "放大图片：把 /upscale [倍数] [放大器] 写在图片说明里或回复图片",
    },
    "tg_cmd_queue": {"en": "Your jobs and the queue", "zh": "你的任务和队列"},
    "tg_cmd_cancel": {
        "en": "Cancel your newest job (/cancel JOB, /cancel all)",
        "zh": "取消你最新的任务（/cancel 任务号，/cancel all）",
    },
    "tg_cmd_settings": {
        "en": "Your defaults (steps, size, sampler…)",
        "zh": "你的默认设置（步数、尺寸、采样器…）",
    },
    "tg_cmd_history": {"en": "Your latest drawings", "zh": "你最近的作品"},
    "tg_cmd_quota": {"en": "Your images today and the limit", "zh": "你今天的图片数和上限"},
    "tg_cmd_who": {
        "en": "Admin: who drew a result (reply to it)",
        "zh": "管理员：查看结果是谁画的（回复它）",
    },
    "tg_cmd_delete": {
        "en": "Admin: delete a result and its stored images (reply to it)",
        "zh": "管理员：删除结果和保存的图片（回复它）",
    },
    "tg_cmd_styles": {"en": "The styles for --style NAME", "zh": "可用于 --style 名称 的风格"},
    "tg_quota_usage": {
        "en": "Write /quota (yours), or as an admin /quota USER_ID IMAGES or /quota USER_ID reset.",
        "zh": "请写 /quota（你的配额），管理员可写 /quota 用户ID 图片数 或 /quota 用户ID reset。",
    },
    "tg_cmd_start": {"en": "About this bot", "zh": "关于本机器人"},
    "tg_cmd_model": {"en": "Admin: show or switch the model", "zh": "管理员：查看或切换模型"},
    "tg_cmd_pause": {"en": "Admin: start no new drawing", "zh": "管理员：暂停新的绘制"},
    "tg_cmd_resume": {"en": "Admin: draw again", "zh": "管理员：恢复绘制"},
    "tg_cmd_vae": {
        "en": "Admin: show or set the model's VAE",
        "zh": "管理员：查看或设置模型的 VAE",
    },
    "tg_cmd_hypernetwork": {
        "en": "Admin: show or set the model's hypernetwork",
        "zh": "管理员：查看或设置模型的超网络",
    },
    # --- web --------------------------------------------------------------------------------
    "web_title": {"en": "aidraw · local chat", "zh": "aidraw · 本地聊天"},
    "web_welcome": {
        "en": (
            "Type a prompt and press Enter, e.g.\n"
            "1girl, silver hair, (smile:1.2) --seed 42 --steps 20 --size {size}\n"
            "Flags: --seed N, --steps N, --scale F, --size WxH|portrait|landscape|square, "
            "--ar W:H, --sampler NAME, --schedule TYPE, --neg TEXT, --uc lqba|lq|none, "
            "--no-quality, --n COUNT, --model NAME, --clip-skip N, --hires [SCALE], "
            "--strength F, --hn NAME[:S], --vae NAME, <lora:NAME:W> in the prompt.\n"
            "Samplers — {samplers}; old names such as 'DPM++ 2M Karras' work too.\n"
            "--schedule TYPE: {schedules}; Automatic is the sampler's own default.\n"
            "/draw in front works too, and so does a "
            "pasted A1111 infotext. Shift+Enter starts a new line. + Picture (or a picture "
            "dropped or pasted here) draws from that picture: --strength 0.3 keeps it close, "
            "0.9 changes a lot; ✎ Mask paints where to redraw (the rest is kept). With a "
            "picture and no prompt, ⤢ Upscale makes it bigger without drawing; /upscale 3 "
            "Nearest picks the scale and the upscaler."
        ),
        "zh": (
            "输入提示词后按回车，例如：\n"
            "1girl, silver hair, (smile:1.2) --seed 42 --steps 20 --size {size}\n"
            "参数：--seed N、--steps N、--scale F、--size 宽x高|portrait|landscape|square、"
            "--ar 宽:高、--sampler 名称、--schedule 类型、--neg 文本、--uc lqba|lq|none、"
            "--no-quality、--n 数量、--model 名称、--clip-skip N、--hires [倍数]、--strength F、"
            "--hn 名称[:强度]、--vae 名称，提示词里写 <lora:名称:权重>。\n"
            "采样器——{samplers}；旧名称（如 'DPM++ 2M Karras'）也可以。\n"
            "--schedule 类型：{schedules}；Automatic 即采样器自己的默认。\n"
            "前面加 /draw 也可以，粘贴 A1111 图片信息也行。"
            "Shift+回车换行。点 + 图片（或把图片拖到、粘贴到这里）以图作画："
            "--strength 0.3 改动小，0.9 改动大；✎ 蒙版 可涂出要重绘的地方（其余保留）。"
            "有图片而没有提示词时，⤢ 放大 只放大图片而不重新绘制；/upscale 3 Nearest "
            "可指定倍数和放大器。"
        ),
    },
    "web_placeholder": {
        "en": "1girl, silver hair --seed 42 --steps 20",
        "zh": "1girl, silver hair --seed 42 --steps 20",
    },
    "web_send": {"en": "Draw", "zh": "画"},
    "web_job": {"en": "Job {job}", "zh": "任务 {job}"},
    "web_n_steps": {"en": "{steps} steps", "zh": "{steps} 步"},
    "web_reroll_of": {"en": "new seed for job {job}", "zh": "任务 {job} 换种子"},
    "web_variations_of": {
        "en": "variations of job {job}, image {image}",
        "zh": "任务 {job} 第 {image} 张的变体",
    },
    "web_waiting": {"en": "Waiting…", "zh": "等待中…"},
    "web_reroll": {"en": "↻ Reroll", "zh": "↻ 换种子"},
    "web_variations": {"en": "⇄ Vary (subtle)", "zh": "⇄ 微调变体"},
    "web_variations_strong": {"en": "⇄ Vary (strong)", "zh": "⇄ 大幅变体"},
    "web_upscale": {"en": "⤢ Upscale ×2", "zh": "⤢ 放大 ×2"},
    "web_upscale_of": {
        "en": "job {job}, image {image} upscaled",
        "zh": "任务 {job} 第 {image} 张放大",
    },
    "web_picture": {"en": "+ Picture", "zh": "+ 图片"},
    "web_picture_title": {
        "en": "Draw from a picture (PNG, JPEG or WebP); you can also drop one here",
        "zh": "以一张图作画（PNG、JPEG 或 WebP）；也可以把图片拖到这里",
    },
    "web_picture_remove": {"en": "Remove the picture", "zh": "移除图片"},
    "web_mask": {"en": "✎ Mask", "zh": "✎ 蒙版"},
    "web_mask_title": {
        "en": "Paint white where the picture is redrawn; the rest is kept (inpainting)",
        "zh": "用白色涂出要重绘的地方，其余部分保留（局部重绘）",
    },
    "web_brush": {"en": "Brush", "zh": "笔刷"},
    "web_mask_clear": {"en": "Clear", "zh": "清除"},
    "web_mask_done": {"en": "Done", "zh": "完成"},
    "web_masked": {"en": "with a mask", "zh": "带蒙版"},
    "web_upscale_picture": {"en": "⤢ Upscale", "zh": "⤢ 放大"},
    "web_upscale_picture_title": {
        "en": "Make this picture bigger without drawing it again (×2; type /upscale 3 Nearest "
        "for another scale or upscaler)",
        "zh": "放大这张图片而不重新绘制（×2；输入 /upscale 3 Nearest 可指定倍数和放大器）",
    },
    "web_upscale_needs_picture": {
        "en": "/upscale needs a picture: add one with + Picture, or drop or paste it here.",
        "zh": "/upscale 需要一张图片：点 + 图片添加，或把图片拖到、粘贴到这里。",
    },
    "web_upscaled_with": {"en": "×{scale} · {upscaler}", "zh": "×{scale} · {upscaler}"},
    "web_picture_too_big": {
        "en": "{name} is {size}: at most {max} is allowed.",
        "zh": "{name} 有 {size}：最多允许 {max}。",
    },
    "web_picture_type": {
        "en": "{name} is not a PNG, JPEG or WebP image.",
        "zh": "{name} 不是 PNG、JPEG 或 WebP 图片。",
    },
    "web_cancel": {"en": "✖ Cancel", "zh": "✖ 取消"},
    "web_download": {"en": "⬇ PNG", "zh": "⬇ 原图"},
    "web_infotext": {"en": "Infotext", "zh": "图片信息"},
    "web_note": {"en": "Note: {note}", "zh": "提示：{note}"},
    "web_already_finished": {
        "en": "Job {job} has already finished.",
        "zh": "任务 {job} 已经结束了。",
    },
    "web_unknown_command": {
        "en": "Unknown command {command}: type a prompt, or /draw and a prompt (or /upscale "
        "with a picture).",
        "zh": "未知命令 {command}：请直接输入提示词，或 /draw 加提示词（或带图片的 /upscale）。",
    },
    "web_disconnected": {
        "en": "Connection to aidraw lost; reconnecting…",
        "zh": "与 aidraw 的连接已断开，正在重连…",
    },
    "web_settings": {"en": "⚙ Settings", "zh": "⚙ 设置"},
    "web_settings_title": {
        "en": "Your defaults (empty = the bot's default)",
        "zh": "你的默认值（留空 = 机器人默认）",
    },
    "web_width": {"en": "Width", "zh": "宽"},
    "web_height": {"en": "Height", "zh": "高"},
    "web_steps": {"en": "Steps", "zh": "步数"},
    "web_scale": {"en": "CFG scale", "zh": "CFG 系数"},
    "web_sampler": {"en": "Sampler", "zh": "采样器"},
    "web_schedule": {"en": "Schedule type", "zh": "调度类型"},
    "web_samplers_common": {"en": "Common", "zh": "常用"},
    "web_samplers_more": {"en": "More", "zh": "更多"},
    "web_samplers_special": {"en": "Special", "zh": "特殊"},
    "web_negative": {"en": "Negative prompt", "zh": "负面提示词"},
    "web_uc": {"en": "Undesired-content preset", "zh": "负面预设"},
    "web_quality": {"en": "Quality tags", "zh": "质量标签"},
    "web_syntax": {"en": "Bracket syntax", "zh": "括号语法"},
    "web_locale": {"en": "Language", "zh": "语言"},
    "web_default": {"en": "default ({value})", "zh": "默认（{value}）"},
    "web_on": {"en": "on", "zh": "开"},
    "web_off": {"en": "off", "zh": "关"},
    "web_save": {"en": "Save", "zh": "保存"},
    "web_reset": {"en": "Reset all", "zh": "全部重置"},
    "web_close": {"en": "Close", "zh": "关闭"},
    "web_saved": {"en": "Settings saved.", "zh": "设置已保存。"},
    "web_settings_reset": {
        "en": "Your settings are back to the bot's defaults.",
        "zh": "你的设置已恢复为默认。",
    },
    "web_admin": {"en": "Model (admin)", "zh": "模型（管理员）"},
    "web_model": {"en": "Model: {model}", "zh": "模型：{model}"},
    "web_swap": {"en": "Use for new jobs", "zh": "用于新任务"},
    "web_swapping": {"en": "Loading {name}…", "zh": "正在加载 {name}…"},
    "web_swapped": {"en": "New jobs now draw with {name}.", "zh": "新任务现在使用 {name}。"},
    "web_vae": {"en": "VAE", "zh": "VAE"},
    "web_hypernet": {"en": "Hypernetwork", "zh": "超网络"},
    "web_strength": {"en": "Strength", "zh": "强度"},
    "web_own_vae": {"en": "None (the model's own)", "zh": "None（模型自带的）"},
    "web_automatic_vae": {
        "en": "Automatic (a .vae file beside the model)",
        "zh": "Automatic（模型旁的 .vae 文件）",
    },
    "web_no_hypernet": {"en": "none", "zh": "无"},
    "web_apply_addons": {"en": "Apply", "zh": "应用"},
    "web_addons_loading": {
        "en": "Loading {model} and drawing a test image…",
        "zh": "正在加载 {model} 并试画一张…",
    },
    "web_token_required": {
        "en": "This aidraw web chat needs its access token: open the address printed at "
        "start-up, with ?token= and the value of AIDRAW_WEB_TOKEN added.",
        "zh": "此 aidraw 网页聊天需要访问令牌：打开启动时显示的地址，并加上 ?token= 和 "
        "AIDRAW_WEB_TOKEN 的值。",
    },  # --- moderation: places, quotas, the image check, styles, the log (bot/policy.py) -------
    "policy_disabled": {
        "en": "The bot does not draw here.",
        "zh": "机器人不在这里画图。",
    },
    "policy_roles": {
        "en": "Only members with one of this server's drawing roles may draw here.",
        "zh": "只有拥有本服务器绘图身份组的成员才能在这里画图。",
    },
    "policy_banned": {
        "en": "This bot does not draw prompts with {word!r}.",
        "zh": "本机器人不画含有 {word!r} 的提示词。",
    },
    "policy_nsfw_refused": {
        "en": "This bot does not draw NSFW prompts ({word!r}).",
        "zh": "本机器人不画 NSFW 内容（{word!r}）。",
    },
    "policy_nsfw_age": {
        "en": "This channel is not marked NSFW, so the bot does not draw {word!r} here.",
        "zh": "此频道未标记为 NSFW，机器人不在这里画 {word!r}。",
    },
    "policy_max_steps": {
        "en": "At most {limit} steps here; you asked for {steps}.",
        "zh": "这里最多 {limit} 步；你要了 {steps} 步。",
    },
    "policy_max_side": {
        "en": "At most {limit} pixels a side here; you asked for {size}.",
        "zh": "这里每边最多 {limit} 像素；你要了 {size}。",
    },
    "policy_max_count": {
        "en": "At most {limit} image(s) per request here; you asked for {count}.",
        "zh": "这里每次最多 {limit} 张；你要了 {count} 张。",
    },
    "policy_no_img2img": {
        "en": "Drawing from a picture is not allowed here.",
        "zh": "这里不允许以图生图。",
    },
    "policy_no_styles": {
        "en": "Styles (--style) are not allowed here.",
        "zh": "这里不允许使用风格（--style）。",
    },
    "policy_cooldown": {
        "en": "Please wait {seconds} s before your next drawing.",
        "zh": "请等 {seconds} 秒再画下一张。",
    },
    "policy_quota": {
        "en": "You have drawn {used} of your {limit} images for the last 24 hours; "
        "cancelled and failed ones do not count. Try again later.",
        "zh": "最近 24 小时你已画 {used}/{limit} 张（取消和失败的不算），请稍后再试。",
    },
    "policy_quota_line": {
        "en": "Quota: {used} image(s) in the last 24 hours of {limit}.",
        "zh": "配额：最近 24 小时已画 {used} 张，上限 {limit}。",
    },
    "policy_cooldown_line": {
        "en": " Cooldown: {cooldown:g} s between drawings ({wait} s left).",
        "zh": " 冷却：两次绘图间隔 {cooldown:g} 秒（还剩 {wait} 秒）。",
    },
    "policy_no_limit": {"en": "no limit", "zh": "无限制"},
    "policy_minimal": {"en": "Job {job}", "zh": "任务 {job}"},
    "policy_quota_admin": {
        "en": "Quota: none (you are an admin).",
        "zh": "配额：无（你是管理员）。",
    },
    "policy_withheld": {
        "en": "Job {job}: the image check flagged the result ({label}, {score}), and NSFW "
        "images are not shown here.",
        "zh": "任务 {job}：图片检查标记了结果（{label}，{score}），这里不显示 NSFW 图片。",
    },
    "policy_flagged_note": {
        "en": "Image check: {label} ({score}).",
        "zh": "图片检查：{label}（{score}）。",
    },
    "styles_list": {
        "en": "Styles (use with --style NAME):\n{styles}",
        "zh": "风格（用 --style 名称 使用）：\n{styles}",
    },
    "styles_none": {
        "en": "No styles yet. An admin imports A1111's styles.csv ([moderation] styles_csv).",
        "zh": "还没有风格。管理员可导入 A1111 的 styles.csv（[moderation] styles_csv）。",
    },
    "styles_imported": {
        "en": "Imported {count} style(s).",
        "zh": "已导入 {count} 个风格。",
    },
    "styles_unreadable": {
        "en": "Cannot read that styles.csv: {problem}.",
        "zh": "无法读取这个 styles.csv：{problem}。",
    },
    "styles_too_big": {
        "en": "A styles.csv may be at most {limit} KiB.",
        "zh": "styles.csv 最大 {limit} KiB。",
    },
    "discord_opt_styles_file": {
        "en": "An A1111 styles.csv to import (name,prompt,negative_prompt)",
        "zh": "要导入的 A1111 styles.csv（name,prompt,negative_prompt）",
    },
    "discord_opt_server": {
        "en": "Admin: import them as the server's styles",
        "zh": "管理员：导入为本服务器的风格",
    },
    "modlog_found": {
        "en": "Job {job} by {user} in {place} at {when}: {prompt!r} (image check: {label}).",
        "zh": "任务 {job}：{user} 于 {when} 在 {place} 画的：{prompt!r}（图片检查：{label}）。",
    },
    "modlog_not_found": {
        "en": "The moderation log has no job for that message.",
        "zh": "审核日志里没有这条消息的任务。",
    },
    "modlog_deleted": {
        "en": "Job {job}: the reply and its stored images are deleted.",
        "zh": "任务 {job}：回复和保存的图片已删除。",
    },
}

# --- errors -----------------------------------------------------------------------------------
# The engine's and the chat parser's errors in Chinese, by the error's (or Phrase's) `key`.
# Their English is the message at the raise site (`str(e)`, which the CLI and logs show too), so
# it is not repeated here; each template's placeholders are that site's params.
# tests/test_messages.py checks both (and that no English is left in these).
LIST_SEPARATOR: dict[Locale, str] = {"en": ", ", "zh": "、"}
ERRORS_ZH: dict[str, str] = {
    # words and phrases inside messages
    "word_prompt": "提示词",
    "word_negative_prompt": "反向提示词",
    "word_width": "宽度",
    "word_height": "高度",
    "word_model": "模型",
    "word_vae": "VAE",
    "word_hypernetwork": "超网络",
    "word_lora": "LoRA",
    "word_embedding": "嵌入",
    "word_upscaler": "放大器",
    "word_denoising": "重绘幅度",
    "word_resize_mode": "缩放模式",
    "word_mask_blur": "蒙版模糊",
    "word_masked_content": "蒙版内容",
    "word_mask_padding": "仅蒙版区域的边距",
    "word_hires_scale": "高清修复倍数",
    "did_you_mean": "你是不是想写 {suggestion}？",
    "too_wide": "宽",
    "too_tall": "高",
    "stage_denoising": "去噪",
    "stage_vae": "VAE 解码",
    "disk_full": "：磁盘已满",
    "no_model": "无",
    "file_empty": "文件是空的",
    "folder_lacks": "文件夹里没有 {parts}",
    "not_safetensors": "不是可读的 .safetensors 文件（{detail}）",
    "model_and_hash": "{model!r}（哈希 {hash}）",
    "model_hash_only": "哈希为 {hash} 的",
    "no_closing_quote": "引号没有闭合",
    "no_escaped_character": "反斜杠后面缺少字符",
    "help_seed": "种子（-1 = 随机）",
    "help_steps": "采样步数",
    "help_scale": "CFG 提示词相关性",
    "help_size": "宽x高，或 {sizes}…",
    "help_ar": "宽高比 宽:高，例如 2:3",
    "help_sampler": "{groups}；或旧名称，例如 {example}",
    "sampler_groups": "常用：{common} · 更多：{more} · 特殊：{special}",
    "help_schedule": "调度类型：{choices} 之一",
    "help_negative": "反向提示词",
    "help_uc": "反向预设：{choices} 之一",
    "help_no_quality": "不加质量标签",
    "help_syntax": "{choices} 之一",
    "help_clip_skip": "CLIP 跳过层数，例如 2",
    "help_ensd": "噪声种子偏移（ENSD），例如 31337",
    "help_model": "模型名称",
    "help_strength": "重绘幅度 0–1：以图生图（附图时）或 --hires 的",
    "help_hires": "高清修复：先画，再放大 ×倍数（默认 2），再重绘",
    "help_hires_steps": "高清修复这一遍的步数",
    "help_upscaler": "放大器：Latent、Lanczos 或文件名",
    "help_hn": "超网络 名称 或 名称:强度，例如 {example}",
    "help_vae": "VAE 文件，例如 {example}（None = 模型自带的）",
    "needs_hypernet": "{flag} 需要 名称 或 名称:强度，例如 anime:0.8，而不是 {value!r}。",
    "help_count": "图片数量",
    "help_style": "保存的风格，例如 --style 风格名",
    "unknown_style": "没有风格 {name!r}；可用风格：{known}。",
    # chat text (bot/parse.py)
    "needs_whole_number": "{flag} 需要一个整数，而不是 {value!r}。",
    "needs_number": "{flag} 需要一个数字，而不是 {value!r}。",
    "needs_finite_number": "{flag} 需要一个有限的数字，而不是 {value!r}。",
    "needs_size": "{flag} 需要 宽x高（例如 512x768）或 NAI 尺寸：{sizes}；而不是 {value!r}。",
    "needs_ratio": "{flag} 需要 宽:高（例如 2:3），而不是 {value!r}。",
    "ratio_too_far": "{flag} {width}:{height} 太{shape}了：比例请在 1:{max} 到 {max}:1 之间。",
    "flag_problem": "{flag}：{problem}",
    "needs_syntax": "{flag} 需要 {choices} 之一，而不是 {value!r}。",
    "empty_prompt": "提示词是空的：请在参数前写要画的内容。",
    "prompt_too_long": "{name}有 {length} 个字符：最多允许 {max} 个。",
    "size_and_ratio": "--size 和 --ar 只能用一个。",
    "flags_unreadable": "无法读取参数：{problem}（请检查引号）。",
    "unknown_flag": "未知参数 {flag}。{hint}已知参数：{flags}。",
    "unexpected_word": "{after} 后面多了 {word!r}：请把提示词写在参数前面，含空格的值要加引号。",
    "takes_no_value": "{flag} 不接受值（{help}）。",
    "needs_value": "{flag} 需要一个值（{help}）。",
    "infotext_emphasis": "图片信息中的强调模式 {emphasis!r} 未知：请用 {modes} 之一。",
    # request checks (engine/checks.py, engine/generate.py, engine/prompting/, engine/infotext.py)
    "side_range": "{side} {value} 不可用：请用 8 的倍数，范围 {min} 到 {max}。",
    "size_too_large": "{width}x{height} 太大了：最多 {max_pixels:,} 像素（例如 {example}）。",
    "steps_range": "步数 {steps} 不可用：请用 1 到 {max}。",
    "unipc_steps": (
        "{sampler} 每轮至少要 {min} 步，这个请求只给它 {steps} 步："
        "请增加步数（以图生图也可提高重绘幅度）。"
    ),
    "cfg_range": "CFG 系数 {scale} 不可用：请用 1 到 {max}。",
    "count_range": "数量 {count} 不可用：请用 1 到 {max}。",
    "seed_range": "种子 {seed} 不可用：请用 0 到 {max}，或 -1 表示随机。",
    "clip_skip_range": "CLIP 跳过层数 {clip_skip} 不可用：请用 1 到 {max}。",
    "clip_skip_model": "CLIP 跳过层数 {clip_skip} 不适用于 {model}：请用 1 到 {max}。",
    "hypernet_sd1_only": (
        "超网络只适用于 SD-1.x 模型；{model} 是 {family}：请去掉 <hypernet:{name}:…>。"
    ),
    "unknown_network_tag": (
        "{tag} 不是这里的附加网络：请用 <lora:名称:权重> 或 <hypernet:名称:强度>。"
    ),
    "network_weight": "{tag}：权重 {weight!r} 不允许：请用 -{max} 到 {max} 之间的数。",
    "try_failed": "无法用它作画：{error_type}: {reason}。什么都没有改变。",
    "admin_only_addons": "只有管理员可以更改模型的 VAE 或超网络。",
    "addons_missing": (
        "这些附加文件不在这里：{names}。请管理员把它们放进 models/，或从提示词中删去。"
    ),
    "picture_range": "{label} {value} 不可用：请用 {min} 到 {max}。",
    "hires_steps_range": "高清修复步数 {steps} 不可用：请用 0（与步数相同）到 {max}。",
    "mask_without_image": "蒙版需要它所属的图片。",
    "upscale_needs_picture": "放大需要一张图片（且不带高清修复）。",
    "upscale_scale": "无法放大 ×{scale}：请用 1 到 4，例如 2。",
    "upscale_latent": (
        "{upscaler} 是作画时放大潜空间的：放大图片请用 Lanczos、Nearest 或放大器文件。"
    ),
    "upscale_too_large": (
        "把 {width}x{height} 放大 ×{scale} 会得到 {out_width}x{out_height}："
        "最多允许 {max_pixels:,} 像素、每边 {max_side}。"
    ),
    "strength_without_image": (
        "重绘幅度用于图片（以图生图）或高清修复：请随提示词发送图片，或加上 --hires。"
    ),
    "hires_too_large": (
        "高清修复会画出 {width}x{height}：最多允许 {max_pixels:,} 像素、每边 {max_side}；"
        "请用更小的尺寸或倍数。"
    ),
    "image_too_big": "图片有 {size}：最多允许 {max}。",
    "image_too_many_pixels": "图片是 {width}x{height}：最多允许 {max_pixels:,} 像素。",
    "image_far_too_large": "图片远远太大：最多允许 {max_pixels:,} 像素。",
    "image_unreadable": "这不是本机器人能读取的 PNG、JPEG 或 WebP 图片。",
    "image_not_stored": "本机器人没有（或不再有）这张图片；请重新发送。",
    "pool_worker_left": "无法加载 {model}：该绘图进程已退出，请再试一次。",
    "pool_gave_up": "这次绘制每次都让绘图进程停止，所以不再重试。",
    "pool_png_too_big": "图片太大，无法发送。",
    "vae_empty": "VAE 名称为空：请写 models/VAE 中的文件名，或写 None 使用模型自带的 VAE。",
    "ensd_range": "ENSD {ensd} 不可用：请用 0 到 {max}。",
    "rng_source": "随机数来源 {rng!r} 不可用：请用 GPU、CPU 或 NV。",
    "subseed_range": "变异种子 {seed} 不可用：请用 0 到 {max}，或 -1 表示随机。",
    "subseed_strength_range": "变异强度 {strength} 不可用：请用 0 到 1。",
    "seed_resize_range": (
        "种子缩放尺寸 {width}x{height} 不可用：边长请在 {min} 到 {max} 之间，或用 0x0 关闭。"
    ),
    "weight_not_number": "{token!r} 中的权重不是数字：权重的写法如 (词:1.2)。",
    "weight_too_large": "{token!r} 中的权重太大了。",
    "weight_out_of_range": (
        "{name}中 {text!r} 的权重是 {weight:.3g}：权重必须在 -{max:g} 到 {max:g} 之间"
        "（嵌套的括号会相乘）。"
    ),
    "unknown_emphasis": "未知的强调模式 {emphasis!r}：请用 {modes} 之一。",
    "unknown_syntax": "未知的提示词语法 {syntax!r}：请用 {choices} 之一。",
    "unknown_uc_preset": "未知的反向预设 {name!r}：请用 {choices} 之一。",
    "unknown_size": "未知的尺寸 {name!r}：请用 宽x高 或以下之一：{sizes}。",
    "unknown_sampler": (
        "未知的采样器 {name!r}。{hint}可选：{samplers}（旧名称如 {example!r} 也可以）。"
    ),
    "unknown_schedule_type": "未知的调度类型 {name!r}。可选：{choices}。",
    "infotext_not_number": "图片信息中的 {name} {value!r} 不是数字。",
    "infotext_masked_content": "图片信息中的蒙版内容 {value!r} 不是 {choices} 之一。",
    "hires_with_picture": "高清修复只用于从文字作画：以图作画时请不要加它。",
    "picture_missing": "要作画的图片已不在机器人的存储中；请重新发送。",
    # models (engine/contracts.py, engine/models.py, engine/model_slot.py)
    "unknown_model": "未知的{kind}：{name!r}。{hint}{installed}",
    "installed": "已安装：{names}。",
    "model_not_here": (
        "这里没有{named}模型。这里的模型有：{models}；加上 --model 名称 即可用其中一个来画。"
    ),
    "no_models": "还没有安装模型；请让管理员添加一个。",
    "model_name_is_path": "无效的模型名 {name!r}：请用模型列表中的名称，而不是路径。",
    "cannot_load_model": "无法加载模型 {name!r}（{file}）：{problem}",
    "bad_addon_file": "无法使用{kind} {file}：{problem}。",
    "unsafe_pickle": (
        "拒绝加载 {file}：它是一个不只包含权重的 pickle 文件，可能会运行代码。"
        "请用你信任的工具把它转换成 .safetensors。"
    ),
    "model_not_loaded": "模型 {model} 无法加载；管理员可以在日志中查看详情。",
    "swap_failed": "无法加载 {model}：{error_type}: {reason}。当前模型仍为：{serving}。",
    # the queue and the drawing (engine/errors.py, engine/engine.py, engine/generate.py,
    # engine/results.py)
    "queue_full": "队列已满（{position}/{limit}），请稍后再试。",
    "queue_full_user": "你已有 {position} 个未完成的绘制（上限 {limit}），请等其中一个完成。",
    "shutting_down": "机器人正在关闭；请一分钟后再试。",
    "shutting_down_now": "机器人正在关闭。",
    "restarting": "机器人正在重启；你的绘制仍在队列中，重启后会发给你。",
    "no_such_job": "没有任务 #{job}。",
    "not_your_job": "只有提交任务 #{job} 的人或管理员可以取消它。",
    "admin_only_model": "只有管理员可以更换模型。",
    "cancelled": "已取消。",
    "cancelled_by_admin": "已被管理员取消。",
    "stopped": "绘制中断了；请再试一次。",
    "drawing_crashed": "绘制时出错了；管理员可以在日志中查看详情。",
    "went_wrong": "绘制出了问题；请再试一次。",
    "cannot_save": "无法保存图片{full}；已在日志中告知管理员。",
    "nan_image": (
        "图片在{stage}时变成了空白（NaN）：请降低提示词权重或 CFG 系数，或换一个采样器或种子。"
    ),
    "out_of_memory": "显存不足：请用更小的尺寸，或一次少画几张。",
    "image_lost": "图片在重启中丢失了；请重新画一次。",
    # the Telegram bot's own (bot/telegram/)
    "tg_cancel_usage": "请写 {forms}：取消你最新的任务、某个编号的任务或你的全部任务。",
    "tg_settings_unreadable": "无法读取设置：{problem}（请检查引号）。",
    "tg_unknown_setting": "未知设置 {name!r}。{hint}可用的设置：{known}。",
    "tg_setting_usage": "请写 {name}=值，例如 {name}={example}。",
    "tg_setting_choices": "{name} 需要 {choices} 之一，而不是 {value!r}。",
}


def worker_lines(workers: Sequence[WorkerInfo], locale: Locale = "en") -> list[str]:
    """/queue's lines about a Redis pool's workers (none for a bot that draws itself)."""
    if not workers:
        return []
    lines = [text("pool_header", locale, count=len(workers))]
    for w in workers:
        state = text(f"pool_state_{w.state}", locale) if w.state in POOL_STATES else w.state
        lines.append(
            text(
                "pool_worker",
                locale,
                name=w.name,
                device=w.device or w.device_type,
                model=w.model or "-",
                state=state,
                speed=f"{w.images_per_s:.2f}",
                done=w.jobs_done,
            )
        )
    return lines


POOL_STATES = ("starting", "idle", "busy", "draining")


def locale_of(code: str | None) -> Locale:
    """A chat client's language code ("zh-CN", "zh-hans", "en-US", None) → our locale."""
    return "zh" if code and code.lower().startswith("zh") else "en"


def text(key: str, locale: Locale = "en", **values: object) -> str:
    """The message `key` in `locale`, formatted with `values`."""
    return MESSAGES[key][locale].format(**values)


def sampler_help(locale: Locale) -> dict[str, str]:
    """The help texts' {samplers} and {schedules}: A1111 v1.9's sampler names, grouped with
    the everyday ones first, and its schedule types."""
    return {
        "samplers": error_message(SAMPLER_LIST, locale),
        "schedules": LIST_SEPARATOR[locale].join(SCHEDULE_LABELS),
    }


# A1111's denoising strengths where a request leaves it to the engine (GenerationRequest).
IMG2IMG_STRENGTH = 0.75
HIRES_STRENGTH = 0.7


def caption(
    request: GenerationRequest, seeds: Sequence[int], infotexts: Sequence[str], locale: Locale
) -> str:
    """A result's line, on every frontend: seeds, model, steps, for variations their variation
    seeds and strength (read from the images' infotexts, as A1111 wrote them), and whether it
    was drawn from a picture (inpainted, with a mask) or with hires fix, at which strength. An
    upscale of a picture (A1111's Extras) says only its scale and upscaler."""
    if request.extras_upscale:
        scale = format_number(request.hr_scale)
        return text("caption_extras", locale, scale=scale, upscaler=request.hr_upscaler)
    line = text(
        "caption",
        locale,
        seed=", ".join(map(str, seeds)),
        model=request.model,
        steps=request.num_inference_steps,
    )
    subseeds = [
        params["Variation seed"]
        for params in (parse_infotext(infotext).params for infotext in infotexts)
        if "Variation seed" in params
    ]
    if subseeds and request.subseed_strength:
        strength = format_number(request.subseed_strength)
        line += text("caption_variation", locale, subseed=", ".join(subseeds), strength=strength)
    denoising = request.denoising_strength
    if request.init_image is not None:
        strength = format_number(IMG2IMG_STRENGTH if denoising is None else denoising)
        key = "caption_img2img" if request.mask_image is None else "caption_inpaint"
        line += text(key, locale, strength=strength)
    if request.enable_hr:
        strength = format_number(HIRES_STRENGTH if denoising is None else denoising)
        line += text(
            "caption_hires", locale, scale=format_number(request.hr_scale), strength=strength
        )
    return line


def error_text(error: EngineError, locale: Locale = "en") -> str:
    """What to tell a user about an engine error (their fault, the queue, or ours)."""
    if isinstance(error, QueueFull):
        return error_message(error, locale)
    if isinstance(error, InvalidRequest | JobCancelled | EngineClosed | GenerationFailed):
        # The engine's message is user-safe and names the problem (the restart, out of memory).
        return text("error", locale, message=error_message(error, locale))
    return text("failed", locale)


def error_message(part: EngineError | Phrase, locale: Locale = "en") -> str:
    """An error's message, or a phrase inside one, in `locale`: English is `str(part)`; another
    locale formats the template of the part's key with its params (a param that is a phrase, an
    error or a list is said in `locale` too), or falls back to the English without one."""
    template = ERRORS_ZH.get(part.key) if locale == "zh" and part.key else None
    if template is None:
        if locale != "en" and part.key:
            log.warning("no %s text for error key %r; said in English", locale, part.key)
        return str(part)
    values = {name: _param(value, locale) for name, value in part.params.items()}
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError, TypeError) as e:
        log.warning("%s text for %r does not fit its params %s: %r", locale, part.key, values, e)
        return str(part)


def _param(value: object, locale: Locale) -> object:
    if isinstance(value, EngineError | Phrase):
        return error_message(value, locale)
    if isinstance(value, list | tuple):
        return LIST_SEPARATOR[locale].join(str(_param(item, locale)) for item in value)
    return value  # numbers keep their format specs ({max_pixels:,})
