"""Time one training step of the plan's U-Net: stock MONAI DynUNet, nnU-Net's PlainConvUNet
(dynamic-network-architectures, when installed) and autoseg's UNet + loss.

A training step is forward + loss + backward + SGD (Nesterov, lr 1e-2, momentum 0.99), on the
hippocampus ``3d_fullres`` plan by default (batch 7 of 40x56x40, 1 channel, 3 classes). Cases:

* ``stock``: ``monai.networks.nets.DynUNet`` (same plan, same weights layout) whose training
  output upsamples every deep-supervision head to full resolution and stacks them; the loss is
  ``monai.losses.DeepSupervisionLoss(DiceCELoss(...))`` over ``torch.unbind(out, 1)`` with
  nnU-Net's weights (it evaluates every head, the zero-weight one too, all at full resolution);
* ``dna``: nnU-Net's own ``PlainConvUNet`` from ``dynamic-network-architectures`` (conv biases,
  heads at native resolution) with autoseg's loss; only if that package is importable (it is not
  a dependency: ``pip install --no-deps --target DIR dynamic-network-architectures`` and put DIR
  on ``PYTHONPATH``; its U-Nets need only torch);
* ``autoseg``: :func:`autoseg.networks.build_network` (heads at native resolution) and
  :func:`autoseg.training.losses.make_loss` (target downsampled per head; the zero-weight head
  only kept in the graph, its loss not computed).

Each in float32 and under autocast (CPU: bfloat16; CUDA: float16 with a ``GradScaler``), and the
autoseg one also in ``channels_last_3d`` under autocast. Every run of a case is a fresh
subprocess, so that its peak RSS (``getrusage`` max RSS, which includes the interpreter and torch)
is its own; "RSS before" is the RSS after building the model and data, before the first step.
``--repeats N`` runs N rounds over the cases (round-robin) and pools their timed steps; the table
gives the minimum and the median; the minimum shrugs off bursts of other work on shared machines.

Run with the project interpreter::

    /work/main/.venv/bin/python benchmarks/bench_network.py                 # CPU, 2 threads
    /work/main/.venv/bin/python benchmarks/bench_network.py --repeats 3     # steadier on a busy box
    /work/main/.venv/bin/python benchmarks/bench_network.py --device cuda   # GPU machine

The markdown table is printed and written to ``benchmarks/results/network_<device>.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_PLAN = REPO_ROOT / "plans" / "hippocampus" / "plans.json"


@dataclass(frozen=True)
class Case:
    name: str
    variant: str  # "stock" | "dna" | "autoseg"
    amp: bool
    channels_last: bool = False


CASES = (
    Case("stock_fp32", "stock", amp=False),
    Case("stock_amp", "stock", amp=True),
    Case("dna_fp32", "dna", amp=False),
    Case("dna_amp", "dna", amp=True),
    Case("autoseg_fp32", "autoseg", amp=False),
    Case("autoseg_amp", "autoseg", amp=True),
    Case("autoseg_amp_cl", "autoseg", amp=True, channels_last=True),
)


@dataclass
class Result:
    case: str
    step_s: list[float]
    cpu_s: list[float]
    rss_before_mib: float
    peak_rss_mib: float
    peak_gpu_mib: float | None
    loss: float


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _build(case: Case, args: argparse.Namespace):
    """Network, loss and a function taking the stacked/listed outputs for the loss."""
    import torch
    from monai.losses import DeepSupervisionLoss, DiceCELoss
    from monai.networks.nets import DynUNet

    from autoseg.networks import build_network
    from autoseg.planning.plan import Plan
    from autoseg.training.losses import deep_supervision_weights, make_loss

    plan = Plan.load(args.plan)
    config = plan.configuration(args.config)
    in_channels, n_classes = len(plan.channel_names), plan.num_classes
    n_outputs = config.network.n_stages - 1
    if case.variant == "autoseg":
        net = build_network(config, in_channels=in_channels, n_classes=n_classes)
        loss = make_loss("dice_ce", n_outputs=n_outputs, batch_dice=config.batch_dice)
        return plan, config, net, lambda out, y: loss(out, y)
    if case.variant == "dna":
        from dynamic_network_architectures.architectures.unet import PlainConvUNet
        from torch import nn

        dims = 3 if config.kind == "3d" else 2
        net = PlainConvUNet(
            in_channels * (config.in_slices if config.kind == "2.5d" else 1),
            config.network.n_stages,
            list(config.network.features_per_stage),
            nn.Conv3d if dims == 3 else nn.Conv2d,
            [list(k) for k in config.network.kernel_sizes],
            [list(s) for s in config.network.strides],
            2,
            n_classes,
            2,
            conv_bias=True,
            norm_op=nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d,
            norm_op_kwargs={"eps": 1e-5, "affine": True},
            nonlin=nn.LeakyReLU,
            nonlin_kwargs={"inplace": True},
            deep_supervision=True,
        )
        net.in_channels = in_channels
        loss = make_loss("dice_ce", n_outputs=n_outputs, batch_dice=config.batch_dice)
        return plan, config, net, lambda out, y: loss(out, y)
    net_cfg = config.network
    strides = [list(s) for s in net_cfg.strides]
    net = DynUNet(
        spatial_dims=3 if config.kind == "3d" else 2,
        in_channels=in_channels * (config.in_slices if config.kind == "2.5d" else 1),
        out_channels=n_classes,
        kernel_size=[list(k) for k in net_cfg.kernel_sizes],
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=list(net_cfg.features_per_stage),
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=True,
        deep_supr_num=net_cfg.n_stages - 2,
    )
    base = DiceCELoss(
        include_background=False,
        to_onehot_y=True,
        softmax=True,
        batch=config.batch_dice,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
    )
    loss = DeepSupervisionLoss(base, weights=list(deep_supervision_weights(n_outputs)))
    return plan, config, net, lambda out, y: loss(list(torch.unbind(out, dim=1)), y)


def run_case(case: Case, args: argparse.Namespace) -> Result:
    """Time ``args.warmup`` + ``args.steps`` training steps of one case in this process."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    plan, config, net, loss_fn = _build(case, args)
    net = net.to(device).train()
    batch = args.batch or config.batch_size
    channels = net.in_channels
    x = torch.randn(batch, channels, *config.patch_size, device=device)
    y = torch.randint(0, plan.num_classes, (batch, 1, *config.patch_size), device=device)
    if case.channels_last:
        memory_format = torch.channels_last_3d if x.ndim == 5 else torch.channels_last
        net = net.to(memory_format=memory_format)
        x = x.contiguous(memory_format=memory_format)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    cuda = device.type == "cuda"
    amp_dtype = torch.float16 if cuda else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=case.amp) if cuda else None

    def autocast():
        if not case.amp:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    rss_before = _current_rss_mib()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times, value = [], [], float("nan")
    for i in range(args.warmup + args.steps):
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            out = net(x)
            loss = loss_fn(out, y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        value = loss.item()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        del out, loss
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return Result(case.name, times, cpu_times, rss_before, _max_rss_mib(), peak_gpu, value)


def _describe(case: Case, device: str) -> str:
    if case.variant == "stock":
        model = "MONAI DynUNet, stacked upsampled heads + MONAI DeepSupervisionLoss"
    elif case.variant == "dna":
        model = "nnU-Net PlainConvUNet (dynamic-network-architectures), native-res heads + autoseg loss"
    else:
        model = "autoseg UNet, native-res heads + autoseg loss"
    amp = "fp16 autocast + GradScaler" if device == "cuda" else "bf16 autocast"
    precision = amp if case.amp else "float32"
    return f"{model}; {precision}" + ("; channels_last_3d" if case.channels_last else "")


def _table(results: list[Result], args: argparse.Namespace) -> str:
    import torch

    cuda = args.device == "cuda"
    lines = [
        f"## network: one training step, {args.config} of {args.plan.parent.name} ({args.device})",
        "",
        f"- batch {args.batch or 'from plan'}, forward + Dice/CE loss + backward + SGD (Nesterov, lr 1e-2, "
        f"momentum 0.99); {args.warmup} warm-up + {args.steps} timed steps per run, each run a fresh "
        f"process, {args.repeats} round(s) over the cases",
        f"- torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
        f"python {platform.python_version()}",
        "- s/step: wall time, min (median) of the timed steps of all rounds (the min is the best estimate "
        "when other work shares the cores); CPU s/step: process CPU "
        "time (all threads), median, steadier than wall time when other work shares the cores; "
        "RSS before: after building model and data; peak RSS: max RSS of the process "
        "(interpreter and torch included)",
        "",
    ]
    head = "| case | setting | s/step | CPU s/step | RSS before MiB | peak RSS MiB |"
    head += " peak GPU MiB |" if cuda else ""
    lines += [head, "| --- | --- | ---: | ---: | ---: | ---: |" + (" ---: |" if cuda else "")]
    by_name = {c.name: c for c in CASES}
    for r in results:
        row = (
            f"| {r.case} | {_describe(by_name[r.case], args.device)} | "
            f"{min(r.step_s):.2f} ({statistics.median(r.step_s):.2f}) | "
            f"{statistics.median(r.cpu_s):.2f} | "
            f"{r.rss_before_mib:.0f} | "
            f"{r.peak_rss_mib:.0f} |"
        )
        if cuda:
            row += f" {r.peak_gpu_mib:.0f} |"
        lines.append(row)
    base = {r.case: min(r.step_s) for r in results}
    if "stock_fp32" in base:
        lines += [
            "",
            "Speed-up over stock float32 (min s/step): "
            + ", ".join(
                f"{name} {base['stock_fp32'] / t:.2f}x" for name, t in base.items() if name != "stock_fp32"
            ),
        ]
    return "\n".join(lines) + "\n"


def _heads_and_loss(args: argparse.Namespace, repeats: int = 10) -> str:
    """The part that differs: stock upsample + stack + loss at full res vs loss at native res.

    Measured in-process on random head logits of the plan's shapes, forward + backward of the loss
    only (the network is left out), so the small difference is not lost in the step's noise.
    """
    import torch
    import torch.nn.functional as F
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    from autoseg.networks import input_divisor
    from autoseg.planning.plan import Plan
    from autoseg.training.losses import deep_supervision_weights, make_loss

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    plan = Plan.load(args.plan)
    config = plan.configuration(args.config)
    n_outputs, n_classes = config.network.n_stages - 1, plan.num_classes
    batch = args.batch or config.batch_size
    full = tuple(config.patch_size)
    heads = []
    for i in range(n_outputs):
        div = input_divisor(config.network.strides[: i + 1])
        size = tuple(p // d for p, d in zip(full, div, strict=True))
        heads.append(torch.randn(batch, n_classes, *size, device=device, requires_grad=True))
    y = torch.randint(0, n_classes, (batch, 1, *full), device=device)
    ours = make_loss("dice_ce", n_outputs=n_outputs, batch_dice=config.batch_dice)
    base = DiceCELoss(
        include_background=False,
        to_onehot_y=True,
        softmax=True,
        batch=config.batch_dice,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
    )
    stock = DeepSupervisionLoss(base, weights=list(deep_supervision_weights(n_outputs)))

    def stock_step() -> None:
        stacked = torch.stack([heads[0], *(F.interpolate(h, size=full) for h in heads[1:])], dim=1)
        stock(list(torch.unbind(stacked, dim=1)), y).backward()

    def ours_step() -> None:
        ours(heads, y).backward()

    rows = []
    for name, fn in (
        ("stock: upsample + stack + DeepSupervisionLoss", stock_step),
        ("autoseg: native-res heads + make_loss", ours_step),
    ):
        for _ in range(2):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rows.append(f"| {name} | {1000 * (time.perf_counter() - start) / repeats:.1f} |")
    return "\n".join(
        [
            "",
            f"### heads + loss only (forward + backward, float32, batch {batch}, {n_outputs} outputs, "
            f"{n_classes} classes; mean of {repeats})",
            "",
            "| part | ms |",
            "| --- | ---: |",
            *rows,
            "",
        ]
    )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--plan", type=Path, default=DEFAULT_PLAN)
    parser.add_argument("--config", default="3d_fullres")
    parser.add_argument("--batch", type=int, default=0, help="0: the plan's batch size")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds over all cases (round-robin); the timed steps of all rounds are pooled",
    )
    parser.add_argument("--only", nargs="*", choices=[c.name for c in CASES], help="run only these cases")
    parser.add_argument(
        "--out", type=Path, default=None, help="default: benchmarks/results/network_<device>.md"
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.case:
        case = next(c for c in CASES if c.name == args.case)
        print(json.dumps(asdict(run_case(case, args))))
        return 0
    raw = list(argv if argv is not None else sys.argv[1:])
    cases = [c for c in CASES if not args.only or c.name in args.only]
    if importlib.util.find_spec("dynamic_network_architectures") is None:
        skipped = [c.name for c in cases if c.variant == "dna"]
        cases = [c for c in cases if c.variant != "dna"]
        if skipped:
            print(f"dynamic-network-architectures not importable: {skipped} skipped", file=sys.stderr)
    pooled: dict[str, Result] = {}
    for round_ in range(args.repeats):  # round-robin, so a burst of other load hits one run, not one case
        for case in cases:
            cmd = [sys.executable, __file__, *_strip_only(raw), "--case", case.name]
            print(f"round {round_ + 1}/{args.repeats}: {case.name} ...", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            result = Result(**json.loads(proc.stdout.strip().splitlines()[-1]))
            print(
                f"  {statistics.median(result.step_s):.2f} s/step, peak RSS {result.peak_rss_mib:.0f} MiB, "
                f"loss {result.loss:.3f}",
                file=sys.stderr,
                flush=True,
            )
            pooled[case.name] = _merge(pooled.get(case.name), result)
    results = list(pooled.values())
    table = _table(results, args) + _heads_and_loss(args)
    print(table)
    out = args.out or BENCH_DIR / "results" / f"network_{args.device}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table, encoding="utf-8")
    return 0


def _merge(a: Result | None, b: Result) -> Result:
    """Pool the timed steps of two runs of one case; memory is the worst of the two."""
    if a is None:
        return b
    gpu = None if a.peak_gpu_mib is None else max(a.peak_gpu_mib, b.peak_gpu_mib or 0.0)
    return Result(
        a.case,
        a.step_s + b.step_s,
        a.cpu_s + b.cpu_s,
        max(a.rss_before_mib, b.rss_before_mib),
        max(a.peak_rss_mib, b.peak_rss_mib),
        gpu,
        b.loss,
    )


def _strip_only(argv: list[str]) -> list[str]:
    """``argv`` without ``--only`` and its values (they name cases; each child runs one)."""
    kept, skipping = [], False
    for a in argv:
        if a.startswith("--only="):
            continue
        if a == "--only":
            skipping = True
            continue
        if skipping and not a.startswith("--"):
            continue
        skipping = False
        kept.append(a)
    return kept


if __name__ == "__main__":
    sys.exit(main())
