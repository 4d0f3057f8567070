"""PyTorch mirror of SyncNet (`joonson/syncnet_python`, `SyncNetModel.S`) for parity tests
and the LSE benchmark.

Written here from the original's layer list; the attribute names and Sequential indices
are the original's, so `S().state_dict()` has the key layout of `syncnet_v2.model`
(`netcnnaud.0.weight`, `netcnnlip.19.running_var`, `netfcaud.1.num_batches_tracked`, ...).
Also `reference_lse`: `SyncNetInstance.evaluate`'s feature loop (window batches of 20)
and scoring, on frames and MFCC already in memory. Tests and benchmarks only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def _conv_bn_relu(conv: nn.Module, channels: int, norm: type) -> list[nn.Module]:
  return [conv, norm(channels), nn.ReLU(inplace=True)]


class S(nn.Module):
  """forward_aud: [N, 1, 13, 20] MFCC -> [N, 1024]; forward_lip: [N, 3, 5, 224, 224]
  BGR in 0..255 -> [N, 1024]."""

  def __init__(self, num_layers_in_fc_layers: int = 1024):
    super().__init__()
    c2, c3 = nn.Conv2d, nn.Conv3d
    bn2, bn3 = nn.BatchNorm2d, nn.BatchNorm3d
    self.netcnnaud = nn.Sequential(
        *_conv_bn_relu(c2(1, 64, 3, padding=1), 64, bn2),
        nn.MaxPool2d((1, 1), (1, 1)),
        *_conv_bn_relu(c2(64, 192, 3, padding=1), 192, bn2),
        nn.MaxPool2d((3, 3), (1, 2)),
        *_conv_bn_relu(c2(192, 384, 3, padding=1), 384, bn2),
        *_conv_bn_relu(c2(384, 256, 3, padding=1), 256, bn2),
        *_conv_bn_relu(c2(256, 256, 3, padding=1), 256, bn2),
        nn.MaxPool2d((3, 3), (2, 2)),
        *_conv_bn_relu(c2(256, 512, (5, 4)), 512, bn2),
    )
    self.netfcaud = self._head(num_layers_in_fc_layers)
    self.netfclip = self._head(num_layers_in_fc_layers)
    self.netcnnlip = nn.Sequential(
        *_conv_bn_relu(c3(3, 96, (5, 7, 7), (1, 2, 2)), 96, bn3),
        nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
        *_conv_bn_relu(c3(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), 256, bn3),
        nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
        *_conv_bn_relu(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn3),
        *_conv_bn_relu(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn3),
        *_conv_bn_relu(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn3),
        nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
        *_conv_bn_relu(c3(256, 512, (1, 6, 6)), 512, bn3),
    )

  @staticmethod
  def _head(out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, out))

  def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
    mid = self.netcnnaud(x)
    return self.netfcaud(mid.view(mid.size(0), -1))

  def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
    mid = self.netcnnlip(x)
    return self.netfclip(mid.view(mid.size(0), -1))


def calc_pdist(feat1: torch.Tensor, feat2: torch.Tensor, vshift: int = 10) -> list[torch.Tensor]:
  """The original's per-window loop: distances of video feature i to audio features
  i - vshift .. i + vshift (audio zero-padded), [2 * vshift + 1] per window."""
  win_size = vshift * 2 + 1
  feat2p = torch.nn.functional.pad(feat2, (0, 0, vshift, vshift))
  return [torch.nn.functional.pairwise_distance(feat1[[i], :].repeat(win_size, 1),
                                                feat2p[i:i + win_size, :])
          for i in range(len(feat1))]


@torch.no_grad()
def reference_lse(model: S, frames_bgr224: np.ndarray, mfcc: np.ndarray, num_samples: int,
                  batch_size: int = 20, vshift: int = 15) -> tuple[float, float, int]:
  """`SyncNetInstance.evaluate` from its loaded frames on: -> (lse_c, lse_d, offset).

  Args:
    model: in eval mode.
    frames_bgr224: [T, 224, 224, 3] uint8, already resized (cv2, BGR).
    mfcc: [num MFCC frames, 13], python_speech_features.mfcc of the int16 audio.
    num_samples: audio length in samples (16 kHz), for min_length.
  """
  im = np.transpose(frames_bgr224[None], (0, 4, 1, 2, 3))  # [1, 3, T, 224, 224]
  imtv = torch.from_numpy(im.astype(float)).float()
  cct = torch.from_numpy(mfcc.T[None, None].astype(float)).float()  # [1, 1, 13, M]
  min_length = min(len(frames_bgr224), math.floor(num_samples / 640))
  lastframe = min_length - 5
  im_feat, cc_feat = [], []
  for i in range(0, lastframe, batch_size):
    starts = range(i, min(lastframe, i + batch_size))
    im_feat.append(model.forward_lip(torch.cat([imtv[:, :, v:v + 5] for v in starts], 0)))
    cc_feat.append(model.forward_aud(torch.cat([cct[:, :, :, v * 4:v * 4 + 20] for v in starts], 0)))
  dists = calc_pdist(torch.cat(im_feat, 0), torch.cat(cc_feat, 0), vshift=vshift)
  mdist = torch.mean(torch.stack(dists, 1), 1)
  minval, minidx = torch.min(mdist, 0)
  conf = torch.median(mdist) - minval
  return float(conf), float(minval), int(vshift - minidx)
