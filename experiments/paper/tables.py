"""The paper's tables: where each table's images are, the paper's numbers, and the dip-run overrides and
iterations of each mode. Everything else about a run (crop, size multiple, shave) is read from its composed config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MODES = ("quick", "full")
INPAINT_NAMES = {  # the paper's column names -> file stems in inpainting11/
    "Barbara": "barbara",
    "Boat": "boat",
    "House": "house",
    "Lena": "Lena512",
    "Peppers": "peppers256",
    "C.man": "Cameraman256",
    "Couple": "couple",
    "Finger": "fingerprint",
    "Hill": "hill",
    "Man": "man",
    "Montage": "montage",
}
INPAINT_PAPER = {  # docs/reference.md: 50% missing pixels, PSNR dB
    "Papyan et al. (CSC)": [28.14, 31.44, 34.58, 35.04, 31.11, 27.90, 31.18, 31.34, 32.35, 31.92, 28.05],
    "DIP (paper)": [32.22, 33.06, 39.16, 36.16, 33.05, 29.8, 32.52, 32.84, 32.77, 32.20, 34.54],
}


@dataclass
class Table:
    name: str
    kind: str  # denoise | sr | inpaint
    folder: str  # under --data
    gt: str  # ground-truth file, {stem} filled in
    observed: str | None  # the paper's corrupted input, {stem} filled in
    factor: int = 1
    paper: dict[str, float] = field(default_factory=dict)  # mean numbers the paper reports
    full: list[str] = field(default_factory=list)  # dip-run overrides for MODE=full
    quick: list[str] = field(default_factory=list)  # for MODE=quick
    full_iterations: int = 0
    quick_iterations: int = 0

    def overrides(self, mode: str) -> list[str]:
        return list(self.full if mode == "full" else self.quick)

    def iterations(self, mode: str) -> int:
        return self.full_iterations if mode == "full" else self.quick_iterations

    def stem_of(self, filename: str) -> str:
        """The image stem of one of this table's ground-truth file names."""
        prefix, _, suffix = self.gt.rpartition("/")[2].partition("{stem}")
        return filename[len(prefix) : len(filename) - len(suffix)]

    def stems(self, data: Path) -> list[str]:
        folder, _, name = self.gt.rpartition("/")
        return sorted(self.stem_of(p.name) for p in (data / self.folder / folder).glob(name.format(stem="*")))


# Quick mode: 128x128 centre crops, skip with 32 channels per scale (net=skip_small), one thread per job.
QUICK_COMMON = ["net=skip_small", "data.crop=128", "cpu_threads=1"]
TABLES = {
    "denoise9": Table(
        "denoise9",
        "denoise",
        "denoise9",
        "{stem}_GT.png",
        "noisy_sigma25/{stem}_noisy.png",
        paper={
            "DIP": 29.22,
            "DIP, averaged output": 30.43,
            "DIP, averaged over 2 runs": 31.00,
            "CBM3D": 31.42,
            "NLM": 30.26,
        },
        full=[
            "task=denoising",
            "net=skip",
            "data.crop=null",
            "task.sigma=25",
            "task.reg_noise_std=0.0333",
            "task.exp_weight=0.99",
            "task.backtracking=true",
            "optimizer.lr=0.01",
        ],
        quick=[
            "task=denoising",
            "task.sigma=25",
            "task.reg_noise_std=0.0333",
            "task.exp_weight=0.99",
            "task.backtracking=true",
            "optimizer.lr=0.01",
            *QUICK_COMMON,
        ],
        full_iterations=1800,
        quick_iterations=1000,
    ),
    **{
        f"sr_{s}_x{f}": Table(
            f"sr_{s}_x{f}",
            "sr",
            s,
            f"dip_gt_x{f}/{{stem}}_GT.png",
            None,
            factor=f,
            paper={
                ("set5", 4): {"DIP": 29.90, "Bicubic": 28.43, "SRResNet": 32.10},
                ("set14", 4): {"DIP": 27.00, "Bicubic": 26.05, "SRResNet": 28.53},
            }.get((s, f), {}),
            full=[
                "task=super_resolution",
                f"task.factor={f}",
                "net=skip",
                "data.crop=null",
                "task.kernel=lanczos2",
                f"task.reg_noise_std={0.03 if f == 4 else 0.05}",
                "optimizer.lr=0.01",
                "task.final_input=jittered",  # the reference's last cell (the table shows the clean z's too)
            ],
            quick=[
                "task=super_resolution",
                f"task.factor={f}",
                "task.kernel=lanczos2",
                f"task.reg_noise_std={0.03 if f == 4 else 0.05}",
                "optimizer.lr=0.01",
                *QUICK_COMMON,
            ],
            full_iterations=2000 if f == 4 else 4000,
            quick_iterations=1000 if f == 4 else 1500,
        )
        for s in ("set5", "set14")
        for f in (4, 8)
    },
    "inpaint11": Table(
        "inpaint11",
        "inpaint",
        "inpainting11",
        "{stem}_GT.png",
        "masked_50p/{stem}_masked.png",
        paper={"DIP": 33.48, "Papyan et al. (CSC)": 31.18},
        # the reference's "restoration, 50% of pixels kept" settings (barbara): skip128x5, 1 channel, lr 0.001
        full=[
            "task=inpainting",
            "net=skip",
            "net.output_channels=1",
            "data.crop=null",
            "task.reg_noise_std=0.03",
            "optimizer.lr=0.001",
            "task.final_input=jittered",  # the reference's last cell (the table shows the clean z's too)
        ],
        quick=[
            "task=inpainting",
            "net.output_channels=1",
            "task.reg_noise_std=0.03",
            "optimizer.lr=0.01",
            *QUICK_COMMON,
        ],
        full_iterations=11000,
        quick_iterations=700,
    ),
}
