"""``BENCHMARKS.md`` from the benchmark record: every figure with its method.

Sections follow the record (``avbert.bench.report``): the targets, then the
CPU comparisons, the optimizer state under ZeRO, the memory planner and the
GPU rows. Explanations of what limits a figure are written from the figures
themselves, so they stay true when the numbers change.
"""

from __future__ import annotations

from avbert.planning.memory import format_bytes

NOT_MEASURED = "not measured (no GPU)"


def _met(flag) -> str:
    return {True: "met", False: "not met", None: "not measured"}[flag]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rerun_line(rerun: dict) -> str:
    env, load, threads = rerun["environment"], rerun.get("load_average") or {}, rerun.get("threads") or {}
    return (f"- rerun {env['date']}, commit `{env['git_commit']}`: sections {', '.join(rerun['sections'])} "
            f"({rerun['duration_s'] / 60:.1f} min, load at start {load.get('start')}, torch threads "
            f"{threads.get('count')}); their figures below are from this rerun, the other sections' from the run above")


def header(results: dict) -> str:
    env = results["environment"]
    m, v = env["machine"], env["versions"]
    load = results.get("load_average", {})
    reruns = [rerun_line(rerun) for rerun in results.get("reruns", [])]
    return "\n".join([
        "# Benchmarks",
        "",
        "Written by `python tools/bench.py` (do not edit by hand; the same figures are in "
        "`benchmarks/results.json`).",
        "",
        f"- date: {env['date']}, commit `{env['git_commit']}`",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"GPU: {m['gpu'] or 'none'}; {m['platform']}",
        f"- versions: Python {v['python']}, torch {v['torch']} (CUDA {v['cuda']}), DeepSpeed {v['deepspeed']}, "
        f"NumPy {v['numpy']}",
        f"- load average (1, 5, 15 min) at start {load.get('start')}, at end {load.get('end')}: other processes "
        "shared the CPU when this is above the core count, which is why every comparison is interleaved and "
        "reported as a median of per-repeat ratios",
        f"- torch threads for the CPU sections: {results.get('threads', {}).get('count')} "
        f"({results.get('threads', {}).get('reason')})",
        f"- run time: {results['duration_s'] / 60:.1f} min; sections: {', '.join(results['sections'])}",
        *reruns,
    ])


def targets_section(results: dict) -> str:
    rows = [[t["target"], t["where"], t["figure"], _met(t["met"])] for t in results["targets"]]
    return "## Targets\n\n" + table(["target", "where", "figure reached", "status"], rows)


def comparison_rows(cmp: dict) -> list[list]:
    b, c = cmp["baseline"], cmp["candidate"]
    return [[b["name"], _ms(b["median_s"]), "1.00x", ""],
            [c["name"], _ms(c["median_s"]), f"{cmp['ratio']:.2f}x",
             f"{cmp['round_ratio_min']:.2f}-{cmp['round_ratio_max']:.2f}x over {cmp['repeats']} repeats"]]


def layer_limits(layer: dict) -> str:
    cmp, br = layer["comparison"], layer["breakdown"]
    shape = layer["shape"]
    lowrank_step = cmp["candidate"]["median_s"]
    mexp = br["lowrank"]["matrix_exp_s"]
    param_ratio = br["lowrank"]["parameters"] / br["all"]["parameters"]
    verdict = "Met." if cmp["met"] else "Not met on this CPU."
    return (
        f"{verdict} The lowrank layer does {br['flops_ratio']:.0%} of the dense layer's FLOPs "
        f"({br['lowrank']['flops_forward_backward'] / 1e9:.2f} against {br['all']['flops_forward_backward'] / 1e9:.2f}"
        f" GFLOP forward + backward) and AdamW updates {param_ratio:.0%} of its parameters; its step takes "
        f"{cmp['ratio']:.2f}x the dense step. What keeps it above the FLOP ratio: (1) every call evaluates six "
        f"{shape['rank']}x{shape['rank']} matrix exponentials `exp(A - A^T)` forward and backward (a series of "
        f"small matmuls each; the backward, an exponential of a {2 * shape['rank']}x{2 * shape['rank']} block "
        f"matrix, dominates): {_ms(mexp)} here, the layer's own six `S` timed alone in the same rounds, "
        f"{mexp / lowrank_step:.0%} of the lowrank step, a cost that does not shrink with the batch (in the "
        f"full model a Transformer computes each `S` once per pass and reuses it at all L = 6 applications of "
        f"its cross-layer-shared layer, so there it is paid once, not six times); (2) each map is three "
        f"matmuls (V, S, U) plus an L2 normalisation instead of one, on only {shape['batch'] * shape['tokens']} tokens, so the small "
        f"[tokens x {shape['rank']}] products run far below the CPU's matmul peak and the time follows the "
        f"number of kernels more than the FLOPs."
    )


def layer_section(layer: dict) -> str:
    shape = layer["shape"]
    plan = layer["timing_plan"]
    method = (
        f"Method: one `TransformerLayer` built from `build_maps(['multimodal'], sharing, ...)` with sharing "
        f"`all` (dense maps, the XL + All layer) or `lowrank` (XL + Part, rank {shape['rank']}); width "
        f"{shape['width']}, FFN {shape['ffn']}, {shape['heads']} heads, input [batch {shape['batch']}, "
        f"{shape['tokens']} tokens (2 + 2T, T = {shape['clips']}), {shape['width']}], fp32, dropout "
        f"{shape['dropout']}. One step = forward, backward of a squared-mean loss, torch AdamW step. "
        f"{plan['warmup']} warm-up steps each, then {plan['repeats']} repeats alternating dense/lowrank order; "
        f"figure = median of the per-repeat ratios. FLOPs by `FlopCounterMode`."
    )
    return "\n\n".join([
        "### Shared Transformer layer: lowrank against dense", method,
        table(["layer", "median step", "ratio", "spread of per-repeat ratios"], comparison_rows(layer["comparison"])),
        layer_limits(layer),
    ])


def attention_section(att: dict) -> str:
    s = att["shape"]
    cmp = att["comparison"]
    method = (
        f"Method: q, k, v of shape [{s['batch']}, {s['heads']}, {s['tokens']}, {s['head_width']}] with the model's "
        f"boolean keep mask; `F.scaled_dot_product_attention` against `softmax(q k^T / sqrt(d) masked) v` in three "
        f"tensor ops; forward + backward of the sum, fp32, no dropout, {att['timing_plan']['inner']} calls per "
        f"sample, {cmp['repeats']} interleaved repeats. Largest difference of the outputs: "
        f"{att['max_abs_difference']:.1e}."
    )
    note = (
        f"At {s['tokens']} tokens each head's score matrix is only {s['tokens']}x{s['tokens']}, so the "
        f"[{s['batch']}, {s['heads']}, {s['tokens']}, {s['tokens']}] intermediates that the plain version writes "
        f"and reads back are small and fused attention gains little ({cmp['ratio']:.2f}x); SDPA's advantage, "
        f"never materialising the S x S scores, grows with the sequence length, which this model keeps short "
        f"(one token per clip)."
    )
    return "\n\n".join(["### Attention kernel", method,
                        table(["kernel", "median call", "ratio", "spread of per-repeat ratios"], comparison_rows(cmp)),
                        note])


def tiny_step_section(step: dict) -> str:
    cmp = step["comparison"]
    method = (
        f"Method: the tiny preset's pretrainer (CNNs, masking, three Transformers, MEP with CANS-Similar "
        f"negatives, CPP), batch {step['batch']} x {step['clips']} clips of {step['frames']} frames at "
        f"{step['crop']}x{step['crop']}, {step['precision']}, on synthetic tensors; forward + backward + torch AdamW, "
        f"{cmp['repeats']} interleaved repeats of the plain step and the step with activation checkpointing "
        f"(every CNN stage and Transformer layer recomputed)."
    )
    figures = (
        f"Plain step: {_ms(step['step_s'])}, {step['clips_per_s']:.0f} clips/s, "
        f"{step['flops_per_step'] / 1e9:.2f} GFLOP (model forward + backward, counted). Checkpointing costs "
        f"{cmp['ratio']:.2f}x the time."
    )
    return "\n\n".join(["### Tiny model pretraining step", method,
                        table(["step", "median", "ratio", "spread of per-repeat ratios"], comparison_rows(cmp)),
                        figures])


def zero_section(zero: dict) -> str:
    rank0 = zero["per_rank"]["0"]
    rows = []
    for key, cell in rank0.items():
        rows.append([key, format_bytes(cell["moments"]), format_bytes(cell["master"]),
                     format_bytes(cell["optimizer_state"]), format_bytes(cell["step_peak"])])
    ratios = [[p, f"{r['moments']:.3f}x", f"{r['optimizer_state']:.3f}x", _met(r["met"]), _met(r["met_with_master"])]
              for p, r in zero["ratios"].items()]
    method = (
        f"Method: {zero['world_size']} processes (gloo, `torch.multiprocessing`), each wrapping the tiny pretrainer "
        "with the training engine's `initialize_engine` (the suite's DeepSpeed config, torch AdamW) at ZeRO stage "
        "0 and 2, in both precisions; after one training step each rank counts the bytes of the tensors in the "
        "torch optimizer's state (Adam `exp_avg`, `exp_avg_sq`, step) and of the tensors it steps that are not the "
        "module's parameters (ZeRO's fp32 master partition). Tensor bytes, not RSS. `step peak` is the CPU "
        "allocator's peak above the start of a second step (profiler allocation events)."
    )
    note = (
        "Adam's moments are exactly halved by ZeRO-2 on 2 ranks (up to flat-buffer padding). Counting the master "
        "weights too, ZeRO-2 holds 3/4 of stage 0, not 1/2: the engine's `bf16` is DeepSpeed's `torch_autocast` "
        "(fp32 weights), so stage 0 steps the module's own fp32 weights while ZeRO-1/2 clone an fp32 partition "
        "(4P/N bytes) to step. The step peak shows a further cost: ZeRO-1/2 allocate gradient-reduction buckets "
        "of `reduce_bucket_size` elements in the weights' dtype, one per communication dtype (bf16 for "
        "Linear/Conv gradients under autocast, fp32 for the rest), whatever the model size. The suite sets 5e7 "
        "(`avbert/train/ds_config.py`), which still holds all of the paper model's gradients of one dtype: "
        "200 MB per rank in fp32 and 400 MB under bf16, against 2 GB and 4 GB at DeepSpeed's default 5e8. "
        "The planner counts these buckets."
    )
    return "\n\n".join(["### Optimizer state per rank: ZeRO-2 against stage 0", method,
                        table(["precision/stage", "Adam moments", "fp32 master", "optimizer state", "step peak"], rows),
                        table(["precision", "ZeRO-2 / stage 0: moments", "with master", "1/2: moments",
                               "1/2: with master"], ratios),
                        note])


def planner_section(planner: dict, gpu: dict) -> str:
    rows = [[name, row["batch"], format_bytes(row["predicted_bytes"]), format_bytes(row["measured_bytes"]),
             f"{row['relative_error']:+.1%}", _met(row["within_tolerance"])]
            for name, row in planner["cpu_tiny"].items()]
    method = (
        "Method (`avbert/planning/`): model states by ZeRO stage, world size and precision from what DeepSpeed "
        "allocates for the engine's config (table in `avbert/planning/memory.py`), DeepSpeed's reduction buckets, "
        "the batch tensors, and activations counted exactly: the model runs forward under `FakeTensorMode` on a "
        "fake CUDA device (no data, no GPU) in the training precision (CUDA autocast for bf16) while a "
        "`saved_tensors_hooks` hook records every tensor autograd keeps; with checkpointing, forward hooks tag "
        "saved tensors by CNN stage / Transformer layer so that only unit inputs plus the largest unit count. Two "
        "batch sizes give fixed + per-sample bytes. The MEP heads are added analytically (<0.1% at paper scale). "
        "Validation on CPU: a plain torch AdamW loop (what DeepSpeed runs at stage 0 in fp32) on the tiny preset, "
        "3 steps in a fresh subprocess; measured = the peak of the c10 CPU allocator's running total of allocated "
        "bytes, read from the profiler's allocation events (`profile_memory=True`), the CPU counterpart of "
        "`torch.cuda.max_memory_allocated`. Tolerance "
        f"{planner['tolerance']:.0%}."
    )
    parts = ["### Memory planner", method,
             table(["tiny step", "batch", "predicted", "measured", "error", "within 15%"], rows)]
    rss = planner.get("cpu_rss")
    if rss:
        parts.append(
            "Cross-check without the profiler: in a fresh subprocess, after a warm-up step, Linux's peak-RSS "
            "counter is reset (`/proc/self/clear_refs`) and the peak over two more steps minus the RSS before them "
            "is what a step adds (glibc's mmap threshold fixed at 64 KiB so that freed tensors leave the RSS); the "
            "planner's figure for it is the activations, plus the gradients under checkpointing.\n\n"
            + table(["tiny step", "batch", "predicted", "RSS added", "error"],
                    [[name, row["batch"], format_bytes(row["predicted_bytes"]), format_bytes(row["measured_bytes"]),
                      f"{row['relative_error']:+.1%}"] for name, row in rss.items()]))
    parts.append(paper_plan_table(planner["paper_80GB"]))
    if gpu.get("available"):
        parts.append(gpu_planner_table(gpu["planner"]))
    else:
        parts.append(f"Paper scale against a measured GPU peak: {NOT_MEASURED}.")
    return "\n\n".join(parts)


def paper_plan_table(cells: dict) -> str:
    rows = [[key, format_bytes(p["weights"] + p["gradients"] + p["optimizer"]), format_bytes(p["zero_buffers"]),
             format_bytes(p["activations"]), format_bytes(p["peak"]), p["batch_size"], p["max_batch"]]
            for key, p in cells.items()]
    return ("Planner predictions at paper scale (bf16, 10 clips of 32x112x112 frames and 80x128 log-mel, 1 GPU of "
            "80 GB, per-GPU batch 8; predictions, not measurements):\n\n"
            + table(["ZeRO/checkpointing", "model states", "ZeRO buckets", "activations", "peak", "batch",
                     "largest batch"], rows))


def gpu_planner_table(checks: dict) -> str:
    rows = [[name, format_bytes(c["predicted_bytes"]),
             format_bytes(c["measured_bytes"]) if c["measured_bytes"] else "-",
             f"{c['predicted_over_measured'] - 1:+.1%}" if c["predicted_over_measured"] else "-"]
            for name, c in checks.items()]
    return "Paper scale on the GPU (predicted vs `torch.cuda.max_memory_allocated`):\n\n" + table(
        ["variant", "predicted", "measured", "error"], rows)


GPU_VARIANTS = ("baseline", "channels_last_3d", "compile", "activation_checkpointing", "all_three")


def gpu_section(gpu: dict) -> str:
    offline = gpu["offline"]
    method = (
        "Method: the `paper` model and data presets (3D ResNet-50 on 32x112x112 frames, 2D ResNet-50 on 80x128 "
        "log-mel, T = 10 clips, mid fusion, lowrank sharing) and the full pretraining objective under bf16 "
        "autocast, on synthetic tensors resident on the GPU; fused torch AdamW; the batch is the planner's largest "
        "for the card (x0.8), halved on OOM. Variants are timed interleaved, all resident at once; a variant's peak "
        "memory is its own resident bytes plus the `torch.cuda.max_memory_allocated` its step adds above "
        "everything resident, i.e. the peak it would reach alone. MFU = counted model FLOPs (`FlopCounterMode` on the "
        "meta device, forward + backward, no recomputation) / step time / the card's dense bf16 peak (H100 SXM "
        "and H200 989 TFLOPS, H100 PCIe 756, A100 312; table in `avbert/bench/gpu.py`)."
    )
    counted = (
        f"Counted without a GPU: {offline['flops_per_video'] / 1e12:.2f} TFLOP per video (10 clips) per "
        f"forward + backward, so {offline['mfu_target']:.0%} MFU on an H100 SXM means "
        f"{offline['videos_per_s_at_target']:.0f} videos ({offline['clips_per_s_at_target']:.0f} clips) per second."
    )
    if not gpu.get("available"):
        rows = [[name] + [NOT_MEASURED] * 4 for name in GPU_VARIANTS]
    else:
        rows = [gpu_row(name, gpu["variants"].get(name, {"error": "not run"})) for name in GPU_VARIANTS]
    title = f"### Paper-scale pretraining step on {gpu.get('device', 'a GPU')}"
    batch = f"Batch {gpu['batch']} per GPU." if gpu.get("available") else ""
    return "\n\n".join(x for x in [title, method, batch, table(
        ["variant", "step time", "clips/s", "peak memory", "MFU"], rows), counted] if x)


def gpu_row(name: str, row: dict) -> list:
    if "error" in row:
        return [name, row["error"], "-", "-", "-"]
    mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "no peak for this GPU"
    peak = format_bytes(row["peak_memory_bytes"]) if row["peak_memory_bytes"] else "-"
    relative = row.get("time_vs_baseline")
    label = f"{name} ({relative:.2f}x baseline time)" if relative is not None else name
    return [label, _ms(row["step_s"]),
            f"{row['clips_per_s']:.0f}", peak, mfu]


def render(results: dict) -> str:
    """The whole BENCHMARKS.md."""
    cpu, gpu = results.get("cpu", {}), results.get("gpu", {"available": False, "offline": None})
    parts = [header(results), targets_section(results), "## CPU"]
    for key, section in (("layer", layer_section), ("attention", attention_section),
                         ("tiny_step", tiny_step_section), ("zero", zero_section)):
        if key in cpu:
            parts.append(section(cpu[key]))
    if "planner" in cpu:
        parts.append(planner_section(cpu["planner"], gpu))
    if gpu.get("offline"):
        parts.extend(["## GPU", gpu_section(gpu)])
    parts.append(reproduce())
    return "\n\n".join(parts) + "\n"


def reproduce() -> str:
    return ("## Reproduce\n\n```bash\n.venv/bin/python tools/bench.py             # all sections, writes both files\n"
            ".venv/bin/python tools/bench.py --only layer attention --repeats 9\n"
            ".venv/bin/python tools/bench.py --only planner gpu --merge   # rerun some sections, keep the others\n"
            ".venv/bin/python tools/plan.py none model.preset=paper data.preset=paper --gpu-memory 80GB\n```\n\n"
            "On a CUDA machine the GPU section runs too.")
