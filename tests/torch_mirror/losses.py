"""PyTorch mirror of the release's training losses, for parity tests only.

Sources in the release: `PerceptualLoss` in models/video_renderer.py, `GANLoss` in
loss.py, the feature-matching sum and loss weighting in train_video_renderer.py, the
L1 + velocity loss in train_landmarks_generator.py. Layout NCHW (images) and the
release's (B*T, 2, 57) for landmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torch_mirror.vgg import PERCEPTUAL_LAYERS, PerceptualNetworkTorch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
  """(x + 1) / 2 then ImageNet mean/std: the release assumes [-1, 1] inputs (they are [0, 1])."""
  x = (x + 1) / 2
  mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
  std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
  return (x - mean) / std


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
  """[B, C, H, W] -> [B, C, C], normalised by C*H*W."""
  b, c, h, w = x.shape
  f = x.reshape(b, c, h * w)
  return f.bmm(f.transpose(1, 2)) / (h * w * c)


class PerceptualLossTorch(nn.Module):
  """VGG19 L1 perceptual loss over relu_1_1..relu_5_1 at `num_scales` scales (weights 1).

  state_dict: `model.network.<i>.{weight,bias}` (the renderer holds it as `perceptual`).
  forward(inp, target [B, 3, H, W], use_style_loss, weight_style_to_perceptual) -> scalar.
  Style term: L1 between Gram matrices of every layer at the first scale only.
  """

  def __init__(self, num_scales: int = 2, layers: tuple[str, ...] = PERCEPTUAL_LAYERS):
    super().__init__()
    self.model = PerceptualNetworkTorch(layers)
    self.layers = tuple(layers)
    self.num_scales = num_scales

  def forward(self, inp: torch.Tensor, target: torch.Tensor, use_style_loss: bool = False,
              weight_style_to_perceptual: float = 0.) -> torch.Tensor:
    self.model.eval()
    inp = imagenet_normalize(inp)
    target = imagenet_normalize(target)
    loss = inp.new_zeros(())
    style = inp.new_zeros(())
    for scale in range(self.num_scales):
      inp_feats = self.model(inp)
      tgt_feats = self.model(target)
      for name in self.layers:
        fi = inp_feats[name]
        ft = tgt_feats[name].detach()
        loss = loss + F.l1_loss(fi, ft)
        if use_style_loss and scale == 0:
          style = style + F.l1_loss(gram_matrix(fi), gram_matrix(ft))
      if scale != self.num_scales - 1:
        inp = F.interpolate(inp, mode='bilinear', scale_factor=0.5, align_corners=False,
                            recompute_scale_factor=True)
        target = F.interpolate(target, mode='bilinear', scale_factor=0.5, align_corners=False,
                               recompute_scale_factor=True)
    if use_style_loss:
      return loss + style * weight_style_to_perceptual
    return loss


def lsgan_loss_torch(outputs: list[list[torch.Tensor]], target_is_real: bool) -> torch.Tensor:
  """The release's GANLoss(use_lsgan=True): sum over scales of MSE(last map, 1 or 0)."""
  label = 1.0 if target_is_real else 0.0
  loss = outputs[0][-1].new_zeros(())
  for per_scale in outputs:
    pred = per_scale[-1]
    loss = loss + F.mse_loss(pred, torch.full_like(pred, label))
  return loss


def feature_matching_loss_torch(fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]],
                                n_layers: int = 3) -> torch.Tensor:
  """sum_{scale, layer except last} (1/num_D) * (4/(n_layers+1)) * L1(fake, real.detach()) * 2.5."""
  num_d = len(fake)
  feat_weight = 4.0 / (n_layers + 1)
  d_weight = 1.0 / num_d
  loss = fake[0][0].new_zeros(())
  for i in range(num_d):
    for j in range(len(fake[i]) - 1):
      loss = loss + d_weight * feat_weight * F.l1_loss(fake[i][j], real[i][j].detach()) * 2.5
  return loss


def generator_loss_torch(warp_loss: torch.Tensor, gen_loss: torch.Tensor, gan_loss: torch.Tensor,
                         fm_loss: torch.Tensor, epoch: int) -> torch.Tensor:
  """train_video_renderer.py's total: warp only until epoch 25, then everything."""
  if epoch > 25:
    return 2.5 * warp_loss + 4 * gen_loss + 0.1 * 2.5 * gan_loss + fm_loss
  return 2.5 * warp_loss + 0 * gen_loss


def velocity_loss_torch(pred: torch.Tensor, gt: torch.Tensor, t: int) -> torch.Tensor:
  """pred, gt: (B*T, 2, 57) -> mean over (b, t) of ||d pred - d gt + 1e-6||_2 over 114 values."""
  pred = torch.stack(torch.split(pred, t, dim=0), dim=0)  # (B, T, 2, 57)
  gt = torch.stack(torch.split(gt, t, dim=0), dim=0)
  b = pred.shape[0]
  # Interleave to (x0, y0, x1, y1, ...), as the release does; the norm does not care.
  pred = pred.permute(0, 1, 3, 2).reshape(b, t, -1)
  gt = gt.permute(0, 1, 3, 2).reshape(b, t, -1)
  d_pred = (pred[:, 1:] - pred[:, :-1]).reshape(b * (t - 1), -1)
  d_gt = (gt[:, 1:] - gt[:, :-1]).reshape(b * (t - 1), -1)
  return F.pairwise_distance(d_pred, d_gt).mean()


def landmark_loss_torch(pred: torch.Tensor, gt: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
  """(total, l1, velocity) on (B*T, 2, 57) tensors, as train_landmarks_generator.py."""
  l1 = F.l1_loss(pred, gt)
  vel = velocity_loss_torch(pred, gt, t)
  return l1 + vel, l1, vel
