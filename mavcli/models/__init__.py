"""The networks of the cascade (Make-A-Video section 3) and their config dataclasses.

`SAMPLED_STAGES` is the one list of the cascade's diffusion stages, in the paper's order:
P, D^t, F_i, SR_l^t, SR_h. The pipeline, export and the CLI all read it from here (a
torch-free module, so the CLI can check options before loading anything)."""

SAMPLED_STAGES = ("prior", "keyframes", "interpolation", "sr_video", "sr_image")
# where the cascade may stop early (`stop_after`): after D^t, F_i or SR_l^t
STOP_AFTER_STAGES = SAMPLED_STAGES[1:-1]
