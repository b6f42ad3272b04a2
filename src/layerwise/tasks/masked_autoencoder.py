"""Masked prediction pretraining: hide part of each input and learn features that rebuild it.

- **ViT** (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"): ``mask_ratio`` (75%)
  of the patches are dropped; the encoder (the model's own patch embedding, blocks and norm) sees
  only the visible ones, and a small transformer decoder (``decoder_width``, ``decoder_layers``)
  fills mask tokens at the hidden positions and predicts their pixels. With ``norm_pix_loss`` each
  target patch is standardised by its own mean and variance (MAE's better-features variant).
- **Other image families** (CNN, ResNet...): the hidden patches are blanked (zero, the mean pixel
  after normalisation) and an MLP decoder rebuilds the whole image from the pooled features, in
  the manner of context encoders (Pathak et al. 2016, "Context Encoders: Feature Learning by
  Inpainting").
- **Tables** (Yoon et al. 2020, VIME's mask-and-reconstruct pretext; Bahri et al. 2022): each column
  is hidden with probability ``mask_ratio`` (30%) by the value of another random row (so a hidden
  value looks like a real one), and an MLP decoder predicts every hidden column from the features:
  numeric columns by squared error, one-hot and embedded categorical columns by cross-entropy over
  their categories.
- **Feature sequences**: hidden time steps are blanked and rebuilt by an MLP decoder.

In every case the loss counts **hidden positions only**: what the model sees it need not rebuild.
The decoder is the run's ``pretext`` module (saved and resumed with the model, left behind by
``model.init_from``). Masks are a pure function of the run's seed, the epoch and the batch in
training, and fixed in evaluation, so losses compare across epochs. ``layerwise probe`` (and the
report's "Representation") measures the features; for images the report also shows test inputs,
their masked versions and the reconstructions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..core.config import TaskConfig
from ..core.errors import ConfigError
from ..core.sections import register_section
from ..data.kinds import input_kind
from ..data.views import mask_patches
from ..models.layers import Block
from . import StepOutput, Task, register_task
from .pretext import EVAL_SEED, MeanEvaluator, feature_size, predict_error, view_seed

__all__ = ["MaskedAutoencoder", "MaskedAutoencoderConfig", "masked_mean", "patchify"]

MIN_PATCHES = 16  # "auto" masking patches of a non-ViT image: the largest side giving at least this many


class MaskedAutoencoderConfig(TaskConfig):
    """``task: {name: masked_autoencoder, mask_ratio: 0.75, ...}``."""

    mask_ratio: float | None = Field(None, gt=0, lt=1, description="share of patches, columns or steps hidden; "
                                     "default: 0.75 for images (MAE), 0.3 for tables and sequences (VIME)")
    patch_size: int | None = Field(None, ge=1, description="side of the masked patches of a non-ViT image (a ViT "
                                   "masks its own patches); default: the largest of 8, 4, 2, 1 dividing both "
                                   "sides that leaves at least 16 patches")
    decoder_width: int = Field(128, ge=1, description="width of the decoder (ViT: token width; else: MLP hidden)")
    decoder_layers: int = Field(2, ge=1, description="ViT: transformer blocks of the decoder")
    decoder_heads: int = Field(4, ge=1, description="ViT: attention heads of the decoder blocks")
    norm_pix_loss: bool = Field(True, description="ViT: standardise each target patch by its own mean and "
                                "variance (MAE's default for better features)")


def masked_mean(errors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``errors`` over the positions ``mask`` is True (the same shape): hidden ones only."""
    mask = mask.to(errors.dtype)
    return (errors * mask).sum() / mask.sum().clamp(min=1)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Images (B, C, H, W) -> patches (B, N, C * p * p), row-major over the patch grid (as a ViT embeds)."""
    return F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)


def unpatchify(patches: torch.Tensor, p: int, size: tuple[int, int]) -> torch.Tensor:
    return F.fold(patches.transpose(1, 2), output_size=size, kernel_size=p, stride=p)


def _auto_patch(height: int, width: int) -> int:
    for p in (8, 4, 2, 1):
        if height % p == 0 and width % p == 0 and (height // p) * (width // p) >= MIN_PATCHES:
            return p
    return 1


class ViTDecoder(nn.Module):
    """MAE's decoder: visible tokens projected to the decoder width, mask tokens at hidden positions,
    learned positions, a few transformer blocks, then each patch's pixels."""

    def __init__(self, width: int, tokens: int, patch_values: int, c: MaskedAutoencoderConfig):
        super().__init__()
        self.embed = nn.Linear(width, c.decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_width))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, c.decoder_width))
        self.blocks = nn.ModuleList(Block(c.decoder_width, c.decoder_heads, 4 * c.decoder_width, 0.0)
                                    for _ in range(c.decoder_layers))
        self.norm = nn.LayerNorm(c.decoder_width)
        self.pred = nn.Linear(c.decoder_width, patch_values)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)


def _mlp_decoder(features: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, out))


@register_task("masked_autoencoder")
class MaskedAutoencoder(Task):
    target = None  # labels are never read
    predicts_target = False
    embeds = True
    main_metric = "loss"
    Config = MaskedAutoencoderConfig

    def __init__(self, spec, train_cfg, preprocessing, train_labels=None, config=None):
        super().__init__(spec, train_cfg, preprocessing, train_labels, config)
        kind = input_kind(spec)
        if spec.kind in ("tokens", "text"):
            raise ConfigError("task masked_autoencoder: token ids are masked by task: masked_lm")
        self.mode = "image" if kind.picture else "table" if spec.kind == "tabular" else "sequence"
        if self.mode == "image" and len(spec.input_shape) != 3:
            raise ConfigError(f"task masked_autoencoder: masks one picture per sample; {spec.kind} inputs are not")
        default = 0.75 if self.mode == "image" else 0.3
        self.ratio = self.config.mask_ratio if self.config.mask_ratio is not None else default
        self.columns = _columns(spec) if self.mode == "table" else []

    def check_model(self, model) -> None:
        if not callable(getattr(model, "forward_features", None)):
            raise ConfigError(f"task masked_autoencoder: learns the model's forward_features; "
                              f"{type(model).__name__} has none")

    def _vit(self, model) -> bool:
        return self.mode == "image" and all(hasattr(model, a) for a in ("patch_embed", "pos_embed", "blocks", "grid"))

    def extend_model(self, model) -> None:
        c = self.config
        if self._vit(model):
            channels = self.spec.input_shape[0]
            tokens = model.pos_embed.shape[1]
            model.pretext = ViTDecoder(model.pos_embed.shape[2], tokens, channels * model.patch_size ** 2, c)
            return
        out = sum(size for _, _, size in self.columns) if self.mode == "table" else int(torch.Size(
            self.spec.input_shape).numel())
        model.pretext = _mlp_decoder(feature_size(model), c.decoder_width, out)

    def patch_size(self, model) -> int:
        if self._vit(model):
            return model.patch_size
        height, width = self.spec.input_shape[1:]
        p = self.config.patch_size or _auto_patch(height, width)
        if height % p or width % p:
            raise ConfigError(f"task.patch_size: {p} does not divide the image size {height}x{width}")
        return p

    # -- one masked batch ---------------------------------------------------------------------
    def masked_loss(self, model, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's loss over hidden positions, and each sample's own (B,)."""
        generator = torch.Generator().manual_seed(seed)
        if self.mode == "table":
            return self._table(model, x, generator)
        if self._vit(model):
            errors, mask, _ = self._vit_errors(model, x, generator)
        else:
            errors, mask, _ = self._blanked_errors(model, x, generator)
        per_sample = (errors * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1)
        return masked_mean(errors, mask), per_sample

    def _vit_errors(self, model, x, generator):
        p, decoder = model.patch_size, model.pretext
        target = patchify(x.float(), p)  # (B, N, C p p)
        if self.config.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        b, n = target.shape[:2]
        mask = mask_patches(b, n, self.ratio, generator, x.device)  # (B, N) True: hidden
        offset = 1 if model.cls_token is not None else 0
        tokens = model.patch_embed(x).flatten(2).transpose(1, 2) + model.pos_embed[:, offset:]  # (B, N, width)
        keep = mask.int().argsort(dim=1, stable=True)[:, : n - int(mask[0].sum())]  # visible patches' indices
        h = tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        if offset:
            h = torch.cat([(model.cls_token + model.pos_embed[:, :1]).expand(b, -1, -1), h], dim=1)
        for block in model.blocks:
            h = block(h)
        h = decoder.embed(model.norm(h))  # (B, offset + visible, d)
        full = decoder.mask_token.expand(b, n, -1).clone()
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, full.shape[-1]), h[:, offset:])
        if offset:
            full = torch.cat([h[:, :1], full], dim=1)
        full = full + decoder.pos_embed
        for block in decoder.blocks:
            full = block(full)
        prediction = decoder.pred(decoder.norm(full))[:, offset:]  # (B, N, C p p)
        errors = (prediction.float() - target).pow(2).mean(-1)  # (B, N): per patch
        return errors, mask, prediction

    def _blanked_errors(self, model, x, generator):
        if self.mode == "image":
            p = self.patch_size(model)
            height, width = x.shape[-2:]
            mask = mask_patches(len(x), (height // p) * (width // p), self.ratio, generator, x.device)
            pixel_mask = mask.view(-1, 1, height // p, width // p).repeat_interleave(p, 2).repeat_interleave(p, 3)
            pixel_mask = pixel_mask.expand_as(x)
        else:  # (B, T, F) steps, or any other feature layout: whole first-axis positions
            steps = x.shape[1]
            mask = mask_patches(len(x), steps, self.ratio, generator, x.device)
            pixel_mask = mask.view(len(x), steps, *([1] * (x.dim() - 2))).expand_as(x)
        blanked = x.masked_fill(pixel_mask, 0.0)
        prediction = model.pretext(model.forward_features(blanked).flatten(1)).view_as(x)
        return (prediction.float() - x.float()).pow(2), pixel_mask, prediction

    def _table(self, model, x, generator):
        b = x.shape[0]
        hidden = torch.rand(b, len(self.columns), generator=generator).to(x.device) < self.ratio  # (B, columns)
        # each hidden value comes from another row (any but its own), column by column
        offsets = 1 + torch.randint(0, max(b - 1, 1), (b, len(self.columns)), generator=generator).to(x.device)
        donor_rows = (torch.arange(b, device=x.device).unsqueeze(1) + offsets) % b
        corrupted = x.clone()
        for j, (positions, _, _) in enumerate(self.columns):
            taken = x[donor_rows[:, j]][:, positions]  # another row's value of the whole column
            corrupted[:, positions] = torch.where(hidden[:, j:j + 1], taken, x[:, positions])
        out = model.pretext(model.forward_features(corrupted).flatten(1)).float()
        losses, start = [], 0
        for positions, kind, size in self.columns:
            part = out[:, start:start + size]
            start += size
            if kind == "numeric":
                losses.append((part[:, 0] - x[:, positions[0]].float()).pow(2))
            elif kind == "onehot":
                losses.append(F.cross_entropy(part, x[:, positions].argmax(1), reduction="none"))
            else:  # an embedding index
                losses.append(F.cross_entropy(part, x[:, positions[0]].long().clamp(0, size - 1), reduction="none"))
        errors = torch.stack(losses, 1)  # (B, columns)
        per_sample = (errors * hidden).sum(1) / hidden.sum(1).clamp(min=1)
        return masked_mean(errors, hidden), per_sample

    # -- the loop's steps ---------------------------------------------------------------------
    def training_step(self, model, batch, ctx) -> StepOutput:
        x, _ = batch
        loss, _ = self.masked_loss(model, x, view_seed(self.train_cfg, ctx))
        return StepOutput(loss, len(x))

    def evaluation_step(self, model, batch) -> StepOutput:
        x, _ = batch
        loss, per_sample = self.masked_loss(model, x, EVAL_SEED)
        return StepOutput(loss, len(x), per_sample)

    def predict(self, outputs):
        raise predict_error("masked_autoencoder")

    def evaluator(self, eval_cfg):
        return MeanEvaluator("masked_loss", "samples")

    @torch.no_grad()
    def reconstructions(self, model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) as the model reads them -> (the masked inputs, the reconstructions), in
        pixels [0, 1]: hidden patches shown grey, visible ones pasted over the prediction (MAE Fig. 2)."""
        generator = torch.Generator().manual_seed(EVAL_SEED)
        pixels = self.preprocessing.inputs.denormalize_pixels
        height, width = x.shape[-2:]
        if self._vit(model):
            _, mask, prediction = self._vit_errors(model, x, generator)
            p = model.patch_size
            patches = patchify(x.float(), p)
            if self.config.norm_pix_loss:  # predictions are standardised patches: undo with the true patch's statistics
                mean, std = patches.mean(-1, keepdim=True), (patches.var(-1, keepdim=True) + 1e-6).sqrt()
                prediction = prediction * std + mean
            rebuilt = unpatchify(torch.where(mask.unsqueeze(-1), prediction, patches), p, (height, width))
            hidden = unpatchify(mask.unsqueeze(-1).float().expand_as(patches), p, (height, width)).bool()
        else:
            _, hidden, prediction = self._blanked_errors(model, x, generator)
            rebuilt = torch.where(hidden, prediction, x)
        masked = pixels(x.float()).masked_fill(hidden, 0.5)
        return masked, pixels(rebuilt).clamp(0, 1)


def _columns(spec) -> list[tuple[list[int], str, int]]:
    """A table's columns as (positions in the feature vector, kind, decoder outputs): numeric ones
    one value each, a one-hot group its width, an embedding index its cardinality. A spec without
    a recorded layout: every position numeric."""
    width = int(spec.input_shape[0])
    if not (spec.numeric or spec.onehot or spec.categorical):
        return [([i], "numeric", 1) for i in range(width)]
    columns = [([i], "numeric", 1) for i in spec.numeric]
    columns += [(list(range(start, start + size)), "onehot", size) for start, size in spec.onehot]
    columns += [([position], "categorical", cardinality) for position, cardinality in spec.categorical]
    return sorted(columns, key=lambda c: c[0][0])


@register_section("masked_reconstructions")
def _masked_section(run):
    from .reconstruction import reconstruction_grid

    if run.config.task != "masked_autoencoder" or not input_kind(run.spec).picture:
        return None
    split = getattr(run.data, run.metrics.get("split", "test"), None)
    if split is None or not len(split):
        return None
    x = run.preprocessing.inputs.batch(split.x[:10])
    masked, rebuilt = run.task.reconstructions(run.model.cpu().eval(), x)
    body = reconstruction_grid(run, masked, rebuilt, "test inputs with their hidden patches (grey), and the "
                                                     "model's reconstruction of them")
    ratio = run.task.ratio
    return "Masked reconstructions", (f"<p>{ratio:.0%} of each input's patches hidden; the reconstruction keeps the "
                                      f"visible patches and shows the prediction in the hidden ones.</p>\n{body}")
