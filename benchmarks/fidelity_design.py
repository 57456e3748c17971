"""The fidelity benchmark's design: training runs, profile sets, arms, paper directions and size presets."""

COMBINATIONS = ("U2OS->U2OS", "U2OS->A549", "A549->U2OS", "A549->A549")

# Training runs: channel group -> config, extra overrides. The dataset root and seed are added per seed.
TRAININGS = {
    "fluo_la": ("tiny_cpu_fluo", [], None),
    "bf_la": ("tiny_cpu_bf", [], None),
    "fluo_nola": ("tiny_cpu_fluo", ["local_aggregation.loss_weight=0"], None),
    "bf_nola": ("tiny_cpu_bf", ["local_aggregation.loss_weight=0"], None),
    # One model on all 8 channels: the fluorescent config's augmentations (the paper's 8-channel baseline had no
    # per-group tuning either).
    "joint_la": ("tiny_cpu_fluo", ["student.in_chans=8"], {"channels": "all"}),
    # The tiny configs normalise per image (percentiles); the other normalisation, for its arm:
    "fluo_plate": ("tiny_cpu_fluo", [], {"normalize": "plate"}),
    # Upstream's DINO centre (EMA 0.9) instead of the tiny configs' batch centring (dino.center_momentum 0):
    "fluo_cema": ("tiny_cpu_fluo", ["dino.center_momentum=0.9"], None),
    "bf_cema": ("tiny_cpu_bf", ["dino.center_momentum=0.9"], None),
}
# Random-init ViTs: the trained runs' configs with untrained weights.
RANDOM = {"fluo_random": "tiny_cpu_fluo", "bf_random": "tiny_cpu_bf"}
# Embedded profile sets: name -> {feature prefix: run}.
PROFILE_SETS = {
    "la": {"fluo": "fluo_la", "bf": "bf_la"},
    "nola": {"fluo": "fluo_nola", "bf": "bf_nola"},
    "random": {"fluo": "fluo_random", "bf": "bf_random"},
    "joint": {"joint": "joint_la"},
    "fluo_plate": {"fluo": "fluo_plate"},
    "cema": {"fluo": "fluo_cema", "bf": "bf_cema"},
}
# Arm -> (description, profile set, post-processing).
ARMS = {
    "random_init": ("random-init ViT (fluo + bf)", "random", "full"),
    "ssl_cls": ("SSL, CLS token only", "la", "cls"),
    "ssl": ("SSL: CLS + patch, separate fluo/bf, LA on, concat (method)", "la", "full"),
    "joint_8ch": ("SSL, one joint 8-channel model", "joint", "full"),
    "no_local_aggregation": ("SSL, local aggregation off", "nola", "full"),
    "site_mean": ("SSL, 9 sites averaged", "la", "mean"),
    "aligned": (
        "SSL + cross-plate alignment (LABEL LEAKAGE: same position = same compound, test plates pooled)",
        "la",
        "aligned",
    ),
    "fluo_plate_norm": ("SSL fluo only, plate normalisation", "fluo_plate", "full"),
    "fluo_percentile_norm": ("SSL fluo only, per-image percentile", "la", "fluo"),
    "center_ema": ("SSL with upstream's centre EMA 0.9 (tiny configs: batch centring)", "cema", "full"),
    "classical": ("classical intensity/texture statistics", None, "classical"),
}
# Paper directions: (name, better arm, worse arm, source of the claim).
DIRECTIONS = (
    ("SSL beats random init", "ssl", "random_init", "implicit in the paper"),
    ("CLS + patch beats CLS only", "ssl", "ssl_cls", "paper ablation 20.3 -> 20.9"),
    ("separate fluo/bf beats joint 8-channel", "ssl", "joint_8ch", "paper ablation 20.9 -> 24.9"),
    ("local aggregation on beats off", "ssl", "no_local_aggregation", "paper ablation 35.4 -> 38.6 (main claim)"),
    ("9-site concatenation beats mean", "ssl", "site_mean", "paper Sec. 3.3"),
    ("cross-plate alignment beats none", "aligned", "ssl", "paper Sec. 3.3.3 (challenge score); here label leakage"),
    ("plate normalisation beats per-image percentile", "fluo_plate_norm", "fluo_percentile_norm", "issue 13 item 1"),
    (
        "SSL beats the classical baseline",
        "ssl",
        "classical",
        "paper: 38.6 vs 24.1 for the organisers' example representations (not said to be CellProfiler)",
    ),
    ("batch centring beats centre EMA 0.9", "ssl", "center_ema", "tiny configs' dino.center_momentum 0"),
)

# Size presets. Timings measured on the shared 2-core machine are in the README's fidelity section.
PRESETS = {
    "toy": dict(plates_per_line=2, wells=24, size=64, epochs=1, seeds="0,1", overrides=[], workers=1),
    "cpu": dict(plates_per_line=3, wells=64, size=96, epochs=15, seeds="0,1,2", overrides=[], workers=1),
    # One H200 with 16 CPU cores, sized for one 8-minute run from an ESTIMATE (not run yet: the session that wrote it
    # had no GPU): a 4-layer 192-wide ViT, 112 px global / 56 px local crops, batch 32 (4x the CPU batch), 100
    # iterations per model, 128 wells at 128 px, rendering and the classical features on 16 processes. The run is
    # resumable, so a second call on the same --out continues if the first one is cut short.
    "gpu": dict(
        plates_per_line=3,
        wells=128,
        size=128,
        epochs=10,
        seeds="0,1,2",
        overrides=[
            "student.arch=vit_cell_mini",
            "crops.global_crops_size=112",
            "crops.local_crops_size=56",
            "train.batch_size_per_gpu=32",
            "train.num_workers=8",
        ],
        workers=16,
    ),
}
