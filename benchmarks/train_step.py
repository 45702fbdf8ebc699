"""Training throughput side by side in one run: plain PyTorch's configurations of the
model, our training steps and the real training loop.

On the CPU (the default: 1 and 2 torch threads, batch 32, 64 px) it prints one table:

- bare timm EfficientNet-B0: cross-entropy, backward and the AdamW `fit` uses on a ready
  batch, contiguous, channels_last and channels_last under `torch.compile` (its first
  step, the compilation, is reported apart; only with --compile: compiling takes minutes
  on a busy 2-core CPU); at each thread count;
- ours, baseline step: `training_step` + `fit`'s optimizer, at each thread count;
- at one training's thread count (`--train-threads`, default 1: the demo trains its seeds
  in a pool of 1-thread processes):
  reg random / reg gradient step time over the baseline step's (target <= 1.5), and the
  real loop against its model-bound limit (target >= 0.9). The bound is `fit`'s step
  (`training_step`, AdamW, one-cycle scheduler) over batches already on the device, after
  a warm-up; the loop is `fit`'s second epoch from the end of the first epoch's
  validation to the end of its own, so a checkpoint, the batches (flips, copies), the
  training and the validation (the split's val/train share of images) are all in it;
- two 1-thread processes at once against one 2-thread process running the model-bound
  baseline step: aggregate images/s (what a pool of 1-thread trainings buys).

Every figure is images/s (wall clock, median step) with CPU ms per step beside it (all the
process's threads): on a shared machine the wall clock moves with other jobs' load, CPU
time less so; the load average before and after is printed with the figures.

    python -m benchmarks.train_step [--steps 10] [--loop-steps 40] [--threads 1 2] [--compile]
    python -m benchmarks.train_step --device cuda --image-size 224 --batch-size 128

Without --splits (or when its train.csv is missing) the loop runs on random in-memory images.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import add_device_argument, in_memory_set, resolve_device, synchronize

REPO = Path(__file__).resolve().parents[1]
STEP_VARIANTS = ("baseline", "reg random", "reg gradient")
WARMUP_STEPS = 2
DEMO_VAL_SHARE = 0.25  # the demo split's val/train images (343 / 1367)
COMPILE_NOTE = ("--compile: inductor builds C++ kernels per shape and thread count, minutes on a busy "
                "2-core CPU (docs/benchmarks.md)")


@dataclass(frozen=True)
class Timing:
    """Median wall seconds per step and mean CPU seconds per step (all threads)."""

    wall: float
    cpu: float

    def cell(self, batch_size: int) -> str:
        return f"{batch_size / self.wall:6.1f} ({self.cpu * 1000:5.0f})"


def time_steps(step, repeats: int, device: torch.device, warmup: int = WARMUP_STEPS,
               budget_s: float | None = None) -> Timing:
    """`step` timed `repeats` times after `warmup` untimed calls; stops early (after one
    timed call) once `budget_s` seconds have passed."""
    for _ in range(warmup):
        step()
    synchronize(device)
    walls: list[float] = []
    cpu_started = time.process_time()
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        synchronize(device)
        walls.append(time.perf_counter() - started)
        if budget_s is not None and sum(walls) >= budget_s:
            break
    return Timing(statistics.median(walls), (time.process_time() - cpu_started) / len(walls))


def _model(device: torch.device):
    from robust_deepfake.config import ModelConfig
    from robust_deepfake.model.detector import build_detector

    torch.manual_seed(0)
    return build_detector(ModelConfig(), split_at=2).to(device).train()


def _batch(device: torch.device, batch_size: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, 2, (batch_size,), generator=generator)
    return images.to(device), labels.to(device)


def plain_timing(device: torch.device, batch_size: int, image_size: int, repeats: int, channels_last: bool,
                 compiled: bool = False, amp: bool = True) -> tuple[Timing, float | None]:
    """One plain step (timm B0, cross-entropy, backward, the optimizer `fit` uses) and, when
    `compiled`, the seconds of the first (compiling) step."""
    import timm

    from robust_deepfake.config import TrainConfig
    from robust_deepfake.model.device import Amp
    from robust_deepfake.model.training import make_optimizer

    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", num_classes=2).to(device).train()
    images, labels = _batch(device, batch_size, image_size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, TrainConfig(), device)
    scaler = Amp.for_device(device, amp)
    forward = torch.compile(model) if compiled else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with scaler.autocast():
            loss = torch.nn.functional.cross_entropy(forward(images).float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)

    compile_s = None
    if compiled:
        started = time.perf_counter()
        step()
        synchronize(device)
        compile_s = time.perf_counter() - started
    return time_steps(step, repeats, device), compile_s


def step_timings(device: torch.device, batch_size: int, image_size: int, repeats: int, amp: bool = True,
                 budget_s: float | None = None, variants: tuple[str, ...] = STEP_VARIANTS) -> dict[str, Timing]:
    """Each variant's `training_step` + `fit`'s optimizer step on one batch."""
    from robust_deepfake.config import RegConfig, TrainConfig
    from robust_deepfake.model.device import Amp
    from robust_deepfake.model.training import make_optimizer, training_step

    model = _model(device)
    optimizer = make_optimizer(model, TrainConfig(), device)
    criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.2, 0.8], device=device))
    scaler = Amp.for_device(device, amp)
    images, labels = _batch(device, batch_size, image_size)
    perturb = (torch.Generator(device=device) if device.type == "cuda" else torch.Generator()).manual_seed(0)
    regs = {"baseline": None, "reg random": RegConfig(mode="random"), "reg gradient": RegConfig(mode="gradient")}
    timings = {}
    for name in variants:
        def step(reg=regs[name]):
            optimizer.zero_grad(set_to_none=True)
            training_step(model, images, labels, criterion, reg, generator=perturb, amp=scaler)
            scaler.step(optimizer)
        share = None if budget_s is None else budget_s / len(variants)
        timings[name] = time_steps(step, repeats, device, budget_s=share)
    return timings


def step_throughput(device: torch.device, batch_size: int, image_size: int, repeats: int, amp: bool = True,
                    budget_s: float | None = None) -> dict[str, float]:
    """Median seconds per optimizer step of each variant (training_step + AdamW step)."""
    return {name: timing.wall for name, timing in step_timings(device, batch_size, image_size, repeats, amp,
                                                                budget_s).items()}


def loop_timing(train, val, device: torch.device, batch_size: int, steps: int, amp: bool = True) -> dict[str, float]:
    """`fit`'s second epoch over steps * batch_size images: from the first epoch's end of
    validation to its own (checkpoint, batches, steps, validation), in images/s, CPU
    seconds per training step and the share of that epoch spent outside training."""
    from robust_deepfake.config import TrainConfig
    from robust_deepfake.model.training import fit

    config = TrainConfig(epochs=2, batch_size=batch_size, max_train_samples=steps * batch_size, amp=amp,
                         patience=2)
    marks: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(sys.stderr):
        result = fit(_model(device), train, val, config, None, device, show_progress=False,
                     checkpoint=Path(folder) / "last.pt",
                     on_epoch=lambda record: marks.append((time.perf_counter(), time.process_time())))
    (wall_0, cpu_0), (wall_1, cpu_1) = marks
    train_s = result.history[-1]["seconds"]
    return {"img_s": steps * batch_size / (wall_1 - wall_0), "cpu_per_step": (cpu_1 - cpu_0) / steps,
            "outside_training": 1 - train_s / (wall_1 - wall_0)}


def bound_timing(train, device: torch.device, batch_size: int, steps: int, amp: bool = True) -> dict[str, float]:
    """The loop's step alone: `training_step`, optimizer and scheduler as `fit` sets them up,
    on batches already on the device (the loop's upper bound), timed over one pass after
    a few warm-up steps, in images/s and CPU seconds per step."""
    from robust_deepfake.config import TrainConfig
    from robust_deepfake.data.loader import iterate
    from robust_deepfake.model.device import Amp
    from robust_deepfake.model.training import class_weights, make_optimizer, train_subset, training_step

    config = TrainConfig(epochs=2, batch_size=batch_size, max_train_samples=steps * batch_size, amp=amp)
    model = _model(device)
    criterion = torch.nn.CrossEntropyLoss(weight=class_weights(train.labels).to(device))
    scaler = Amp.for_device(device, config.amp)
    optimizer = make_optimizer(model, config, device)
    indices = train_subset(len(train), config, 0)
    batches = [(b.images.to(device), b.labels.to(device))
               for b in iterate(train, batch_size, shuffle=True, seed=0, indices=indices) if len(b.labels) >= 2]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=2 * len(batches),
                                                    pct_start=0.25 if 2 * len(batches) != 4 else 0.3)

    def run(some: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for images, labels in some:
            optimizer.zero_grad(set_to_none=True)
            training_step(model, images, labels, criterion, None, amp=scaler)
            scaler.step(optimizer)
            scheduler.step()

    run(batches[:WARMUP_STEPS])
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    run(batches)
    synchronize(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"img_s": sum(len(labels) for _, labels in batches) / wall, "cpu_per_step": cpu / len(batches)}


def data_sets(splits: Path | None, image_size: int, n_train: int):
    """(train, val, origin): the cached splits when `splits`/train.csv exists, with a
    seeded val subset at the splits' val/train share of `n_train`; else random in-memory
    images at the demo's share."""
    from robust_deepfake.data.dataset import ImageSet

    if splits is not None and (splits / "train.csv").exists():
        from robust_deepfake.data.dataset import load_split

        root = splits.resolve().parents[1]  # the rows are relative to the repo holding data/splits
        train = load_split(splits, "train", image_size, 2048, root)
        full_val = load_split(splits, "val", image_size, 2048, root)
        n_val = max(2, round(len(full_val) * min(n_train, len(train)) / len(train)))
        picked = torch.randperm(len(full_val), generator=torch.Generator().manual_seed(0))[:n_val].sort().values
        val = ImageSet([full_val.samples[i] for i in picked.tolist()], image_size, cache=False)
        val.pixels = full_val.pixels[picked]
        return train, val, f"{splits}/train.csv + {n_val} of val.csv"
    n_val = max(2, round(n_train * DEMO_VAL_SHARE))
    return (in_memory_set(n_train, image_size), in_memory_set(n_val, image_size, seed=1),
            f"random in-memory images, {n_val} val")


def loop_vs_bound(device: torch.device, image_size: int, batch_size: int, steps: int, amp: bool = True,
                  splits: Path | None = None) -> dict:
    """The real loop (validation and checkpoint included) against the model-bound step."""
    train, val, origin = data_sets(splits, image_size, steps * batch_size)
    steps = min(steps, len(train) // batch_size)
    if steps < 1:
        raise SystemExit(f"{origin}: fewer than --batch-size ({batch_size}) images")
    loop = loop_timing(train, val, device, batch_size, steps, amp)
    bound = bound_timing(train, device, batch_size, steps, amp)
    return {"loop": loop["img_s"], "bound": bound["img_s"], "ratio": loop["img_s"] / bound["img_s"],
            "loop_cpu_per_step": loop["cpu_per_step"], "bound_cpu_per_step": bound["cpu_per_step"],
            "outside_training": loop["outside_training"], "steps": steps, "origin": origin}


# --- two 1-thread processes against one 2-thread process ------------------------------


def _worker(go: Path, batch_size: int, image_size: int, steps: int) -> None:
    """The model-bound baseline step, started when `go` exists; prints one JSON line."""
    from robust_deepfake.config import TrainConfig
    from robust_deepfake.model.training import make_optimizer, training_step

    device = torch.device("cpu")
    model = _model(device)
    optimizer = make_optimizer(model, TrainConfig(), device)
    criterion = torch.nn.CrossEntropyLoss()
    images, labels = _batch(device, batch_size, image_size)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        training_step(model, images, labels, criterion, None)
        optimizer.step()

    for _ in range(WARMUP_STEPS):
        step()
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.01)
    started, cpu = time.time(), time.process_time()
    for _ in range(steps):
        step()
    print(json.dumps({"images": steps * batch_size, "start": started, "end": time.time(),
                      "cpu": time.process_time() - cpu}), flush=True)


def processes_at_once(threads: list[int], batch_size: int, image_size: int, steps: int) -> dict[str, float]:
    """Aggregate images/s of one process per entry of `threads` (its torch threads), all
    timed from one start signal after their warm-up; CPU seconds per step per process."""
    with tempfile.TemporaryDirectory() as folder:
        go = Path(folder) / "go"
        workers = []
        for count in threads:
            env = dict(os.environ, OMP_NUM_THREADS=str(count), MKL_NUM_THREADS=str(count))
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.train_step", "--threads", str(count), "--batch-size",
                 str(batch_size), "--image-size", str(image_size), "--steps", str(steps), "--worker", str(go)],
                stdout=subprocess.PIPE, text=True, env=env, cwd=REPO))
        for worker in workers:
            if worker.stdout.readline().strip() != "ready":
                raise SystemExit(f"a benchmark worker failed (exit {worker.wait()})")
        go.touch()
        results = [json.loads(worker.stdout.readline()) for worker in workers]
        for worker in workers:
            worker.wait()
    images = sum(r["images"] for r in results)
    seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"img_s": images / seconds, "cpu_per_step": sum(r["cpu"] for r in results) / (len(threads) * steps)}


# --- the report -----------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def verdict(value: float, target: str) -> str:
    """'PASS' or 'MISSED' for `value` against '>= x' or '<= x'."""
    op, bound = target.split()
    ok = value >= float(bound) if op == ">=" else value <= float(bound)
    return f"(target {target}: {'PASS' if ok else 'MISSED'})"


def _row(name: str, cells: list[str], note: str = "") -> None:
    print(f"{name:40s}" + "".join(f"{cell:>20s}" for cell in cells) + (f"  {note}" if note else ""), flush=True)


def side_by_side(device: torch.device, args: argparse.Namespace, threads: list[int]) -> None:
    """The bare timm rows and our baseline step at each thread count, one column each."""
    batch, size = args.batch_size, args.image_size
    _row("images/s (CPU ms per step)", [f"{count} thread{'s' * (count > 1)}" for count in threads])
    layouts = [("contiguous", False, False), ("channels_last", True, False)]
    if args.compile:
        layouts.append(("channels_last + torch.compile", True, True))
    plain: dict[str, dict[int, Timing]] = {}
    for label, channels_last, compiled in layouts:
        cells, compile_notes = [], []
        for count in threads:
            torch.set_num_threads(count)
            try:
                timing, compile_s = plain_timing(device, batch, size, args.steps, channels_last, compiled, args.amp)
            except Exception as error:  # noqa: BLE001 - reported in the table; the other figures still count
                cells.append("failed")
                compile_notes.append(f"{type(error).__name__}: {str(error).splitlines()[0][:120]}")
                continue
            plain.setdefault(label, {})[count] = timing
            cells.append(timing.cell(batch))
            if compile_s is not None:
                compile_notes.append(f"{compile_s:.0f} s")
        note = f"compiling (first step): {', '.join(compile_notes)}" if compile_notes else ""
        _row(f"bare timm B0, {label}", cells, note)
    if not args.compile:
        _row("bare timm B0, channels_last + torch.compile", ["not run"] * len(threads), COMPILE_NOTE)
    ours = {}
    for count in threads:
        torch.set_num_threads(count)
        ours[count] = step_timings(device, batch, size, args.steps, args.amp, variants=("baseline",))["baseline"]
    best = {count: min((timings[count] for timings in plain.values() if count in timings),
                       key=lambda timing: timing.wall, default=None) for count in threads}
    _row("ours, baseline step", [ours[count].cell(batch) for count in threads],
         "speed of the best bare: " + ", ".join(
             f"{best[count].wall / ours[count].wall:.2f}" for count in threads if best[count] is not None))
    if len(threads) > 1:
        first, last = threads[0], threads[-1]
        print(f"ours, baseline step at {last} threads / {first}: {ours[first].wall / ours[last].wall:.2f}x "
              f"the images/s", flush=True)


def training_figures(device: torch.device, args: argparse.Namespace, count: int) -> None:
    """Reg/baseline step time and the real loop against its bound at `count` threads."""
    torch.set_num_threads(count)
    batch = args.batch_size
    print(f"\nat {count} thread{'s' * (count > 1)} (--train-threads):", flush=True)
    steps = step_timings(device, batch, args.image_size, args.steps, args.amp)
    base = steps["baseline"]
    _row("ours, baseline step", [base.cell(batch)], "(measured again beside the reg steps, on the same model)")
    for name in ("reg random", "reg gradient"):
        ratio = steps[name].wall / base.wall
        _row(f"ours, {name} step", [steps[name].cell(batch)],
             f"{ratio:.2f}x the baseline step's time (CPU {steps[name].cpu / base.cpu:.2f}x) "
             f"{verdict(ratio, '<= 1.5')}")
    result = loop_vs_bound(device, args.image_size, batch, args.loop_steps, args.amp, Path(args.splits))
    _row("ours, model-bound epoch", [f"{result['bound']:6.1f} ({result['bound_cpu_per_step'] * 1000:5.0f})"],
         f"{result['steps']} steps, {result['origin']}")
    _row("real loop (fit, validation included)",
         [f"{result['loop']:6.1f} ({result['loop_cpu_per_step'] * 1000:5.0f})"],
         f"{result['ratio']:.2f} of model-bound {verdict(result['ratio'], '>= 0.9')}; "
         f"outside training: {result['outside_training']:.0%} of the epoch")


def concurrency_figures(args: argparse.Namespace) -> None:
    one = processes_at_once([2], args.batch_size, args.image_size, args.steps)
    two = processes_at_once([1, 1], args.batch_size, args.image_size, args.steps)
    print("\nours, model-bound baseline step in separate processes:", flush=True)
    _row("one 2-thread process", [f"{one['img_s']:6.1f} ({one['cpu_per_step'] * 1000:5.0f})"])
    _row("two 1-thread processes at once", [f"{two['img_s']:6.1f} ({two['cpu_per_step'] * 1000:5.0f})"],
         f"aggregate: {two['img_s'] / one['img_s']:.2f}x the 2-thread process")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_argument(parser, default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per step figure (default: %(default)s)")
    parser.add_argument("--loop-steps", type=int, default=40,
                        help="steps per epoch of the loop and its bound (default: %(default)s, ~ the demo's 43)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="mixed precision as train.amp (CUDA only; default: on, like params.yaml)")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="thread counts side by side (default: 1 2 on the CPU)")
    parser.add_argument("--train-threads", type=int, default=1,
                        help="threads of the reg and loop figures (default: %(default)s, one training of the "
                             "demo's pool)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="also time the bare step under torch.compile (default: off, see COMPILE_NOTE)")
    parser.add_argument("--concurrency", action=argparse.BooleanOptionalAction, default=True,
                        help="on the CPU: two 1-thread processes at once vs one 2-thread process")
    parser.add_argument("--splits", default="data/splits",
                        help="a repo's data/splits for the loop figure (missing: random in-memory images)")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        torch.set_num_threads(args.threads[0])
        _worker(args.worker, args.batch_size, args.image_size, args.steps)
        return
    started = time.perf_counter()
    device = resolve_device(args.device)
    on_cpu = device.type == "cpu"
    threads = args.threads or ([1, 2] if on_cpu else [torch.get_num_threads()])
    where = f"{cpu_model()}, {os.cpu_count()} CPUs" if on_cpu else torch.cuda.get_device_name(device)
    print(f"torch {torch.__version__} on {device} ({where}); batch {args.batch_size}, {args.image_size} px, "
          f"amp {'on' if args.amp and device.type == 'cuda' else 'off'}, {args.steps} timed steps per step figure",
          flush=True)
    print(f"load average before: {os.getloadavg()[0]:.2f}\n", flush=True)
    side_by_side(device, args, threads)
    training_figures(device, args, args.train_threads if on_cpu else threads[0])
    if on_cpu and args.concurrency:
        concurrency_figures(args)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}; {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
