#!/usr/bin/env python3
"""Tiny, randomly initialised Hugging Face models and their outputs, for vlalign's parity tests.

    pip install torch transformers safetensors
    python tools/make_fixtures.py            # writes tests/fixtures/

For each model this saves the checkpoint with `save_pretrained` (config.json + safetensors) and an
`io.safetensors` with fixed inputs and the outputs `transformers` computes from them:

  clip_vision/   CLIPVisionModel (quick_gelu)      pixel_values → hidden_states[-2] without CLS, pooled
  llama/         LlamaForCausalLM, GQA             input_ids (+ a left-padded row) → logits; greedy ids
  llama_sharded/ the same weights in 3 shards + model.safetensors.index.json
  llama_bf16/    the same weights stored as bfloat16 → logits of the bf16 weights
  qwen2/         Qwen2ForCausalLM, qkv bias, tied embeddings → logits
  llava/         LlavaForConditionalGeneration (tiny CLIP + tiny Llama), as this transformers saves it
  llava_hub/     the same weights in the hub layout (language_model.model.*, vision_tower.vision_model.*)
  llava_v452/    the same weights in transformers 4.52's layout (model.language_model.*, lm_head.*)
  mm_projector.safetensors   the projector alone, original LLaVA keys (model.mm_projector.0/2)
  clip/          CLIPModel (tiny tower + causal text encoder, right-padded captions) → logits_per_image,
                 image/text embeddings, the symmetric InfoNCE loss (return_loss=True)
  llava_train/   a tiny LLaVA and a padded batch with -100 labels: transformers' loss, the gradient
                 of every parameter (grads/, a checkpoint whose weights are the gradients) and the
                 weights after 3 AdamW steps with per-tensor gradient clipping (after3/)

  blip2/         Blip2ForConditionalGeneration (tiny BLIP ViT, Q-Former with cross-attention every 2nd
                 layer, tiny Llama), a 32-px PNG + preprocessor_config.json → logits
  instructblip/  InstructBlipForConditionalGeneration: the same plus Q-Former instruction ids → logits
  blip2_legacy/  the BLIP-2 weights (key bias zeroed) in the pre-transformers-5 hub layout: q_bias/v_bias
  wformer/       SAM's W-Former on the instructblip/ weights: a PyTorch port of SAM's encoder loop
                 (McCartney01/SAM, Qformer.py, BertEncoder.forward) with random scorer and bridges,
                 6 images in groups of 1, 2 and 3 → image tokens (pooling all / others, and the
                 exchange moved to other layers)

  seva_score/    a tiny LLaVA (model/, byte-level BPE tokenizer.json), two 32-px PNGs and preference
                 pairs: each answer's summed log-prob under vicuna_v1 (expected.jsonl)

    python tools/make_fixtures.py --only llava_train   # just that one (or --only llava|clip|seva_score|blip2|wformer)

The package versions used are written to tests/fixtures/VERSIONS.
"""

import json
import os
import shutil
import sys

import safetensors.torch
import torch
import transformers
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def fresh(name):
    path = os.path.join(OUT, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def save_io(path, tensors):
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    safetensors.torch.save_file(tensors, os.path.join(path, "io.safetensors"))


def clip_config():
    return CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        image_size=32, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        initializer_factor=1.0,
    )


def llama_config(vocab=128):
    return LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
        initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )


def greedy(model, input_ids, n=8, **kw):
    out = model.generate(
        input_ids=input_ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
        eos_token_id=None, pad_token_id=0, **kw,
    )
    return out[:, input_ids.shape[1]:]


@torch.no_grad()
def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)

    # CLIP vision tower: LLaVA takes hidden_states[-2] without the class token.
    path = fresh("clip_vision")
    clip = CLIPVisionModel(clip_config()).eval()
    clip.save_pretrained(path)
    pixels = torch.randn(2, 3, 32, 32)
    out = clip(pixel_values=pixels, output_hidden_states=True)
    save_io(path, {
        "pixel_values": pixels,
        "hidden_m2": out.hidden_states[-2][:, 1:],
        "last_hidden_state": out.last_hidden_state,
        "pooled": out.pooler_output,
    })

    # Llama with GQA: a full row and a left-padded row.
    path = fresh("llama")
    llama = LlamaForCausalLM(llama_config()).eval()
    llama.save_pretrained(path)
    ids = torch.randint(3, 128, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    ids[1, :3] = 0
    mask[1, :3] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = llama(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    save_io(path, {
        "input_ids": ids, "attention_mask": mask, "logits": logits,
        "greedy": greedy(llama, ids[:1]),
    })
    llama.save_pretrained(fresh("llama_sharded"), max_shard_size="100KB")
    save_io(os.path.join(OUT, "llama_sharded"), {"input_ids": ids[:1], "logits": logits[:1]})

    path = fresh("llama_bf16")
    bf16 = LlamaForCausalLM(llama_config()).eval()
    bf16.load_state_dict(llama.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    bf16.save_pretrained(path)
    # Reference: the bf16 file opened in f32 (weights upcast exactly; rotary tables recomputed
    # in f32, unlike `.float()` on the bf16 module, whose inv_freq buffer went through bf16).
    ref = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()(input_ids=ids[:1]).logits
    save_io(path, {"input_ids": ids[:1], "logits": ref})

    # Qwen2: qkv bias, tied embeddings, large theta.
    path = fresh("qwen2")
    qcfg = Qwen2Config(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        initializer_range=0.1,
    )
    qwen = Qwen2ForCausalLM(qcfg).eval()
    for layer in qwen.model.layers:  # random (not zero) biases so that they matter
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            proj.bias.normal_(0.0, 0.1)
    qwen.save_pretrained(path)
    ids = torch.randint(0, 128, (1, 10))
    save_io(path, {"input_ids": ids, "logits": qwen(input_ids=ids).logits})

    write_versions(os.path.join(OUT, "VERSIONS"))
    llava()
    print("wrote", os.path.abspath(OUT))


@torch.no_grad()
def llava():
    """LLaVA: tiny CLIP + tiny Llama; 16 image slots spliced after two text tokens; the same
    weights in the three key layouts and the original projector file."""
    torch.manual_seed(11)
    image_token = 129
    lcfg = LlavaConfig(
        vision_config=clip_config(), text_config=llama_config(vocab=130),
        image_token_index=image_token, projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    path = fresh("llava")
    llava = LlavaForConditionalGeneration(lcfg).eval()
    # The default init gives the projector tiny weights, so the image would barely move the
    # logits and a parity test could not tell whether the image path ran: scale them.
    for p in llava.model.multi_modal_projector.parameters():
        p.normal_(0.0, 0.2)
    llava.save_pretrained(path)
    pixels = torch.randn(1, 3, 32, 32)
    ids = torch.cat([
        torch.tensor([[1, 17]]), torch.full((1, 16), image_token), torch.randint(3, 120, (1, 6)),
    ], dim=1)
    logits = llava(input_ids=ids, pixel_values=pixels).logits
    moved = (logits - llava(input_ids=ids, pixel_values=-pixels).logits).abs().max().item()
    assert moved > 1e-1, f"llava: the image barely changes the logits ({moved})"
    save_io(path, {
        "input_ids": ids, "pixel_values": pixels, "logits": logits,
        "greedy": greedy(llava, ids, pixel_values=pixels),
    })

    # The same weights in the two other key layouts found in the wild: the hub layout
    # (vision_tower.vision_model.*) and transformers 4.52–4.x's (model.language_model.*, lm_head).
    state = safetensors.torch.load_file(os.path.join(OUT, "llava", "model.safetensors"))

    def canonical(key):  # → language_model.model.* / language_model.lm_head / vision_tower.<clip>
        for old, new in (("model.language_model.", "language_model.model."),
                         ("lm_head.", "language_model.lm_head."),
                         ("model.multi_modal_projector.", "multi_modal_projector."),
                         ("model.vision_tower.", "vision_tower.")):
            if key.startswith(old):
                key = new + key[len(old):]
        if key.startswith("vision_tower.vision_model."):
            key = "vision_tower." + key[len("vision_tower.vision_model."):]
        return key

    def hub(key):
        key = canonical(key)
        if key.startswith("vision_tower."):
            key = "vision_tower.vision_model." + key[len("vision_tower."):]
        return key

    def v452(key):
        key = hub(key)
        for old, new in (("language_model.model.", "model.language_model."),
                         ("language_model.lm_head.", "lm_head."),
                         ("multi_modal_projector.", "model.multi_modal_projector."),
                         ("vision_tower.", "model.vision_tower.")):
            if key.startswith(old):
                return new + key[len(old):]
        return key

    for name, rename in (("llava_hub", hub), ("llava_v452", v452)):
        path = fresh(name)
        renamed = {rename(k): v for k, v in state.items()}
        safetensors.torch.save_file(renamed, os.path.join(path, "model.safetensors"),
                                    metadata={"format": "pt"})
        shutil.copy(os.path.join(OUT, "llava", "config.json"), path)

    # The original LLaVA projector file.
    proj = {
        "model.mm_projector.0.weight": llava.model.multi_modal_projector.linear_1.weight,
        "model.mm_projector.0.bias": llava.model.multi_modal_projector.linear_1.bias,
        "model.mm_projector.2.weight": llava.model.multi_modal_projector.linear_2.weight,
        "model.mm_projector.2.bias": llava.model.multi_modal_projector.linear_2.bias,
    }
    safetensors.torch.save_file({k: v.contiguous() for k, v in proj.items()},
                                os.path.join(OUT, "mm_projector.safetensors"))
    write_versions(os.path.join(OUT, "llava", "VERSIONS"))
    print("wrote llava fixtures", f"(the image moves a logit by {moved:.3f})")


# The training fixture: AdamW as vlalign's `OptimConfig` sets it (PyTorch's epsilon, decoupled
# weight decay, constant lr) with each parameter's gradient clipped to its own L2 norm, as burn
# clips (`GradientClippingConfig::Norm` is per tensor; torch's clip_grad_norm_ is global).
TRAIN = {"lr": 1e-2, "weight_decay": 0.1, "clip": 0.05, "steps": 3}


def llava_train():
    torch.manual_seed(1234)
    image_token = 129
    lcfg = LlavaConfig(
        vision_config=clip_config(), text_config=llama_config(vocab=130),
        image_token_index=image_token, projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    path = fresh("llava_train")
    model = LlavaForConditionalGeneration(lcfg).eval()
    # The default init gives the projector and the patch embedding tiny weights: scale them so
    # that the image visibly moves the loss.
    with torch.no_grad():
        for p in model.model.multi_modal_projector.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(path)
    # Two rows (bos, a text token, 16 image slots, text); the second right-padded by 3. Labels:
    # the last text tokens of each row, -100 on the prompt, the image slots and the padding.
    text0 = torch.randint(3, 120, (7,))
    text1 = torch.randint(3, 120, (4,))
    slots = torch.full((16,), image_token)
    row0 = torch.cat([torch.tensor([1]), text0[:1], slots, text0[1:]])
    row1 = torch.cat([torch.tensor([1]), text1[:1], slots, text1[1:], torch.zeros(3, dtype=torch.long)])
    ids = torch.stack([row0, row1])
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, -4:] = ids[0, -4:]
    labels[1, -5:-3] = ids[1, -5:-3]
    pixels = torch.randn(2, 3, 32, 32)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)

    def loss_of(m):
        return m(input_ids=ids, pixel_values=pixels, attention_mask=mask,
                 position_ids=position_ids, labels=labels).loss

    loss = loss_of(model)
    loss.backward()
    grads = LlavaForConditionalGeneration(lcfg).eval()
    with torch.no_grad():
        for (name, p), (_, g) in zip(model.named_parameters(), grads.named_parameters()):
            g.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    grads.save_pretrained(os.path.join(path, "grads"))

    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN["lr"], betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=TRAIN["weight_decay"])
    losses = []
    for _ in range(TRAIN["steps"]):
        opt.zero_grad(set_to_none=True)
        step_loss = loss_of(model)
        step_loss.backward()
        for p in model.parameters():
            if p.grad is not None:
                torch.nn.utils.clip_grad_norm_([p], TRAIN["clip"])
        opt.step()
        losses.append(step_loss.detach())
    model.save_pretrained(os.path.join(path, "after3"))
    save_io(path, {
        "input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels,
        "loss": loss.reshape(1), "step_losses": torch.stack(losses),
        "train": torch.tensor([TRAIN["lr"], TRAIN["weight_decay"], TRAIN["clip"]]),
    })
    write_versions(os.path.join(path, "VERSIONS"))
    print("wrote", os.path.abspath(path))


@torch.no_grad()
def clip():
    """A tiny CLIPModel: three captions of different lengths, right-padded, each ending in the
    end-of-text token (id 63, where transformers pools), against three images."""
    torch.manual_seed(2)
    path = fresh("clip")
    vision = clip_config().to_dict()
    text = dict(
        vocab_size=64, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=16, hidden_act="quick_gelu",
        layer_norm_eps=1e-5, pad_token_id=0, bos_token_id=62, eos_token_id=63,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    model = CLIPModel(config).eval()
    # transformers' init leaves the token embeddings at std 0.02: perturb every parameter so
    # that each input visibly moves the logits.
    for p in model.parameters():
        p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    lengths = [7, 5, 9]
    ids = torch.zeros(3, 9, dtype=torch.long)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, : n - 1] = torch.randint(1, 62, (n - 1,))
        ids[row, n - 1] = 63
        mask[row, :n] = 1
    pixels = torch.randn(3, 3, 32, 32)
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
    save_io(path, {
        "input_ids": ids, "lengths": torch.tensor(lengths), "pixel_values": pixels,
        "logits_per_image": out.logits_per_image, "text_embeds": out.text_embeds,
        "image_embeds": out.image_embeds, "loss": out.loss.reshape(1),
    })
    print("wrote", os.path.abspath(path))


VICUNA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")


def seva_score():
    """A tiny LLaVA with a byte-level BPE tokenizer, two 32-px images and preference pairs; the
    summed log-probs of each answer's supervised tokens (answer + </s>) under vicuna_v1, as
    `seva_dpo score` computes them. The prompt is assembled piece by piece as LLaVA's
    conversation template does: SYSTEM USER: <image>\nq ASSISTANT: a</s>."""
    import numpy as np
    from PIL import Image
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    torch.manual_seed(7)
    path = fresh("seva_score")
    model_dir = os.path.join(path, "model")
    os.makedirs(model_dir)
    os.makedirs(os.path.join(path, "images"))
    pairs = [
        ("p1", "a.png", "What color is the square?", "The square is red.", "The square is blue."),
        ("p2", "b.png", "How many objects are there?", "There are 3 objects.", "There are two."),
        ("p3", "a.png", "Is there a circle?", "No.", "Yes, there is a small circle."),
    ]
    corpus = [VICUNA_SYSTEM, " USER: ", " ASSISTANT:"] + [f"\n{q} {c} {r}" for _, _, q, c, r in pairs]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(os.path.join(model_dir, "tokenizer.json"))
    vocab = tok.get_vocab_size()
    ids_of = lambda t: tok.encode(t, add_special_tokens=False).ids
    image_token = tok.token_to_id("<image>")
    lcfg = LlavaConfig(
        vision_config=clip_config(), text_config=llama_config(vocab=vocab),
        image_token_index=image_token, projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    llava = LlavaForConditionalGeneration(lcfg).eval()
    with torch.no_grad():  # make the image matter: larger projector weights
        for p in llava.model.multi_modal_projector.parameters():
            p.mul_(4.0)
    llava.save_pretrained(model_dir)
    mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
    rng = np.random.default_rng(3)
    pixels = {}
    for name in ("a.png", "b.png"):
        img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(img).save(os.path.join(path, "images", name))
        x = (img.astype(np.float32) / 255.0 - mean) / std
        pixels[name] = torch.from_numpy(x.transpose(2, 0, 1).copy())[None]
    slots = (32 // 8) ** 2

    def logp(image, question, answer):
        prompt = ([tok.token_to_id("<s>")] + ids_of(VICUNA_SYSTEM + " USER: ") + [image_token] * slots
                  + ids_of("\n" + question + " ASSISTANT:"))
        target = ids_of(" " + answer) + [tok.token_to_id("</s>")]
        ids = torch.tensor([prompt + target])
        with torch.no_grad():
            logits = llava(input_ids=ids, pixel_values=pixels[image]).logits[0].double()
        lp = torch.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
        return lp[len(prompt) - 1:].sum().item()

    with open(os.path.join(path, "pairs.jsonl"), "w") as f, \
            open(os.path.join(path, "expected.jsonl"), "w") as g:
        for pid, image, q, c, r in pairs:
            f.write(json.dumps({"id": pid, "image": image, "question": q, "chosen": c,
                                "rejected": r, "augmentation": "fixture"}) + "\n")
            g.write(json.dumps({"id": pid, "logp_chosen": logp(image, q, c),
                                "logp_rejected": logp(image, q, r)}) + "\n")
    other = "b.png" if pairs[0][1] == "a.png" else "a.png"
    moved = abs(logp(other, pairs[0][2], pairs[0][3]) - logp(pairs[0][1], pairs[0][2], pairs[0][3]))
    assert moved > 1e-2, f"the image barely changes the log-prob ({moved})"
    print("wrote", os.path.abspath(path), f"(swapping the image moves a log-prob by {moved:.3f})")


def blip_image(path):
    """A 32-px PNG with structure, its preprocessor_config.json, and the pixel values the BLIP
    image processor's normalisation gives (no resize: the PNG has the model's size)."""
    import numpy as np
    from PIL import Image

    g = torch.Generator().manual_seed(7)
    rgb = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
    rgb[8:20, 6:26] = [250, 30, 30]
    Image.fromarray(rgb).save(os.path.join(path, "image.png"))
    mean = [0.48145466, 0.4578275, 0.40821073]
    std = [0.26862954, 0.26130258, 0.27577711]
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump({"image_processor_type": "BlipImageProcessor", "size": {"height": 32, "width": 32},
                   "image_mean": mean, "image_std": std, "do_rescale": True,
                   "rescale_factor": 1 / 255, "do_normalize": True}, f, indent=2)
    x = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return x.unsqueeze(0)


def blip_init(model):
    """transformers' BLIP-2 init leaves the vision embeddings at ~1e-10 and the queries at 0:
    draw every parameter so that each input visibly changes the logits."""
    for name, p in model.named_parameters():
        if "norm" in name.lower() and name.endswith("weight"):
            p.normal_(1.0, 0.1)
        else:
            p.normal_(0.0, 0.15 if p.dim() > 1 else 0.05)


@torch.no_grad()
def blip2():
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, InstructBlipConfig,
                              InstructBlipForConditionalGeneration)

    torch.manual_seed(3)
    image_token = 129
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-6,
                  qkv_bias=True)
    qformer = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                   intermediate_size=48, cross_attention_frequency=2, encoder_hidden_size=32,
                   vocab_size=60, max_position_embeddings=64, hidden_act="gelu")
    text = llama_config(vocab=130).to_dict()
    ids = torch.cat([
        torch.tensor([[1, 17]]), torch.full((1, 4), image_token), torch.randint(3, 120, (1, 6)),
    ], dim=1)
    for name, cfg_cls, model_cls in (
        ("blip2", Blip2Config, Blip2ForConditionalGeneration),
        ("instructblip", InstructBlipConfig, InstructBlipForConditionalGeneration),
    ):
        cfg = cfg_cls(vision_config=vision, qformer_config=qformer, text_config=text,
                      num_query_tokens=4, image_token_index=image_token)
        path = fresh(name)
        model = model_cls(cfg).eval()
        blip_init(model)
        model.save_pretrained(path)
        pixels = blip_image(path)
        kw = {}
        if name == "instructblip":
            kw["qformer_input_ids"] = torch.randint(1, 60, (1, 5))
            kw["qformer_attention_mask"] = torch.ones(1, 5, dtype=torch.long)
        logits = model(input_ids=ids, pixel_values=pixels, **kw).logits
        swapped = model(input_ids=ids, pixel_values=-pixels, **kw).logits
        moved = (logits - swapped).abs().max().item()
        assert moved > 1e-1, f"{name}: the image barely changes the logits ({moved})"
        save_io(path, {"input_ids": ids, "pixel_values": pixels, "logits": logits, **kw})
        print("wrote", os.path.abspath(path), f"(the image moves a logit by {moved:.3f})")
        if name == "blip2":
            blip2_legacy(model, ids, pixels)


def blip2_legacy(model, ids, pixels):
    """The hub layout of checkpoints saved before transformers 5: the vision attention's bias as
    `q_bias` and `v_bias` (the key bias is zero), not one fused `qkv.bias`."""
    path = fresh("blip2_legacy")
    state = {}
    for layer in model.vision_model.encoder.layers:
        d = layer.self_attn.embed_dim
        layer.self_attn.qkv.bias.data[d:2 * d] = 0.0
    for k, v in model.state_dict().items():
        if k.endswith("self_attn.qkv.bias"):
            d = v.shape[0] // 3
            state[k.replace("qkv.bias", "q_bias")] = v[:d].clone()
            state[k.replace("qkv.bias", "v_bias")] = v[2 * d:].clone()
        else:
            state[k] = v.detach().clone().contiguous()
    safetensors.torch.save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    for f in ("config.json", "preprocessor_config.json", "image.png"):
        shutil.copy(os.path.join(OUT, "blip2", f), path)
    logits = model(input_ids=ids, pixel_values=pixels).logits
    save_io(path, {"input_ids": ids, "pixel_values": pixels, "logits": logits})
    print("wrote", os.path.abspath(path))


@torch.no_grad()
def sam_encoder(qformer, embedded, features, context, bridge_in, bridge_out, inject, ret, q):
    """SAM's `BertEncoder.forward` (McCartney01/SAM, Qformer.py), ported: a second stream, a copy
    of the embedded states, runs the same layers against the group context. At layer `inject` the
    main stream's *input* is added through `one_2_muliple` (bridge_in) into the second stream's
    input; at layer `ret` the second stream's *output* goes through `multiple_2_one` (bridge_out)
    and is added to the main stream's input of that same layer, and only then does the main
    stream run it. The public code has inject = ret = the last layer."""
    main, second = embedded, embedded.clone()
    for i, layer in enumerate(qformer.encoder.layer):
        from_second = None
        if i <= ret:
            if i == inject:
                second = second + bridge_in(main)
            second = layer(second, None, context, query_length=q)
            if i == ret:
                from_second = bridge_out(second)
        if from_second is not None:
            main = main + from_second
        main = layer(main, None, features, query_length=q)
    return main[:, :q]


@torch.no_grad()
def sam_tokens(model, pixels, text, groups, score, bridge_in, bridge_out, pooling, inject, ret):
    """Each image's LLM tokens: a group of one runs the plain Q-Former; in a larger group the
    softmax over the group's images of `score(patch)` pools the context (`all`: every image of
    the group, as SAM's code; `others`: the other images, as the paper says)."""
    features = model.vision_model(pixel_values=pixels).last_hidden_state
    qf = model.qformer
    n, q = features.shape[0], model.query_tokens.shape[1]
    embedded = qf.embeddings(input_ids=text, query_embeds=model.query_tokens.expand(n, -1, -1))
    out, start = [], 0
    for size in groups:
        f = features[start:start + size]
        e = embedded[start:start + size]
        if size == 1:
            out.append(plain_qformer(qf, e, f, q))
        else:
            def pool(idx):
                w = torch.softmax(score(f[idx]), dim=0)
                return (w * f[idx]).sum(0)
            if pooling == "all":
                context = pool(list(range(size))).expand(size, -1, -1)
            else:
                context = torch.stack([pool([i for i in range(size) if i != j]) for j in range(size)])
            out.append(sam_encoder(qf, e, f, context, bridge_in, bridge_out, inject, ret, q))
        start += size
    return model.language_projection(torch.cat(out))


def plain_qformer(qformer, embedded, features, q):
    h = embedded
    for layer in qformer.encoder.layer:
        h = layer(h, None, features, query_length=q)
    return h[:, :q]


@torch.no_grad()
def wformer():
    from transformers import InstructBlipForConditionalGeneration

    torch.manual_seed(5)
    model = InstructBlipForConditionalGeneration.from_pretrained(os.path.join(OUT, "instructblip")).eval()
    d, dv = model.config.qformer_config.hidden_size, model.config.vision_config.hidden_size
    score = torch.nn.Linear(dv, 1)
    bridge_in, bridge_out = torch.nn.Linear(d, d), torch.nn.Linear(d, d)
    for p in [*score.parameters(), *bridge_in.parameters(), *bridge_out.parameters()]:
        p.normal_(0.0, 0.3)
    size = model.config.vision_config.image_size
    groups = [1, 2, 3]
    pixels = torch.randn(sum(groups), 3, size, size)
    text = torch.randint(1, 60, (sum(groups), 5))
    last = model.config.qformer_config.num_hidden_layers - 1
    run = lambda pooling, inject, ret: sam_tokens(model, pixels, text, groups, score, bridge_in,
                                                  bridge_out, pooling, inject, ret)
    outputs = {"all": run("all", last, last), "others": run("others", last, last),
               "inject0": run("all", 0, last), "inject0_return1": run("all", 0, 1)}
    q = model.query_tokens.shape[1]
    plain = plain_qformer(model.qformer, model.qformer.embeddings(
        input_ids=text, query_embeds=model.query_tokens.expand(len(pixels), -1, -1)),
        model.vision_model(pixel_values=pixels).last_hidden_state, q)
    moved = (outputs["all"] - model.language_projection(plain))[1:].abs().max().item()
    assert moved > 1e-1, f"the W-Former barely changes the tokens ({moved})"
    path = fresh("wformer")
    save_io(path, {"pixel_values": pixels, "qformer_input_ids": text,
                   "groups": torch.tensor(groups), "score.weight": score.weight,
                   "score.bias": score.bias, "bridge_in.weight": bridge_in.weight,
                   "bridge_in.bias": bridge_in.bias, "bridge_out.weight": bridge_out.weight,
                   "bridge_out.bias": bridge_out.bias, **outputs})
    write_versions(os.path.join(path, "VERSIONS"))
    print("wrote", os.path.abspath(path), f"(the W-Former moves a token by {moved:.3f})")


def write_versions(path):
    with open(path, "w") as f:
        f.write(f"python {sys.version.split()[0]}\ntorch {torch.__version__}\n"
                f"transformers {transformers.__version__}\nsafetensors {safetensors.__version__}\n")


if __name__ == "__main__":
    only = {"llava_train": llava_train, "clip": clip, "seva_score": seva_score, "blip2": blip2,
            "wformer": wformer, "llava": llava}
    if len(sys.argv) == 3 and sys.argv[1] == "--only" and sys.argv[2] in only:
        only[sys.argv[2]]()
    elif sys.argv[1:]:
        sys.exit("usage: make_fixtures.py [--only llava|llava_train|clip|seva_score|blip2|wformer]")
    else:
        main()
        llava_train()
        clip()
        seva_score()
        blip2()
        wformer()
