"""The GPU device check: every throughput benchmark, sized to finish within a time budget,
one JSON line per figure on stdout (name, value, unit, target, pass; progress and fit's
epoch lines go to stderr).

    python -m benchmarks.gpu_check --budget-s 300            # on a CUDA machine
    python -m benchmarks.gpu_check --allow-cpu --budget-s 60 # tiny sizes on the CPU (tests)

Figures: training steps (baseline, reg random and gradient, 224 px, batch 128, mixed
precision as train.amp), the real training loop against its model-bound limit, our PGD-10
against torchattacks', the attack sweep against PGD alone, attack.amp's speed and its
change of accuracy under attack, and the streaming loader's decode rate per num_workers.
`pass` is null where a figure has no target. Sizes scale down with budgets under 300 s,
and on a GPU a section that would start after the budget is spent is skipped (a
`<section>.skipped` line); on the CPU (--allow-cpu) every section runs. Exit status 0 when
every section ran (targets missed or not), 1 when one failed or was skipped, 2 without
CUDA (and no --allow-cpu), 3 when a needed package is missing (the message says how to
carry it; without torchattacks only its figure is missing).

It imports torch, timm, scikit-learn, numpy, Pillow, tqdm, PyYAML and pydantic (through
robust_deepfake.config), never MLflow, DVC, Prefect or grad-cam; the last line checks that.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import traceback
from dataclasses import dataclass

FORBIDDEN = ("mlflow", "dvc", "prefect", "pytorch_grad_cam")
# module -> the pinned distribution to carry (pyproject.toml / constraints.txt pins)
NEEDED = {
    "torch": None, "timm": None, "sklearn": None, "numpy": None, "PIL": None, "tqdm": None, "yaml": None,
    "pydantic": ["pydantic==2.14.4", "pydantic_core==2.50.5", "annotated-types==0.8.0",
                 "typing-inspection==0.4.5", "typing_extensions==4.16.0"],
    "torchattacks": ["torchattacks==3.5.1"],
}
CARRY_HELP = """\
{missing}: not installed here. The GPU image has torch, timm and scikit-learn but not
pydantic (robust_deepfake.config needs it) nor torchattacks (the oracle of the PGD
figure). Carry them as wheels. On a machine with pip and network, in the repo root:

  echo /.whl/ >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl {wheels}

(--python-version: the GPU machine's python3). Send .whl along with the working tree and
start the device command with

  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
    && export PYTHONPATH=/tmp/site:src && python3 -m benchmarks.gpu_check --budget-s 300
"""


@dataclass(frozen=True)
class Plan:
    """Sizes of one run; `cuda` is the real check, `cpu` only proves the plumbing."""

    image_size: int
    train_batch: int
    step_repeats: int
    loop_steps: int
    attack_batch: int
    attack_image_size: int
    pgd_steps: int
    attack_repeats: int
    sweep_steps: int
    amp_epochs: int
    amp_per_source: int
    loader_images: int
    loader_workers: tuple[int, ...]

    @classmethod
    def for_device(cls, device_type: str, budget_s: float, cpus: int) -> Plan:
        from benchmarks.loader import default_workers

        if device_type == "cuda":
            scale = min(1.0, budget_s / 300)
            return cls(image_size=224, train_batch=128, step_repeats=max(3, round(20 * scale)),
                       loop_steps=max(4, round(20 * scale)), attack_batch=128, attack_image_size=224, pgd_steps=10,
                       attack_repeats=max(2, round(5 * scale)), sweep_steps=5, amp_epochs=12, amp_per_source=48,
                       loader_images=max(128, round(1024 * scale)), loader_workers=tuple(default_workers(cpus)))
        return cls(image_size=32, train_batch=8, step_repeats=2, loop_steps=2, attack_batch=8, attack_image_size=32,
                   pgd_steps=2, attack_repeats=1, sweep_steps=1, amp_epochs=1, amp_per_source=4,
                   loader_images=32, loader_workers=tuple(default_workers(min(cpus, 2))))


def _missing_packages() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


class Check:
    """Runs the sections in order, each given a share of what is left of the budget."""

    def __init__(self, budget_s: float, enforce: bool) -> None:
        self.started = time.perf_counter()
        self.budget_s = budget_s
        self.enforce = enforce  # skip what would start after the budget is spent (on a GPU lease)
        self.failed: list[str] = []
        self.records: list[dict] = []

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def emit(self, record: dict) -> None:
        from benchmarks.common import emit

        self.records.append(record)
        emit(record)

    def section(self, name: str, run, *args) -> None:
        from benchmarks.common import figure

        began = time.perf_counter()
        print(f"[gpu_check] {name} ({self.left():.0f} s of the budget left)", file=sys.stderr, flush=True)
        if self.enforce and self.left() <= 0:
            self.failed.append(name)
            self.emit(figure(f"{name}.skipped", None, "", error="the budget was spent before this section"))
            return
        try:
            for record in run(*args):
                self.emit(record)
        except Exception as error:  # one broken section must not hide the others' figures
            traceback.print_exc(file=sys.stderr)
            self.failed.append(name)
            self.emit(figure(f"{name}.error", None, "", error=f"{type(error).__name__}: {error}"[:300]))
        print(f"[gpu_check] {name}: {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)


def train_figures(device, plan: Plan, share_s: float):
    from benchmarks.common import figure
    from benchmarks.train_step import loop_vs_bound, step_throughput

    size = dict(image_size=plan.image_size, batch_size=plan.train_batch)
    seconds = step_throughput(device, plan.train_batch, plan.image_size, plan.step_repeats, amp=True,
                              budget_s=share_s / 3)
    yield figure("train.step_baseline_img_s", plan.train_batch / seconds["baseline"], "img/s", **size)
    for name in ("reg random", "reg gradient"):
        key = name.replace(" ", "_")
        yield figure(f"train.step_{key}_over_baseline", seconds[name] / seconds["baseline"], "x time", "<= 1.5",
                     **size)
    result = loop_vs_bound(device, plan.image_size, plan.train_batch, plan.loop_steps, amp=True)
    yield figure("train.loop_img_s", result["loop"], "img/s", **size)
    yield figure("train.bound_img_s", result["bound"], "img/s", **size)
    yield figure("train.loop_over_bound", result["ratio"], "ratio", ">= 0.9", steps=result["steps"], **size)


def attack_figures(device, plan: Plan, share_s: float):
    from benchmarks.attacks import batch, load_model, paired_seconds, pgd_seconds, sweep_throughput
    from benchmarks.common import figure

    model, _ = load_model(None, device)
    images, labels = batch(plan.attack_batch, plan.attack_image_size, device)
    size = dict(image_size=plan.attack_image_size, batch_size=plan.attack_batch, steps=plan.pgd_steps)
    work = plan.attack_batch * plan.pgd_steps
    share = share_s / 6
    if importlib.util.find_spec("torchattacks") is not None:
        timed = paired_seconds(model, images, labels, plan.pgd_steps, plan.attack_repeats, budget_s=2 * share)
        ours = timed["ours"]
        yield figure("attacks.pgd_grad_img_s", work / ours, "grad-img/s", **size)
        yield figure("attacks.pgd_ours_over_torchattacks", timed["ratio"], "x time", "<= 1.00",
                     torchattacks_grad_img_s=round(work / timed["torchattacks"], 1), rounds=timed["rounds"], **size)
    else:
        ours = pgd_seconds(model, images, labels, plan.pgd_steps, plan.attack_repeats, budget_s=share)
        yield figure("attacks.pgd_grad_img_s", work / ours, "grad-img/s", **size)
        yield figure("attacks.pgd_ours_over_torchattacks", None, "x time", "<= 1.00", **size,
                     error="torchattacks missing: carry its wheel (see the module docstring)")
    sweep = sweep_throughput(model, images, labels, steps=plan.sweep_steps)
    sweep_size = dict(image_size=plan.attack_image_size, batch_size=plan.attack_batch,
                      attacks=f"fgsm+pgd-{plan.sweep_steps} x 2 eps")
    yield figure("attacks.sweep_grad_img_s", sweep, "grad-img/s", **sweep_size)
    yield figure("attacks.sweep_over_pgd", sweep / (work / ours), "ratio", ">= 0.90", **sweep_size)
    if device.type == "cuda":  # attack.amp applies on CUDA only
        amp = pgd_seconds(model, images, labels, plan.pgd_steps, plan.attack_repeats, amp=True, budget_s=share)
        yield figure("attacks.pgd_amp_over_fp32", amp / ours, "x time", "<= 1.0", **size)
        amp_sweep = sweep_throughput(model, images, labels, amp=True, steps=plan.sweep_steps)
        yield figure("attacks.sweep_amp_grad_img_s", amp_sweep, "grad-img/s", **sweep_size)


def amp_accuracy_figures(device, plan: Plan):
    from benchmarks.attacks import amp_accuracy_change
    from benchmarks.common import figure

    # On the CPU, attack.amp is ignored by the stages; here the CPU bf16 path runs instead
    # (tiny and barely trained: it proves the plumbing, not the accuracy).
    types = None if device.type == "cuda" else frozenset({"cpu"})
    result = amp_accuracy_change(device, plan.amp_epochs, plan.amp_per_source, amp_device_types=types)
    yield figure("attacks.amp_accuracy_change", result["max_change"], "accuracy", "<= 0.01", n=result["n"],
                 fp32=result["fp32"], amp=result["amp"])


def loader_figures(plan: Plan, train_bound: float | None):
    from benchmarks.common import figure
    from benchmarks.loader import measure

    rates = measure(plan.loader_images, plan.image_size, plan.train_batch, list(plan.loader_workers))
    size = dict(n_images=plan.loader_images, jpeg_size=256, image_size=plan.image_size)
    for workers, (first, later) in rates.items():
        yield figure(f"loader.decode_img_s_workers_{workers}", later, "img/s", first_pass_img_s=round(first, 1),
                     **size)
    best = max(rates, key=lambda w: rates[w][1])
    yield figure("loader.best_decode_img_s", rates[best][1], "img/s", num_workers=best, **size)
    if train_bound:  # can the streaming path feed the training step?
        yield figure("loader.best_over_train_bound", rates[best][1] / train_bound, "ratio", ">= 1.0",
                     num_workers=best, **size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=300, help="wall-clock budget (default: %(default)s s)")
    parser.add_argument("--allow-cpu", action="store_true", help="without CUDA, run tiny sizes on the CPU")
    parser.add_argument("--device", default="cuda", help="CUDA device (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)

    missing = _missing_packages()
    if missing:
        wheels = " ".join(w for name in missing for w in (NEEDED[name] or [f"<{name}>"]))
        print(CARRY_HELP.format(missing=", ".join(missing), wheels=wheels), file=sys.stderr)
        if any(NEEDED[name] is None or name == "pydantic" for name in missing):
            return 3  # torchattacks alone only costs its one figure
    import torch

    from benchmarks.common import describe, figure
    from benchmarks.loader import available_cpus

    if args.threads:
        torch.set_num_threads(args.threads)
    if torch.cuda.is_available():
        device = torch.device(args.device)
    elif args.allow_cpu:
        device = torch.device("cpu")
    else:
        print("gpu_check: CUDA is not available on this machine; it measures a GPU. "
              "--allow-cpu runs tiny sizes on the CPU (plumbing only).", file=sys.stderr)
        return 2
    plan = Plan.for_device(device.type, args.budget_s, available_cpus())
    check = Check(args.budget_s, enforce=device.type == "cuda")
    print(f"[gpu_check] {describe(device)}, budget {args.budget_s:.0f} s, {plan}", file=sys.stderr, flush=True)
    check.emit(figure("device", None, "", detail=describe(device), budget_s=args.budget_s))
    check.section("train", train_figures, device, plan, 0.35 * check.left())
    check.section("attacks", attack_figures, device, plan, 0.45 * check.left())
    check.section("amp_accuracy", amp_accuracy_figures, device, plan)
    bound = next((r["value"] for r in check.records if r["name"] == "train.bound_img_s"), None)
    check.section("loader", loader_figures, plan, bound)

    imported = sorted(name for name in FORBIDDEN if sys.modules.get(name) is not None)
    check.emit(figure("imports_forbidden", len(imported), "modules", "<= 0", modules=imported))
    elapsed = time.perf_counter() - check.started
    check.emit(figure("elapsed_s", elapsed, "s", f"<= {args.budget_s:g}"))
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
