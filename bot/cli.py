"""`aidraw draw | models | run | worker | build-demo | doctor | backup | restore`: the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot.parse import ParsedRequest, read_request
from bot.settings import LogSettings, Settings, SettingsError, load
from engine.errors import EngineError
from engine.request import GenerationRequest

log = logging.getLogger(__name__)


class UsageError(Exception):
    """A command-line problem worth one line and exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        # Library chatter ("torchvision not installed") is noise on a terminal. The libraries
        # read these when first imported, which happens below.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    if args.func is cmd_doctor:  # it reports a settings problem instead of stopping at it
        configure_logging(False, verbose=args.verbose)
        return cmd_doctor(args)
    try:
        settings = load(args.settings)
        serving = args.func in (cmd_run, cmd_worker)
        configure_logging(serving, verbose=args.verbose, log=settings.log)
        result: int = args.func(args, settings)
        return result
    except (SettingsError, EngineError, UsageError) as e:
        print(f"aidraw: error: {e}", file=sys.stderr)
        return 2


def configure_logging(serving: bool, *, verbose: bool, log: LogSettings | None = None) -> None:
    """Warnings only for one-off commands; a serving bot (`aidraw run`) also logs aidraw's own
    lines at [log] level (INFO: one per job start and end, model loads, frontends up), as text
    or JSON lines ([log] format); libraries stay quiet."""
    log = log or LogSettings()
    handler = log_handler(log if serving else LogSettings())
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    if serving:
        for name in ("bot", "engine"):
            logging.getLogger(name).setLevel(logging.DEBUG if verbose else log.level)


def log_handler(log: LogSettings, stream: Any = None) -> logging.Handler:
    """A handler writing to `stream` (stderr) in [log] format: text lines or JSON lines (time,
    level, logger, message, and the fields a line carries, e.g. a job's)."""
    handler = logging.StreamHandler(stream)
    if log.format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aidraw", description=__doc__)
    parser.add_argument("--settings", type=Path, help="settings file (default: ./settings.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    draw = sub.add_parser("draw", help="draw one prompt, exactly as the chat bots read it")
    draw.add_argument("text", help='chat text, e.g. "1girl, smile --seed 42 --steps 20"')
    draw.add_argument("--out", type=Path, help="PNG path (default: <output_dir>/<time>-<seed>.png)")
    draw.add_argument("--json", action="store_true", help="print JSON lines instead of paths")
    draw.add_argument(
        "--init-image", type=Path, help="img2img: the picture to start from (PNG, JPEG or WebP)"
    )
    draw.add_argument(
        "--mask", type=Path, help="inpainting: white where to redraw (with --init-image)"
    )
    draw.add_argument(
        "--explain",
        action="store_true",
        help="draw nothing: print the parsed request, its weighted segments and token chunks",
    )
    draw.set_defaults(func=cmd_draw)

    models = sub.add_parser(
        "models", help="list models, VAEs, hypernetworks, LoRAs and embeddings under models/"
    )
    models.set_defaults(func=cmd_models)

    run = sub.add_parser(
        "run",
        help="start the chat bots that have a token in the environment, else the local web chat",
        description=(
            "Start Discord (AIDRAW_DISCORD_TOKEN) and Telegram (AIDRAW_TELEGRAM_TOKEN), each only "
            "when its token is in the environment. With neither token, serve the local web chat "
            "on http://127.0.0.1:7860 ([web] in settings.toml) so the bot can be tried at once. "
            "Logs one line per job start and end; Ctrl+C or SIGTERM lets the drawing job finish; "
            "SIGUSR1 writes a backup into [backup] dir."
        ),
    )
    run.add_argument(
        "--worker",
        action="store_true",
        help='with [queue] backend = "redis": also start one `aidraw worker` beside the bots',
    )
    run.set_defaults(func=cmd_run)

    worker = sub.add_parser(
        "worker",
        help='draw the jobs of a Redis pool ([queue] backend = "redis"); one per GPU',
        description=(
            "Join the pool of the bot's Redis ([queue] redis_url, or AIDRAW_REDIS_URL) and draw "
            "its jobs on one device; start one per GPU, on any machine with the same models/. "
            "SIGTERM finishes the drawing batch and hands the rest back; a worker that dies has "
            "its jobs taken over by another after [queue] claim_timeout_s."
        ),
    )
    worker.add_argument("--device", default="", help="cpu, cuda, cuda:N or mps (default: [device])")
    worker.add_argument("--name", default="", help="its name in /queue (default: HOST-PID)")
    worker.set_defaults(func=cmd_worker)

    doctor = sub.add_parser(
        "doctor",
        help="check torch, the GPU, models, settings, tokens, chat APIs, disk and the journal",
        description=(
            "Check the installation and explain each problem with its fix, on one screen. "
            "Exit code 1 if there is a problem. Tokens are never printed."
        ),
    )
    doctor.add_argument(
        "--offline", action="store_true", help="do not ask the Discord and Telegram APIs"
    )
    doctor.add_argument(
        "--load", action="store_true", help="load every model for real (slow), not just its files"
    )
    doctor.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for each chat API (5)"
    )
    doctor.set_defaults(func=cmd_doctor)

    backup = sub.add_parser(
        "backup",
        help="copy the job journal and per-user settings into DIR (the bot must be stopped)",
        description=(
            "SQLite's online backup of the journal and the per-user settings into DIR. A "
            "running bot holds the journal: send it SIGUSR1 instead and it writes a backup "
            "into [backup] dir."
        ),
    )
    backup.add_argument("dir", type=Path, help="folder for the copies (made if missing)")
    backup.add_argument(
        "--results", action="store_true", help="also copy the finished images ([queue] results_dir)"
    )
    backup.set_defaults(func=cmd_backup)

    restore = sub.add_parser(
        "restore",
        help="put a backup from DIR back (the bot must be stopped)",
        description="Replace the journal and per-user settings with the copies in DIR.",
    )
    restore.add_argument("dir", type=Path, help="a folder made by `aidraw backup` or SIGUSR1")
    restore.set_defaults(func=cmd_restore)

    demo = sub.add_parser("build-demo", help="build the offline demo model into models/")
    demo.add_argument("--force", action="store_true", help="rebuild even if it exists")
    demo.add_argument(
        "--if-missing", action="store_true", help="only if no model is configured or found"
    )
    demo.set_defaults(func=cmd_build_demo)
    return parser


def cmd_draw(args: argparse.Namespace, settings: Settings) -> int:
    parsed = read_request(
        args.text,
        requester="cli",
        settings=settings.prompt,
        max_chars=settings.limits.max_prompt_chars,
    )
    if args.explain:
        print(explain(parsed, settings))
        return 0
    for note in parsed.notes:
        print(f"aidraw: note: {note}", file=sys.stderr)
    request = _with_images(parsed.request, args, settings)
    # Heavy imports only for commands that draw.
    from tqdm import tqdm

    from engine.checks import check_request
    from engine.contracts import pick_model
    from engine.generate import generate
    from engine.models import ModelRegistry

    registry = ModelRegistry(settings.models_dir, settings.defaults)
    if request.model_hash:  # a pasted infotext's model: hash what is here (cached after once)
        registry.warm_hashes()
    default = settings.engine.default_model or _first_model(registry, settings)
    entry = pick_model(registry, request, default)
    request = dataclasses.replace(request, model=entry.name, model_hash=None)
    # Check at the door, before the seconds-long model load.
    check_request(request, settings.limits, entry.defaults, entry.presets)
    model = registry.load(entry.name, settings.device)
    resolved = entry.defaults.apply(request)
    with tqdm(total=resolved.num_inference_steps, unit="step", file=sys.stderr, leave=False) as bar:

        def on_step(step: int, total: int, latents: Any) -> None:
            bar.update(step - bar.n)

        results = generate(model, [request], limits=settings.limits, on_step=on_step)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i, result in enumerate(results):
        path = _output_path(args.out, settings, stamp, result.seed, i, len(results))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(result.png)
        if args.json:
            line = {
                "path": str(path),
                "seed": result.seed,
                "request": dataclasses.asdict(result.request),
                "timings": dataclasses.asdict(result.timings),
            }
            print(json.dumps(line, ensure_ascii=False))
        else:
            print(path)
    return 0


def _with_images(
    request: GenerationRequest, args: argparse.Namespace, settings: Settings
) -> GenerationRequest:
    """The request with `--init-image`/`--mask` checked at the same door as a chat's upload
    and kept in the image store (the request names the kept copy)."""
    from engine.images import INPUTS, ImageStore, read_image

    if args.mask is not None and args.init_image is None:
        raise UsageError("--mask needs --init-image (the picture the mask belongs to)")
    store = ImageStore(settings.root / settings.queue.results_dir / INPUTS)
    changes: dict[str, str] = {}
    for field, path, mask in (
        ("init_image", args.init_image, False),
        ("mask_image", args.mask, True),
    ):
        if path is None:
            continue
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
        checked = read_image(data, settings.limits, mask=mask)
        if checked.first_frame_only:
            print(f"aidraw: note: {path.name} is animated; using its first frame", file=sys.stderr)
        changes[field] = str(store.put(checked))
    return dataclasses.replace(request, **changes) if changes else request


def explain(parsed: ParsedRequest, settings: Settings) -> str:
    """How chat text is read: the request, each prompt's schedule, weights and token chunks."""
    from engine.prompting import format_weight, parse_attention, prompt_schedule
    from engine.prompting.chunks import prompt_chunks
    from engine.prompting.tokenizer import ClipBpe

    request = parsed.request
    tokenizer = ClipBpe()
    steps = request.num_inference_steps or settings.defaults.num_inference_steps
    emphasis = request.emphasis or settings.defaults.emphasis
    unset = GenerationRequest(prompt="")
    lines = ["request (unset fields take the model's and settings' defaults):"]
    for field in dataclasses.fields(request):
        value = getattr(request, field.name)
        if field.name in ("prompt", "negative_prompt") or value != getattr(unset, field.name):
            lines.append(f"  {field.name}: {value!r}")
    lines += [f"note: {note}" for note in parsed.notes]
    for label, text in (("prompt", request.prompt), ("negative prompt", request.negative_prompt)):
        schedule = prompt_schedule(text, steps)
        used_from = 1  # sampling step k (1-based) uses the first entry whose end is >= k - 1
        for end, variant in schedule:
            used_to = min(end + 1, steps)
            if len(schedule) > 1:
                span = f"steps {used_from}-{used_to}" if used_from <= used_to else "never used"
                lines.append(f"{label} ({span} of {steps}): {variant!r}")
            else:
                lines.append(f"{label}: {variant!r}")
            used_from = max(used_from, used_to + 1)
            segments = parse_attention(variant) if emphasis != "None" else [(variant, 1.0)]
            lines.append("  weighted segments:")
            lines += [f"    {format_weight(w):<7} {segment!r}" for segment, w in segments]
            chunks = prompt_chunks(tokenizer, variant, emphasis=emphasis)
            lines.append(f"  token chunks ({len(chunks)} x 75, emphasis {emphasis}):")
            for i, chunk in enumerate(chunks, 1):
                lines.append(f"    {i}: {chunk.used:>2}/75  {_chunk_text(tokenizer, chunk)}")
    return "\n".join(lines)


def _chunk_text(tokenizer: Any, chunk: Any) -> str:
    """A chunk's tokens as text, with runs of one weight shown A1111-style: (word:1.1)."""
    from engine.prompting import format_weight

    body = chunk.tokens[1 : 1 + chunk.used]
    weights = chunk.multipliers[1 : 1 + chunk.used]
    pieces = tokenizer.convert_ids_to_tokens(list(body))
    out: list[str] = []
    run: list[str] = []
    run_weight = 1.0
    for piece, weight in [*zip(pieces, weights, strict=True), (None, None)]:
        if weight != run_weight and run:
            text = "".join(run).replace("</w>", " ").strip()
            out.append(text if run_weight == 1.0 else f"({text}:{format_weight(run_weight)})")
            run = []
        if piece is not None:
            run.append(piece)
            run_weight = weight
    return " ".join(out) if out else "(padding only)"


def _first_model(registry: Any, settings: Settings) -> str:
    if not registry.models:
        raise UsageError(
            f"no model in {settings.models_dir}: run `make demo` (or `aidraw build-demo`), "
            "or put a .safetensors checkpoint there"
        )
    return str(next(iter(registry.models)))


def _output_path(
    out: Path | None, settings: Settings, stamp: str, seed: int, index: int, count: int
) -> Path:
    if out is None:
        return Path(settings.engine.output_dir) / f"{stamp}-{seed}.png"
    if count == 1:
        return out
    return out.with_name(f"{out.stem}-{index + 1}{out.suffix or '.png'}")


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from engine.models import ModelRegistry
    from engine.models.library import FOLDERS

    registry = ModelRegistry(settings.models_dir, settings.defaults)
    print(f"models in {settings.models_dir}:")
    for entry in registry.models.values():
        d = entry.defaults
        marker = " (default)" if entry.name == settings.engine.default_model else ""
        addons = ", its own VAE" if d.vae == "None" else f", VAE {d.vae}"
        addons += f", hypernet {d.hypernet}" if d.hypernet else ""
        architecture = f"unknown ({entry.unknown})" if entry.unknown else str(entry.architecture)
        print(
            f"  {entry.name}{marker}  [{entry.kind}, {architecture}] {registry.model_hash(entry)}  "
            f"{d.width}x{d.height}, {d.sampler}, {d.num_inference_steps} steps, "
            f"CFG {d.guidance_scale:g}, clip skip {d.clip_skip}{addons}"
        )
    if not registry.models:
        print("  (none: run `make demo` or `aidraw build-demo`)")
    library = registry.addons
    for kind, folder in FOLDERS.items():
        files = library.files[kind]
        print(f"{kind}s in {folder}/: " + ("" if files else "(none)"))
        aliases = {stem: alias for alias, stem in library.lora_aliases.items()}
        for name, file in files.items():
            alias = f" (alias {aliases[name]})" if name in aliases else ""
            print(f"  {name}{alias}  {library.short_hash(file)}")
    for problem in registry.problems:
        print(f"  problem: {problem}")
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from bot.launcher import serve

    return asyncio.run(serve(settings, with_worker=args.worker, settings_path=args.settings))


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from bot.launcher import work
    from bot.settings import DEVICE

    if args.device and not DEVICE.fullmatch(args.device):
        raise UsageError(f"--device {args.device!r}: allowed: cpu, cuda, cuda:N, mps")
    return asyncio.run(work(settings, device=args.device, name=args.name))


def cmd_doctor(args: argparse.Namespace) -> int:
    import asyncio

    from bot.doctor import examine, report

    findings = asyncio.run(
        examine(args.settings, offline=args.offline, load_models=args.load, timeout_s=args.timeout)
    )
    print(report(findings))
    return 1 if any(f.level == "fail" for f in findings) else 0


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    from bot.backup import BackupError, back_up_files

    try:
        made = back_up_files(settings, args.dir, results=args.results)
    except BackupError as e:
        raise UsageError(str(e)) from None
    for path in made:
        print(path)
    return 0


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from bot.backup import BackupError, restore

    try:
        restored = restore(settings, args.dir)
    except BackupError as e:
        raise UsageError(str(e)) from None
    for path in restored:
        print(f"restored {path}")
    return 0


def cmd_build_demo(args: argparse.Namespace, settings: Settings) -> int:
    from engine.demo.model import DEMO_NAME, is_outdated, save_demo_model
    from engine.models import ModelRegistry

    target = settings.models_dir / DEMO_NAME
    # A demo folder from older (or random) weights is rebuilt, so an update reaches `make demo`.
    outdated = target.is_dir() and is_outdated(target)
    if (
        args.if_missing
        and not outdated
        and (settings.engine.default_model or ModelRegistry(settings.models_dir).models)
    ):
        print(f"a model is configured or present in {settings.models_dir}; no demo build needed")
        return 0
    if target.exists() and not outdated and not args.force:
        print(f"demo model already built: {target}")
        return 0
    print(save_demo_model(settings.models_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
