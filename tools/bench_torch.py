#!/usr/bin/env python3
"""The PyTorch peer of `cargo run --release -p experiments --bin bench`.

Builds the same LLaVA-1.5 architecture with Hugging Face transformers (CLIP vision tower read at
layer -2 without the class token, `mlp2x_gelu` projector, LLaMA decoder, untied head) at the
sizes of tools/bench_presets.json, and times the same work with the same thread count:

  train_mle             model(input_ids, pixel_values, labels) + backward + AdamW (ε 1e-8, no weight
                        decay, each parameter's gradient clipped to norm 1, as vlalign-train)
  train_cal             CAL as the official code computes it: the LLM runs twice on the spliced
                        embeddings, the second time without gradient and with the image keys
                        masked; Δ = z_img[y] − z_txt[y] on raw logits, clamp [1, 5], avg-pool 3 over
                        the flattened batch, weighted CE
  forward               a no-grad forward of the full batch
  contrast_text_only    vlalign's CAL contrast: only the text tokens, original position ids
  contrast_masked_full  the reference's CAL contrast: the full sequence, image keys masked
  vig_score             real and blurred images in one batched no-grad forward (per-token VIG)
  gen_bN                greedy `generate` with the KV cache, N prompts, fixed length

Install:              pip install torch transformers
                      (PyPI's Linux torch wheel bundles the CUDA libraries, ~3 GB, and runs on
                      the CPU; where download.pytorch.org is reachable,
                      pip install torch --index-url https://download.pytorch.org/whl/cpu
                      gets the ~200 MB CPU-only build of the same version instead)
Run:                  python3 tools/bench_torch.py [--preset tiny,small] [--threads 2] [--out F]
"""

import argparse
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


def presets():
    with open(os.path.join(HERE, "bench_presets.json")) as f:
        return json.load(f)["presets"]


def reset_peak_rss():
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # as the vlalign side: each row's peak is its own
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def build(p):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=p["vision_width"], intermediate_size=p["vision_intermediate"],
        num_hidden_layers=p["vision_layers"], num_attention_heads=p["vision_heads"],
        image_size=p["image_size"], patch_size=p["patch_size"], hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    text = LlamaConfig(
        vocab_size=p["vocab"], hidden_size=p["width"], intermediate_size=p["intermediate"],
        num_hidden_layers=p["layers"], num_attention_heads=p["heads"],
        num_key_value_heads=p["kv_heads"], max_position_embeddings=4096, rms_norm_eps=1e-6,
        rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        pad_token_id=0,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=p["vocab"] - 1,
        projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    return LlavaForConditionalGeneration(config)


def param_counts(model):
    count = lambda m: sum(t.numel() for t in m.parameters())
    inner = model.model
    vision = count(inner.vision_tower)
    projector = count(inner.multi_modal_projector)
    language = count(inner.language_model) + count(model.lm_head)
    return {"vision": vision, "projector": projector, "language": language,
            "total": vision + projector + language}


def image_tokens(p):
    return (p["image_size"] // p["patch_size"]) ** 2


def training_batch(p, gen):
    b, t, slots = p["batch"], p["seq"], image_tokens(p)
    image = p["vocab"] - 1
    ids = torch.randint(3, image, (b, t), generator=gen)
    ids[:, 0] = 1
    ids[:, 5:5 + slots] = image
    labels = torch.full_like(ids, -100)
    labels[:, t - p["answer_tokens"]:] = ids[:, t - p["answer_tokens"]:]
    pixels = torch.randn(b, 3, p["image_size"], p["image_size"], generator=gen)
    return ids, labels, pixels


def measure_interleaved(p, jobs):
    """jobs: [(name, work, unit, fn)], timed warmup + iters times each, one iteration of each per
    round (as the vlalign side), so a drifting machine affects them alike."""
    can_reset = reset_peak_rss()
    for _ in range(p["warmup"]):
        for job in jobs:
            job[3]()
    times = [[] for _ in jobs]
    for _ in range(p["iters"]):
        for job, t in zip(jobs, times):
            start = time.perf_counter()
            job[3]()
            t.append((time.perf_counter() - start) * 1e3)
    peak = peak_rss_mib() if can_reset else None
    rows = []
    for (name, work, unit, _), t in zip(jobs, times):
        median = statistics.median(t)
        rows.append({"name": name, "median_ms": median, "min_ms": min(t),
                     "per_s": work / (median / 1e3), "unit": unit, "peak_rss_mib": peak})
    return rows


def measure(name, p, work, unit, fn):
    return measure_interleaved(p, [(name, work, unit, fn)])[0]


def spliced(model, ids, pixels):
    """Token embeddings with the image slots filled by projected image features."""
    inner = model.model
    embeds = inner.get_input_embeddings()(ids)
    feats = inner.get_image_features(
        pixel_values=pixels, vision_feature_layer=-2, vision_feature_select_strategy="default")
    feats = getattr(feats, "pooler_output", feats)
    if isinstance(feats, (list, tuple)):
        feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats], 0)
    slots = (ids == model.config.image_token_index).unsqueeze(-1).expand_as(embeds)
    return embeds.masked_scatter(slots, feats.to(embeds.dtype))


def lm_logits(model, embeds, positions, mask=None):
    out = model.model.language_model(
        inputs_embeds=embeds, position_ids=positions, attention_mask=mask, use_cache=False)
    return model.lm_head(out.last_hidden_state)


def cal_loss(model, ids, labels, pixels, alpha=1.0, beta=5.0, window=3):
    b, t = ids.shape
    positions = torch.arange(t).unsqueeze(0).expand(b, t)
    embeds = spliced(model, ids, pixels)
    logits = lm_logits(model, embeds, positions)
    with torch.no_grad():
        keys = (ids != model.config.image_token_index).long()
        txt = lm_logits(model, embeds.detach(), positions, keys)
    shift_logits, target = logits[:, :-1], labels[:, 1:]
    valid = target != -100
    safe = target.clamp(min=0).unsqueeze(-1)
    with torch.no_grad():
        delta = (shift_logits.detach().gather(-1, safe) - txt[:, :-1].gather(-1, safe)).squeeze(-1)
        delta = torch.where(valid, delta, torch.zeros_like(delta)).clamp(alpha, beta)
        w = F.avg_pool1d(delta.reshape(1, 1, -1), window, 1, window // 2,
                         count_include_pad=False).reshape(b, t - 1)
        w = w * valid
    ce = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), safe.reshape(-1),
                         reduction="none").reshape(b, t - 1)
    return (ce * w).sum() / (w.sum() + 1e-6)


def blur(images, sigma):
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-x * x / (2 * sigma * sigma))
    k = k / k.sum()
    c = images.shape[1]
    pad = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(pad, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def run_preset(p, log):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = build(p)
    params = param_counts(model)
    ids, labels, pixels = training_batch(p, gen)
    b, t = ids.shape
    tokens = b * t
    rows = []

    def trainer(m, loss_fn):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
                                weight_decay=0.0)
        params_list = [q for q in m.parameters() if q.requires_grad]

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            for q in params_list:  # vlalign-train clips each parameter tensor to norm 1
                torch.nn.utils.clip_grad_norm_([q], 1.0)
            opt.step()
            return loss.item()
        return step

    # Two copies from the same weights, one per objective, their steps interleaved.
    import copy
    cal_model = copy.deepcopy(model)
    model.train()
    cal_model.train()
    log("train_mle, train_cal (interleaved)")
    rows.extend(measure_interleaved(p, [
        ("train_mle", tokens, "tok/s", trainer(
            model, lambda: model(input_ids=ids, pixel_values=pixels, labels=labels).loss)),
        ("train_cal", tokens, "tok/s", trainer(
            cal_model, lambda: cal_loss(cal_model, ids, labels, pixels))),
    ]))
    del cal_model
    cal_over_mle = rows[1]["median_ms"] / rows[0]["median_ms"]

    model.eval()
    positions = torch.arange(t).unsqueeze(0).expand(b, t)
    keep = ids[0] != model.config.image_token_index
    text_ids, text_pos = ids[:, keep], positions[:, keep]
    keys = (ids != model.config.image_token_index).long()
    with torch.no_grad():
        log("forward")
        rows.append(measure("forward", p, tokens, "tok/s",
                            lambda: model(input_ids=ids, pixel_values=pixels).logits))
        log("contrast_text_only")
        rows.append(measure("contrast_text_only", p, text_ids.numel(), "tok/s",
                            lambda: model.lm_head(model.model.language_model(
                                input_ids=text_ids, position_ids=text_pos,
                                use_cache=False).last_hidden_state)))
        log("contrast_masked_full")
        rows.append(measure("contrast_masked_full", p, tokens, "tok/s",
                            lambda: lm_logits(model, spliced(model, ids, pixels), positions, keys)))

        def vig():
            both = torch.cat([pixels, blur(pixels, p["vig_sigma"])], 0)
            logits = model(input_ids=torch.cat([ids, ids], 0), pixel_values=both).logits
            logp = torch.log_softmax(logits[:, :-1], -1)
            target = torch.cat([labels, labels], 0)[:, 1:]
            ce = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            vig_tok = (ce[b:] - ce[:b]) * (target[:b] != -100)
            return vig_tok.tolist()
        log("vig_score")
        rows.append(measure("vig_score", p, b, "samples/s", vig))

        image = p["vocab"] - 1
        for gb in p["gen_batches"]:
            prompt = torch.randint(3, image, (gb, 1 + image_tokens(p) + p["gen_prompt_text"]),
                                   generator=gen)
            prompt[:, 0] = 1
            prompt[:, 1:1 + image_tokens(p)] = image
            imgs = torch.randn(gb, 3, p["image_size"], p["image_size"], generator=gen)
            n = p["gen_new_tokens"]
            log(f"gen_b{gb}")

            def generate():
                out = model.generate(input_ids=prompt, pixel_values=imgs, max_new_tokens=n,
                                     min_new_tokens=n, do_sample=False, eos_token_id=None,
                                     pad_token_id=0)
                assert out.shape[1] == prompt.shape[1] + n
            rows.append(measure(f"gen_b{gb}", p, gb * n, "tok/s", generate))
    return {"preset": p, "params": params, "rows": rows, "cal_over_mle": cal_over_mle}


def table(backend, r):
    pc, p = r["params"], r["preset"]
    s = (f"{p['name']} on {backend}: params vision {pc['vision']} projector {pc['projector']} "
         f"language {pc['language']} total {pc['total']}; batch {p['batch']} × seq {p['seq']}\n")
    s += f"{'measurement':<22} {'median ms':>11} {'min ms':>11} {'throughput':>14} {'peak MiB':>10}\n"
    for row in r["rows"]:
        mem = "-" if row["peak_rss_mib"] is None else f"{row['peak_rss_mib']:.0f}"
        thr = f"{row['per_s']:.1f} {row['unit']}"
        s += (f"{row['name']:<22} {row['median_ms']:>11.2f} {row['min_ms']:>11.2f} "
              f"{thr:>14} {mem:>10}\n")
    s += f"CAL / MLE step: {r['cal_over_mle']:.3f}\n"
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default=None, help="comma-separated preset names (default: all)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--out", default="bench_torch.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    chosen = presets()
    if args.preset:
        names = args.preset.split(",")
        unknown = [n for n in names if n not in {p["name"] for p in chosen}]
        if unknown:
            raise SystemExit(f"unknown preset {unknown[0]!r}")
        chosen = [p for p in chosen if p["name"] in names]
    import transformers
    results = []
    for p in chosen:
        if args.iters is not None:
            p["iters"] = args.iters
        if args.warmup is not None:
            p["warmup"] = args.warmup
        print(f"{p['name']} on torch-cpu ({torch.get_num_threads()} threads): {p['warmup']} warm-up"
              f" + {p['iters']} timed iterations per row", flush=True, file=__import__("sys").stderr)
        r = run_preset(p, lambda row: print(f"  {row} …", flush=True,
                                           file=__import__("sys").stderr))
        print(table("torch-cpu", r), flush=True)
        results.append(r)
    report = {"side": "pytorch", "torch": torch.__version__,
              "transformers": transformers.__version__, "threads": torch.get_num_threads(),
              "results": [{"backend": "torch-cpu", "presets": results}]}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
