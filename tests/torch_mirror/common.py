"""Helpers shared by the PyTorch mirrors: non-trivial BatchNorm statistics, and saving a
module in the release's checkpoint format. Tests and benchmarks only (imports torch)."""

from __future__ import annotations

import os
from typing import Mapping

import torch
from torch import nn

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def randomize_batchnorm_stats(module: nn.Module, seed: int = 0) -> nn.Module:
  """Gives every BatchNorm random affine params, running stats and num_batches_tracked.

  Fresh BatchNorms (mean 0, var 1, weight 1, bias 0) are the identity in eval mode, so a
  parity test with them would not notice a mistaken mean/var mapping or transposition.
  Variances lie in [0.5, 2] to keep activations in a sane range. Returns `module`.
  """
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, _BATCH_NORMS):
        n = m.num_features
        m.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
        m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
        if m.affine:
          m.weight.copy_(0.75 + 0.5 * torch.rand(n, generator=generator))
          m.bias.copy_(0.2 * torch.randn(n, generator=generator))
        m.num_batches_tracked.fill_(int(torch.randint(1, 100000, (), generator=generator)))
  return module


def save_official_checkpoint(
    module_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    data_parallel_prefix: bool = False,
    training_extras: bool = False,
) -> dict[str, torch.Tensor]:
  """Saves in the release's format: `{'state_dict': ...}` (+ training state if asked).

  Args:
    module_or_state_dict: a module (its state_dict is saved) or a state_dict.
    path: output .pth.
    data_parallel_prefix: prefix every key with `module.`, as a DataParallel model saves.
    training_extras: add `optimizer` (an Adam state over the parameters), `global_step`
      and `global_epoch`, as the release's training scripts save them.
  Returns:
    the state_dict as written.
  """
  if isinstance(module_or_state_dict, nn.Module):
    state = module_or_state_dict.state_dict()
  else:
    state = dict(module_or_state_dict)
  prefix = "module." if data_parallel_prefix else ""
  state = {prefix + k: v.detach().clone() for k, v in state.items()}
  checkpoint: dict[str, object] = {"state_dict": state}
  if training_extras:
    params = [v.clone().requires_grad_(True) for v in state.values() if v.is_floating_point()]
    optimizer = torch.optim.Adam(params, lr=1e-4)
    checkpoint.update(optimizer=optimizer.state_dict(), global_step=1234, global_epoch=5)
  torch.save(checkpoint, os.fspath(path))
  return state
