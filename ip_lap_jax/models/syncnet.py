"""SyncNet (`joonson/syncnet_python`, `SyncNetModel.S`): the audio-visual sync network
behind LSE-C / LSE-D (weights `syncnet_v2.model`).

Two towers, each a convolutional trunk and a two-layer head giving 1024-d embeddings:
  * audio: `netcnnaud` (Conv2d/BatchNorm/ReLU stack over a 13 x 20 MFCC patch) ->
    `netfcaud` (Linear 512->512, BatchNorm1d, ReLU, Linear 512->1024);
  * lips: `netcnnlip` (Conv3d/BatchNorm3d/ReLU stack over 5 frames of 224 x 224) ->
    `netfclip` (same head layout).

Submodules are named after the official Sequential indices under the converter's rule:
`netcnnaud.0.weight` -> params `netcnnaud_0/kernel`, `netcnnlip.1.running_var` ->
batch_stats `netcnnlip_1/var`, `netfcaud.3.bias` -> params `netfcaud_3/bias`. Conv3d
kernels keep PyTorch's rank 5, in Flax order (d, h, w, I, O).

A frozen scorer: BatchNorm (eps 1e-5) always uses the running statistics.

Inputs are what the original feeds: lips `[B, 5, 224, 224, 3]` float BGR in 0..255 (no
normalisation), MFCC `[B, 13, 20, 1]` (13 cepstra x 20 frames of 10 ms).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ip_lap_jax import ops
from ip_lap_jax.models import conv as conv_lib

Array = jax.Array

EMBEDDING_DIM = 1024
LIP_FRAMES = 5
LIP_SIZE = 224
MFCC_SHAPE = (13, 20)

_BN = functools.partial(nn.BatchNorm, use_running_average=True, momentum=0.9, epsilon=1e-5)


# Winograd F(4x4, 3x3) only from this many output pixels: on smaller maps its tiles'
# padding and transforms outweigh the saved products: XLA's convolution ran faster on
# every SyncNet 3x3 layer (13 x 13 lips, 13 x 20 and 11 x 9 audio), none of which
# reaches it.
_WINOGRAD_MIN_PIXELS = 28 * 28


def _winograd_pays(algorithm: conv_lib.Algorithm, in_channels: int, h: int, w: int) -> bool:
  """Whether a forward 3x3 convolution of an [*, h, w, in_channels] map takes Winograd."""
  return h * w >= _WINOGRAD_MIN_PIXELS and conv_lib.uses_winograd(algorithm, in_channels)


class Conv3d(nn.Module):
  """PyTorch's Conv3d without depth padding or depth stride, computed as a 2-D convolution.

  Params `kernel` [kd, kh, kw, Cin, Cout] and `bias` [Cout], as nn.Conv with a 3-D kernel
  would hold them. Every SyncNet Conv3d has kd = 5 (the stem, over the 5 frames of a
  window, or over a whole clip's frames for all its windows at once) or kd = 1, so each
  output depth step is a 2-D convolution of the kd input frames stacked on channels.
  That lets 3x3 layers on large maps use `conv`'s Winograd path on CPU and the strided
  stem use `_strided_conv_by_row_phases`; on CPU a stem over at least
  _DEPTH_WINOGRAD_OUTPUTS windows takes `_depth_winograd` instead (2.5x fewer products:
  overlapping windows share their frames). XLA's 3-D convolution was not compared.

  __call__(x: [B, D, H, W, Cin]) -> [B, D - kd + 1, Ho, Wo, Cout].
  """

  features: int
  kernel_size: tuple[int, int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)
  precision: Any = None
  conv_algorithm: conv_lib.Algorithm = "direct"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, d, h, w, cin = x.shape
    kd, kh, kw = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (kd, kh, kw, cin, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    dout = d - kd + 1

    def xla_conv(u: Array, v: Array) -> Array:
      return jax.lax.conv_general_dilated(
          u, v, self.strides, ops.conv_padding(self.padding),
          dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)

    cpu_paths = self.conv_algorithm != "direct" and self.precision is None
    if cpu_paths and kd > 1 and dout >= _DEPTH_WINOGRAD_OUTPUTS and self.padding == (0, 0) \
        and self.strides != (1, 1):
      # XLA's convolution of 3-channel planes beat the row phases (benchmarks/README.md).
      return _depth_winograd(x, kernel, xla_conv) + bias
    # [B, Dout, H, W, kd * Cin], depth-major channels to match the folded kernel.
    stacked = jnp.concatenate([x[:, t:t + dout] for t in range(kd)], axis=-1)
    stacked = stacked.reshape(b * dout, h, w, kd * cin)
    folded = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kd * cin, self.features)
    # 'mixed'/'winograd' (the CPU's resolution of 'auto') also take the row phases.
    if ((kh, kw), self.strides, self.padding) == ((3, 3), (1, 1), (1, 1)) and cpu_paths and \
        _winograd_pays(self.conv_algorithm, kd * cin, h, w):
      y = conv_lib.winograd_conv3x3(stacked, folded)
    elif cpu_paths and self.padding == (0, 0) and self.strides != (1, 1):
      y = _strided_conv_by_row_phases(stacked, folded, self.strides)
    elif cpu_paths and self.padding == (0, 0) and (kh, kw) == (h, w):
      # A kernel over the whole map (the last lip layer) is one matrix product, which
      # XLA's CPU backend ran several times faster than its convolution of the same sums.
      y = (stacked.reshape(b * dout, -1) @ folded.reshape(-1, self.features)
           ).reshape(b * dout, 1, 1, self.features)
    else:
      y = xla_conv(stacked, folded)
    y = y + bias
    return y.reshape(b, dout, *y.shape[1:])


# Outputs per block of the depth (time) Winograd transform: F(4, 5) computes 4 windows'
# stems from 8 frame-plane convolutions instead of 20.
_DEPTH_WINOGRAD_OUTPUTS = 4


@functools.cache
def _toom_cook(outputs: int, taps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Winograd's minimal filtering F(outputs, taps) for correlations y_k = sum_j g_j d_k+j.

  Returns (A^T [m, n], G [n, r], B^T [n, n]), n = m + r - 1, such that
  y = A^T ((G g) * (B^T d)): evaluation at the points 0, +-1, +-2, +-1/2, ... and
  infinity (Toom-Cook), transposed from polynomial multiplication to correlation.
  Float64; small points keep the float32 rounding within a few times direct summation's.
  """
  n = outputs + taps - 1
  points = [0.0]
  for p in (1.0, 2.0, 0.5, 3.0, 1 / 3):
    points += [p, -p]
  points = points[:n - 1]
  if len(points) < n - 1:
    raise ValueError(f"F({outputs}, {taps}) needs more interpolation points")

  def vandermonde(k: int) -> np.ndarray:  # rows: the points, then infinity
    rows = np.array([[p ** j for j in range(k)] for p in points])
    return np.vstack([rows, np.eye(k)[k - 1]])

  interpolate = np.linalg.inv(vandermonde(n))
  return vandermonde(outputs).T, vandermonde(taps), interpolate.T


def _depth_winograd(x: Array, kernel: Array, conv2d: Callable[[Array, Array], Array],
                    outputs: int = _DEPTH_WINOGRAD_OUTPUTS) -> Array:
  """An unpadded, depth-stride-1 Conv3d over a long depth (all windows of a clip at once).

  Output depth t sums conv2d(frame t + j, kernel[j]) over the kd taps: a correlation in
  depth whose products are 2-D convolutions, so Winograd's F(m, kd) applies with frame
  planes as the numbers: per block of m outputs, the m + kd - 1 input frames and the kd
  kernel taps are each mixed into m + kd - 1 planes (B^T, G), convolved pairwise, and
  mixed back (A^T). Same sums in exact arithmetic, (m + kd - 1) / (m kd) of the products.

  x: [B, D, H, W, Cin], kernel: [kd, kh, kw, Cin, Cout], conv2d: ([N, H, W, Cin],
  [kh, kw, Cin, Cout]) -> [N, Ho, Wo, Cout]. Returns [B, D - kd + 1, Ho, Wo, Cout].
  """
  b, d, h, w, cin = x.shape
  kd = kernel.shape[0]
  dout = d - kd + 1
  a_t, g, b_t = _toom_cook(outputs, kd)
  n = outputs + kd - 1
  blocks = -(-dout // outputs)
  # Zero frames complete the last block; the outputs that read them are dropped.
  x = jnp.pad(x, ((0, 0), (0, blocks * outputs + kd - 1 - d), (0, 0), (0, 0), (0, 0)))
  tiles = [x[:, j:j + (blocks - 1) * outputs + 1:outputs] for j in range(n)]  # [B, blocks, ...]
  planes = conv_lib.linear_combinations(b_t, tiles)
  taps = conv_lib.linear_combinations(g, [kernel[j] for j in range(kd)])
  products = [conv2d(u.reshape(b * blocks, h, w, cin), v) for u, v in zip(planes, taps)]
  y = jnp.stack(conv_lib.linear_combinations(a_t, products), axis=1)
  y = y.reshape(b, blocks * outputs, *y.shape[2:])  # [B * blocks, m, ...] in depth order
  return y[:, :dout]


# Windows per matrix product in `_strided_conv_by_row_phases`: its two intermediates take
# about 30 MB per window on the lip stem, and small chunks stay nearer the caches.
_ROW_PHASE_CHUNK = 4


def _strided_conv_by_row_phases(x: Array, kernel: Array, strides: tuple[int, int],
                                chunk: int = _ROW_PHASE_CHUNK) -> Array:
  """An unpadded strided convolution as one matrix product per chunk of the batch.

  XLA's CPU convolution runs the first lip layer (15 input channels, 7x7, stride 2) far
  below its speed on wide layers, and so did kh products of the column taps gathered
  into channels, one per kernel row: their strided row slices were copied before each
  product and cost more than the products. Here row r = sh * a + p is stored as row
  group a, phase p on channels, so the kernel rows sh * q + p become one
  [B*Hg*Wo, sh*kw*Cin] x [sh*kw*Cin, qh*Cout] product over every row group (kernel rows
  past kh are zero), and output row o sums the q-th slice of row group o + q. Same sums
  up to exact zero terms, other order: float32 rounding only.

  x: [B, H, W, Cin], kernel: [kh, kw, Cin, Cout] -> [B, Ho, Wo, Cout].
  """
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  b, h, w, _ = x.shape
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  qh = -(-kh // sh)
  groups = ho - 1 + qh  # row groups that some output row reads
  # Zero rows complete the last group; they meet only the zero kernel rows.
  x = jnp.pad(x[:, :groups * sh], ((0, 0), (0, max(0, groups * sh - h)), (0, 0), (0, 0)))
  k = jnp.pad(kernel, ((0, qh * sh - kh), (0, 0), (0, 0), (0, 0)))
  k = k.reshape(qh, sh * kw * cin, cout).transpose(1, 0, 2).reshape(sh * kw * cin, qh * cout)

  def part(xc: Array) -> Array:
    n = xc.shape[0]
    cols = jnp.stack([xc[:, :, j:j + (wo - 1) * sw + 1:sw] for j in range(kw)], axis=3)
    cols = cols.reshape(n, groups, sh, wo, kw * cin).transpose(0, 1, 3, 2, 4)
    z = (cols.reshape(n, groups, wo, sh * kw * cin) @ k).reshape(n, groups, wo, qh, cout)
    return functools.reduce(jnp.add, [z[:, q:q + ho, :, q] for q in range(qh)])

  return jnp.concatenate([part(x[i:i + chunk]) for i in range(0, b, chunk)])


def _max_pool(x: Array, window: tuple[int, int], strides: tuple[int, int],
              padding: int = 0) -> Array:
  """PyTorch's MaxPool2d (or MaxPool3d with a depth-1 window) on [..., H, W, C]: padded
  positions never win (-inf padding, as PyTorch's).

  Maxima of strided slices, columns then rows: XLA's CPU reduce_window ran several times
  slower on the lip maps. A maximum is exact in any order.
  """
  if padding:
    pad = [(0, 0)] * (x.ndim - 3) + [(padding, padding)] * 2 + [(0, 0)]
    x = jnp.pad(x, pad, constant_values=-jnp.inf)
  (kh, kw), (sh, sw) = window, strides
  ho = (x.shape[-3] - kh) // sh + 1
  wo = (x.shape[-2] - kw) // sw + 1
  cols = functools.reduce(jnp.maximum, [x[..., j:j + (wo - 1) * sw + 1:sw, :] for j in range(kw)])
  return functools.reduce(jnp.maximum,
                          [cols[..., i:i + (ho - 1) * sh + 1:sh, :, :] for i in range(kh)])


class SyncNet(nn.Module):
  """`SyncNetModel.S` with its default `num_layers_in_fc_layers=1024`.

  Attributes:
    precision: passed to every convolution and matrix product (e.g.
      `jax.lax.Precision.HIGHEST` to keep GPUs off TF32). None keeps XLA's default.
    conv_algorithm: 'direct' (XLA's convolutions), or 'mixed' / 'winograd' (Winograd 3x3
      convolutions and the stem as row products: the CPU's resolution of a spec's 'auto',
      `models.registry.build`); speed only.
  """

  precision: Any = None
  conv_algorithm: conv_lib.Algorithm = "direct"

  @nn.compact
  def __call__(self, clips: Array | None = None, mfcc: Array | None = None
               ) -> tuple[Array | None, Array | None]:
    """Embeds either input or both (`init` passes both to create every layer).

    Args:
      clips: [B, D, 224, 224, 3] BGR in 0..255, D >= 5 frames: every window of 5
        consecutive frames is embedded (D = 5: the original's input), or None.
      mfcc: [B', 13, 20, 1], or None.
    Returns:
      (lip embeddings [B * (D - 4), 1024] (clip-major, then window) or None, audio
      embeddings [B', 1024] or None).
    """
    def head(x, prefix):
      x = nn.Dense(512, precision=self.precision, name=f"{prefix}_0")(x)
      x = nn.relu(_BN(name=f"{prefix}_1")(x))
      return nn.Dense(EMBEDDING_DIM, precision=self.precision, name=f"{prefix}_3")(x)

    def aud_block(x, index, features, kernel=(3, 3), padding=1):
      if kernel == (3, 3) and padding == 1 and self.precision is None:
        small = not _winograd_pays(self.conv_algorithm, x.shape[-1], *x.shape[1:3])
        x = conv_lib.Conv3x3(features, algorithm="direct" if small else self.conv_algorithm,
                             name=f"netcnnaud_{index}")(x)
      else:
        x = nn.Conv(features, kernel, padding=ops.conv_padding(padding),
                    precision=self.precision, name=f"netcnnaud_{index}")(x)
      return nn.relu(_BN(name=f"netcnnaud_{index + 1}")(x))

    def lip_block(x, index, features, kernel, strides=(1, 1), padding=(0, 0)):
      x = Conv3d(features, kernel, strides, padding, self.precision, self.conv_algorithm,
                 name=f"netcnnlip_{index}")(x)
      return nn.relu(_BN(name=f"netcnnlip_{index + 1}")(x))

    lip = aud = None
    if clips is not None:
      x = lip_block(clips, 0, 96, (5, 7, 7), (2, 2))  # [B, 1, 109, 109, 96]
      x = _max_pool(x, (3, 3), (2, 2))  # 54 x 54
      x = lip_block(x, 4, 256, (1, 5, 5), (2, 2), (1, 1))  # 26 x 26
      x = _max_pool(x, (3, 3), (2, 2), padding=1)  # 13 x 13
      for index in (8, 11, 14):
        x = lip_block(x, index, 256, (1, 3, 3), padding=(1, 1))
      x = _max_pool(x, (3, 3), (2, 2))  # 6 x 6
      x = lip_block(x, 18, 512, (1, 6, 6))  # [B, D - 4, 1, 1, 512]
      lip = head(x.reshape(-1, x.shape[-1]), "netfclip")
    if mfcc is not None:
      x = aud_block(mfcc, 0, 64)  # index 3 is MaxPool2d((1, 1)): the identity
      x = _max_pool(aud_block(x, 4, 192), (3, 3), (1, 2))  # [B, 11, 9, 192]
      x = aud_block(x, 8, 384)
      x = aud_block(x, 11, 256)
      x = _max_pool(aud_block(x, 14, 256), (3, 3), (2, 2))  # [B, 5, 4, 256]
      x = aud_block(x, 18, 512, kernel=(5, 4), padding=0)  # [B, 1, 1, 512]
      aud = head(x.reshape(x.shape[0], -1), "netfcaud")
    return lip, aud

  def forward_lip(self, clips: Array) -> Array:
    """clips: [B, D, 224, 224, 3] BGR in 0..255 -> [B * (D - 4), 1024] (`S.forward_lip`
    for D = 5)."""
    return self(clips=clips)[0]

  def forward_aud(self, mfcc: Array) -> Array:
    """mfcc: [B, 13, 20, 1] -> [B, 1024] (`S.forward_aud`)."""
    return self(mfcc=mfcc)[1]
