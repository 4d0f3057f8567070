"""PyTorch mirror of the release's `Landmark_generator` (models/landmark_generator.py).

Same attribute names, hence the same state_dict keys as `landmarkgenerator_checkpoint.pth`;
runs on CPU (the release hard-codes `.cuda()` for the modality ids). Layouts are the
release's: mels (B, T, 1, 80, 16), pose (B, T, 2, 74), references (B, Nl, 2, 74/57);
output (B*T, 2, 57). Tests and benchmarks only.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionalEmbedding(nn.Module):
  """Fixed sinusoid buffer `pe` (1, max_len, d); forward(x) = pe[:, :x.size(1)]."""

  def __init__(self, d_model: int = 512, max_len: int = 512):
    super().__init__()
    position = torch.arange(0, max_len).float().unsqueeze(1)
    div = (torch.arange(0, d_model, 2).float() * -(math.log(10000.0) / d_model)).exp()
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    self.register_buffer("pe", pe.unsqueeze(0))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.pe[:, : x.size(1)]


class _ConvBN(nn.Module):
  """The release's Conv1d/Conv2d wrapper: conv_block = [Conv, BatchNorm]; (+x); act."""

  def __init__(self, dims: int, cin: int, cout: int, kernel, stride, padding,
               residual: bool = False, act: str = "ReLU"):
    super().__init__()
    conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
    self.conv_block = nn.Sequential(conv(cin, cout, kernel, stride, padding), norm(cout))
    self.act = nn.Tanh() if act == "Tanh" else nn.ReLU()
    self.residual = residual

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = self.conv_block(x)
    if self.residual:
      out = out + x
    return self.act(out)


def _stack(dims: int, cin: int, spec: list[tuple]) -> nn.Sequential:
  """spec rows: (cout, kernel, stride, padding[, 'res'][, 'Tanh'])."""
  layers = []
  for cout, kernel, stride, padding, *flags in spec:
    layers.append(_ConvBN(dims, cin, cout, kernel, stride, padding,
                          residual="res" in flags, act="Tanh" if "Tanh" in flags else "ReLU"))
    cin = cout
  return nn.Sequential(*layers)


def mel_encoder(final_act: str = "Tanh") -> nn.Sequential:
  """(N, 1, 80, 16) -> (N, 512, 1, 1). The renderer's audio_encoder uses final_act='ReLU'."""
  last = (512, 1, 1, 0) + ((final_act,) if final_act == "Tanh" else ())
  return _stack(2, 1, [
      (32, 3, 1, 1), (32, 3, 1, 1, "res"), (32, 3, 1, 1, "res"),
      (64, 3, (3, 1), 1), (64, 3, 1, 1, "res"), (64, 3, 1, 1, "res"),
      (128, 3, 3, 1), (128, 3, 1, 1, "res"), (128, 3, 1, 1, "res"),
      (256, 3, (3, 2), 1), (256, 3, 1, 1, "res"),
      (512, 3, 1, 0), last,
  ])


def _ref_encoder() -> nn.Sequential:  # (N, 2, 131) -> (N, 512, 1)
  spec = [(4, 3, 1, 1)]
  for width in (8, 16, 32, 64, 128):
    spec += [(width, 3, 2, 1), (width, 3, 1, 1, "res"), (width, 3, 1, 1, "res")]
  spec += [(256, 3, 2, 1), (256, 3, 1, 1, "res"), (512, 3, 1, 0), (512, 1, 1, 0, "Tanh")]
  return _stack(1, 2, spec)


def _pose_encoder() -> nn.Sequential:  # (N, 2, 74) -> (N, 512, 1)
  spec = [(4, 3, 1, 1), (8, 3, 1, 1), (8, 3, 1, 1, "res"), (8, 3, 1, 1, "res")]
  for width in (16, 32, 64, 128, 256):
    spec += [(width, 3, 2, 1), (width, 3, 1, 1, "res"), (width, 3, 1, 1, "res")]
  spec += [(512, 3, 1, 0), (512, 1, 1, 0, "res", "Tanh")]
  return _stack(1, 2, spec)


class Fusion_transformer_encoder(nn.Module):  # noqa: N801 (the release's class name)
  def __init__(self, T: int, d_model: int, nlayers: int, nhead: int, dim_feedforward: int,
               dropout: float = 0.1):
    super().__init__()
    self.T = T
    self.position_v = PositionalEmbedding(d_model=512)
    self.position_a = PositionalEmbedding(d_model=512)
    self.modality = nn.Embedding(4, 512, padding_idx=0)
    self.dropout = nn.Dropout(p=dropout)
    layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True)
    self.transformer_encoder = nn.TransformerEncoder(layer, nlayers, enable_nested_tensor=False)

  def forward(self, ref: torch.Tensor, mel: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    def kind(code: int, batch: int, length: int) -> torch.Tensor:
      return self.modality(torch.full((batch, length), code, dtype=torch.long, device=ref.device))

    pose_tokens = pose + self.position_v(pose) + kind(1, pose.size(0), self.T)
    audio_tokens = mel + self.position_a(mel) + kind(2, mel.size(0), self.T)
    ref_tokens = ref + kind(3, ref.size(0), ref.size(1))
    tokens = self.dropout(torch.cat((ref_tokens, audio_tokens, pose_tokens), dim=1))
    return self.transformer_encoder(tokens)


def _weight_init(m: nn.Module) -> None:
  if isinstance(m, nn.Linear):
    nn.init.xavier_normal_(m.weight)
    nn.init.constant_(m.bias, 0)
  elif isinstance(m, nn.BatchNorm1d):
    nn.init.constant_(m.weight, 1)
    nn.init.constant_(m.bias, 0)


class Landmark_generator(nn.Module):  # noqa: N801 (the release's class name)
  def __init__(self, T: int = 5, d_model: int = 512, nlayers: int = 4, nhead: int = 4,
               dim_feedforward: int = 1024, dropout: float = 0.1):
    super().__init__()
    self.mel_encoder = mel_encoder("Tanh")
    self.ref_encoder = _ref_encoder()
    self.pose_encoder = _pose_encoder()
    self.fusion_transformer = Fusion_transformer_encoder(
        T, d_model, nlayers, nhead, dim_feedforward, dropout)
    self.mouse_keypoint_map = nn.Linear(d_model, 40 * 2)
    self.jaw_keypoint_map = nn.Linear(d_model, 17 * 2)
    self.apply(_weight_init)
    self.Norm = nn.LayerNorm(512)  # noqa: N815 (the release's attribute name)

  def forward(self, T_mels, T_pose, Nl_pose, Nl_content):  # noqa: N803
    """(B,T,1,80,16), (B,T,2,74), (B,Nl,2,74), (B,Nl,2,57) -> (B*T, 2, 57)."""
    B, T, Nl = T_mels.size(0), T_mels.size(1), Nl_content.size(1)
    ref = torch.cat([Nl_pose, Nl_content], dim=3).reshape(B * Nl, 2, 131)
    mel = self.mel_encoder(T_mels.reshape(B * T, *T_mels.shape[2:])).flatten(1)
    pose = self.pose_encoder(T_pose.reshape(B * T, 2, 74)).flatten(1)
    ref = self.ref_encoder(ref).flatten(1)
    mel = self.Norm(mel).reshape(B, T, -1)
    pose = self.Norm(pose).reshape(B, T, -1)
    ref = self.Norm(ref).reshape(B, Nl, -1)
    out = self.fusion_transformer(ref, mel, pose)
    mouth = self.mouse_keypoint_map(out[:, Nl:Nl + T])
    jaw = self.jaw_keypoint_map(out[:, Nl + T:])
    content = torch.cat([jaw, mouth], dim=2).reshape(B, T, -1, 2)
    return content.reshape(B * T, -1, 2).permute(0, 2, 1)
