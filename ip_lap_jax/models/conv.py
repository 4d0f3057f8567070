"""3x3 convolutions (stride 1, padding 1) by Winograd's minimal filtering F(4x4, 3x3).

Most of the renderer's arithmetic is in 3x3 convolutions, which XLA's CPU backend runs
far below the machine's peak (figures: benchmarks/README.md), while Winograd's algorithm
computes the same
convolution with 4x fewer multiplications: each 6x6 input tile and the 3x3 kernel are
transformed (`B^T d B`, `G g G^T`), multiplied channel-wise as 36 batched matrix
products, and transformed back (`A^T m A`) into a 4x4 output tile. It is exact in real
arithmetic; its float32 rounding is a few times a direct convolution's (points below),
well inside the project's 1e-4 parity tolerance. cuDNN and oneDNN pick Winograd kernels
themselves, so a config's `conv_algorithm="auto"` resolves to it (`resolve_algorithm`) on
the CPU backend only, and only for float32 or float64 compute (bfloat16 would amplify its
rounding).

Gradients run by Winograd too: the input gradient is the same kind of convolution, and
the kernel gradient is the transposed algorithm (`_winograd_kernel_grad`). XLA's CPU
backend computes kernel gradients at about half its forward speed, so under
differentiation Winograd wins even on the narrow layers where a forward pass alone does
not (`winograd_if_differentiated`).

The transforms are the Toom-Cook matrices for the interpolation points
(0, 3/2, -3/2, 2/3, -2/3, inf), the lowest float32 error among 1001 sets of small
rational points tried (rms 1.7x a direct float32 convolution's, against 3.9x for the
common (0, 1, -1, 2, -2)); `tests/test_conv.py` checks that they are exact.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
# 'mixed': Winograd for layers of >= WINOGRAD_MIN_CHANNELS inputs, and for every layer
# under differentiation; XLA's own convolution for the narrow layers' forward pass.
Algorithm = Literal["mixed", "winograd", "direct"]


def _matrices(at: list[list[float]], g: list[list[float]], bt: list[list[float]]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  return tuple(np.array(x, dtype=np.float64) for x in (at, g, bt))


# Output tile m -> (A^T [m, a], G [a, 3], B^T [a, a]), a = m + 2, Toom-Cook matrices for
# the finite interpolation points named (plus the point at infinity).
WINOGRAD_TRANSFORMS: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
    # points 0, 1, -1
    2: _matrices(
        [[1, 1, 1, 0], [0, 1, -1, 1]],
        [[-1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        [[-1, 0, 1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]]),
    # points 0, -1, 2, 2/3
    3: _matrices(
        [[1, 1, 1, 1, 0], [0, -1, 2, 2 / 3, 0], [0, 1, 4, 4 / 9, 1]],
        [[3 / 4, 0, 0], [-1 / 5, 1 / 5, -1 / 5], [1 / 8, 1 / 4, 1 / 2],
         [-27 / 40, -9 / 20, -3 / 10], [0, 0, 1]],
        [[4 / 3, -4 / 3, -5 / 3, 1, 0], [0, 4 / 3, -8 / 3, 1, 0], [0, -2 / 3, 1 / 3, 1, 0],
         [0, -2, -1, 1, 0], [0, 4 / 3, -4 / 3, -5 / 3, 1]]),
    # points 0, 3/2, -3/2, 2/3, -2/3
    4: _matrices(
        [[1, 1, 1, 1, 1, 0], [0, 3 / 2, -3 / 2, 2 / 3, -2 / 3, 0],
         [0, 9 / 4, 9 / 4, 4 / 9, 4 / 9, 0], [0, 27 / 8, -27 / 8, 8 / 27, -8 / 27, 1]],
        [[1, 0, 0], [8 / 65, 12 / 65, 18 / 65], [8 / 65, -12 / 65, 18 / 65],
         [-81 / 130, -27 / 65, -18 / 65], [-81 / 130, 27 / 65, -18 / 65], [0, 0, 1]],
        [[1, 0, -97 / 36, 0, 1, 0], [0, -2 / 3, -4 / 9, 3 / 2, 1, 0],
         [0, 2 / 3, -4 / 9, -3 / 2, 1, 0], [0, -3 / 2, -9 / 4, 2 / 3, 1, 0],
         [0, 3 / 2, -9 / 4, -2 / 3, 1, 0], [0, 1, 0, -97 / 36, 0, 1]]),
}


def _conv(x: Array, kernel: Array, stride: int, padding: int) -> Array:
  """XLA's convolution, NHWC x HWIO, symmetric padding (PyTorch's `padding=p`)."""
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding),) * 2,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_with_params(module: nn.Module, x: Array, kernel_size: int, kernel_init: Any,
                      conv_fn) -> Array:
  """nn.Conv's parameters (`kernel` [k, k, Cin, features], optional `bias`, float32) and
  compute-dtype casts around `conv_fn(x, kernel)`; called from a module's compact method."""
  chex.assert_rank(x, 4)
  kernel = module.param("kernel", kernel_init,
                        (kernel_size, kernel_size, x.shape[-1], module.features), jnp.float32)
  y = conv_fn(x.astype(module.dtype), kernel.astype(module.dtype))
  if module.use_bias:
    bias = module.param("bias", nn.initializers.zeros, (module.features,), jnp.float32)
    y = y + bias.astype(module.dtype)
  return y


def linear_combinations(matrix: np.ndarray, terms: list[Array]) -> list[Array]:
  """Rows of a small constant matrix applied to a list of arrays, skipping zero entries.

  Written as sums of scaled arrays (not a dot with the matrix) so XLA fuses each output
  into one elementwise pass over the terms it needs.
  """
  out = []
  for row in matrix:
    acc = None
    for coef, term in zip(row, terms):
      if coef == 0:
        continue
      scaled = term if coef == 1 else -term if coef == -1 else term * coef.astype(term.dtype)
      acc = scaled if acc is None else acc + scaled
    out.append(acc)
  return out


def _winograd_input_tiles(x: Array, output_tile: int) -> tuple[Array, int, int]:
  """`B^T d B` of every (m + 2)-square input tile: x [B, H, W, Cin] -> ([a * a, tiles,
  Cin], tiles_h, tiles_w), tiles = B * tiles_h * tiles_w.

  Tiles overlap by two pixels and start every m pixels of the zero-padded input (the
  convolution's one pixel, plus whatever completes the last tile).
  """
  bt = WINOGRAD_TRANSFORMS[output_tile][2]
  m = output_tile
  alpha = m + 2
  b, h, w, cin = x.shape
  tiles_h, tiles_w = -(-h // m), -(-w // m)
  xp = jnp.pad(x, ((0, 0), (1, tiles_h * m + 1 - h), (1, tiles_w * m + 1 - w), (0, 0)))
  bt = bt.astype(np.dtype(x.dtype.name))
  rows = linear_combinations(bt, [xp[:, i:i + tiles_h * m:m] for i in range(alpha)])
  v = jnp.stack([jnp.stack(linear_combinations(bt, [r[:, :, j:j + tiles_w * m:m] for j in range(alpha)]))
                 for r in rows])  # [alpha, alpha, B, tiles_h, tiles_w, Cin]
  return v.reshape(alpha * alpha, b * tiles_h * tiles_w, cin), tiles_h, tiles_w


def _winograd_conv3x3(x: Array, kernel: Array, output_tile: int) -> Array:
  """Forward computation of `winograd_conv3x3` (see there)."""
  chex.assert_rank([x, kernel], [4, 4])
  chex.assert_axis_dimension(kernel, 0, 3)
  chex.assert_axis_dimension(kernel, 1, 3)
  at, g, _ = WINOGRAD_TRANSFORMS[output_tile]
  m, alpha = at.shape
  b, h, w, cin = x.shape
  v, tiles_h, tiles_w = _winograd_input_tiles(x, m)
  cout = kernel.shape[-1]
  g = jnp.asarray(g, kernel.dtype)
  u = jnp.einsum("ik,klcd,jl->ijcd", g, kernel, g, precision=jax.lax.Precision.HIGHEST)
  prod = jnp.einsum("ptc,pcd->ptd", v, u.reshape(alpha * alpha, cin, cout))
  # The output transform as one dot with kron(A^T, A^T) [m*m, a*a]: XLA runs it several
  # times faster than the separable form's strided slices and stacks.
  a_kron = np.kron(at, at).astype(np.dtype(x.dtype.name))
  y = jnp.einsum("kp,ptd->ktd", a_kron, prod)  # [m*m, tiles, Cout]
  y = y.reshape(m, m, b, tiles_h, tiles_w, cout).transpose(2, 3, 0, 4, 1, 5)
  y = y.reshape(b, tiles_h * m, tiles_w * m, cout)
  return y[:, :h, :w]


def _winograd_kernel_grad(x: Array, dy: Array, output_tile: int) -> Array:
  """The kernel gradient of `_winograd_conv3x3`, by the transpose of its algorithm.

  Per tile the forward computes y = A^T [(G g G^T) * (B^T d B)] A, so the kernel
  cotangent is G^T [sum over tiles of (B^T d B) * (A dy A^T)] G: 36 matrix products
  [Cin, tiles] x [tiles, Cout], 4x fewer multiplications than the direct sum over pixels
  (which XLA's CPU backend also runs at half its forward speed).

  Args:
    x: [B, H, W, Cin] the forward input; dy: [B, H, W, Cout] the output cotangent.
  Returns:
    [3, 3, Cin, Cout] in x's dtype.
  """
  at, g, _ = WINOGRAD_TRANSFORMS[output_tile]
  m, alpha = at.shape
  b, h, w, cin = x.shape
  v, tiles_h, tiles_w = _winograd_input_tiles(x, m)
  cout = dy.shape[-1]
  # Zero cotangent on the rows and columns that only complete the last tiles.
  dy = jnp.pad(dy, ((0, 0), (0, tiles_h * m - h), (0, tiles_w * m - w), (0, 0)))
  dy = dy.reshape(b, tiles_h, m, tiles_w, m, cout).transpose(2, 4, 0, 1, 3, 5)
  dy = dy.reshape(m * m, b * tiles_h * tiles_w, cout)
  a_kron = np.kron(at.T, at.T).astype(np.dtype(x.dtype.name))  # [a*a, m*m]
  dm = jnp.einsum("pk,ktd->ptd", a_kron, dy)
  du = jnp.einsum("ptc,ptd->pcd", v, dm).reshape(alpha, alpha, cin, cout)
  g = jnp.asarray(g, du.dtype)
  return jnp.einsum("ki,klcd,lj->ijcd", g, du, g, precision=jax.lax.Precision.HIGHEST)


def _patch_kernel_grad(x: Array, dy: Array, k: int, stride: int, padding: int) -> Array:
  """d(sum(conv(x, w) * dy)) / dw = sum over output pixels of patch x cotangent: [k, k, Cin, Cout].

  Patches are k*k strided slices stacked on a new axis, then one dot. XLA's CPU backend
  would compute this gradient as a convolution whose window is the whole activation map,
  through a generic, slow path (benchmarks/README.md).
  """
  ho, wo = dy.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  patches = jnp.stack([xp[:, i:i + (ho - 1) * stride + 1:stride, j:j + (wo - 1) * stride + 1:stride]
                       for i in range(k) for j in range(k)], axis=3)  # [B, Ho, Wo, k*k, Cin]
  return jnp.einsum("bhwtc,bhwo->tco", patches, dy).reshape(k, k, x.shape[-1], dy.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def winograd_conv3x3(x: Array, kernel: Array, output_tile: int = 4) -> Array:
  """PyTorch's Conv2d(k=3, stride=1, padding=1) without bias, by Winograd F(m x m, 3 x 3).

  The input gradient is the same kind of convolution (flipped kernel, channels swapped),
  so it runs by Winograd too, and so does the kernel gradient (`_winograd_kernel_grad`).
  Autodiff of the transforms instead would scatter through strided slices, slower than
  XLA's own convolution gradients.

  Args:
    x: [B, H, W, Cin].
    kernel: [3, 3, Cin, Cout] (HWIO, Flax's layout), same dtype as x.
    output_tile: m, 2, 3 or 4 (a larger tile: fewer multiplications, more rounding).
  Returns:
    [B, H, W, Cout] in x's dtype.
  """
  return _winograd_conv3x3(x, kernel, output_tile)


def _winograd_fwd(x: Array, kernel: Array, output_tile: int) -> tuple[Array, tuple[Array, Array]]:
  return _winograd_conv3x3(x, kernel, output_tile), (x, kernel)


def _winograd_bwd(output_tile: int, residuals: tuple[Array, Array], dy: Array
                  ) -> tuple[Array, Array]:
  x, kernel = residuals
  flipped = jnp.flip(kernel, axis=(0, 1)).swapaxes(2, 3)  # [3, 3, Cout, Cin]
  dx = _winograd_conv3x3(dy, flipped, output_tile)
  return dx, _winograd_kernel_grad(x, dy, output_tile).astype(kernel.dtype)


winograd_conv3x3.defvjp(_winograd_fwd, _winograd_bwd)


def direct_conv3x3(x: Array, kernel: Array) -> Array:
  """The same convolution by XLA's convolution (what `nn.Conv` computes)."""
  return _conv(x, kernel, 1, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def winograd_if_differentiated(x: Array, kernel: Array, output_tile: int = 4) -> Array:
  """XLA's convolution in a forward-only pass; Winograd's forward, input and kernel
  gradients when differentiated (JAX calls a custom VJP's forward rule only then).

  For layers too narrow for a Winograd forward pass to beat XLA's: with the kernel
  gradient in the work it does, Winograd wins (benchmarks/README.md). Both paths compute the same
  convolution; they differ by float32 rounding only.
  """
  return direct_conv3x3(x, kernel)


winograd_if_differentiated.defvjp(_winograd_fwd, _winograd_bwd)


# Below this many input channels a forward pass by F(4x4) costs more than XLA's own
# (benchmarks/README.md, 'Winograd').
WINOGRAD_MIN_CHANNELS = 128


def resolve_algorithm(setting: str, dtype: Any, backend: str) -> Algorithm:
  """The concrete algorithm for a config's `conv_algorithm` setting on `backend`.

  'auto' is resolved here, once, where a model is built (`models.registry.build`), so a
  module's numerics never depend on process state at trace time: 'mixed' on the CPU
  backend in float32/64, 'direct' elsewhere (cuDNN and oneDNN pick Winograd kernels
  themselves; bfloat16 would amplify its rounding). Concrete settings pass through.
  """
  if setting in ("mixed", "winograd", "direct"):
    return setting  # type: ignore[return-value]
  if setting != "auto":
    raise ValueError(f"conv_algorithm must be 'auto', 'mixed', 'winograd' or 'direct', "
                     f"got {setting!r}")
  cpu_float = backend == "cpu" and jnp.dtype(dtype) in (jnp.float32, jnp.float64)
  return "mixed" if cpu_float else "direct"


def uses_winograd(algorithm: Algorithm, in_channels: int, differentiated: bool = False) -> bool:
  """Whether `Conv3x3` computes by Winograd for this algorithm and input width, in a
  forward-only pass or (`differentiated`) inside a gradient computation."""
  if algorithm == "winograd":
    return True
  if algorithm == "direct":
    return False
  if algorithm != "mixed":
    raise ValueError(f"conv algorithm must be 'mixed', 'winograd' or 'direct' (resolve "
                     f"'auto' with resolve_algorithm where the model is built), got {algorithm!r}")
  return differentiated or in_channels >= WINOGRAD_MIN_CHANNELS


class Conv3x3(nn.Module):
  """Drop-in for `nn.Conv(features, (3, 3), padding=1)`: same params (`kernel` [3, 3,
  Cin, Cout], `bias`), same initialisers, same output; x: [B, H, W, Cin] -> [B, H, W, C].

  Attributes:
    features: output channels.
    use_bias: add `bias` as nn.Conv does.
    dtype: compute dtype (params stay float32).
    algorithm: 'mixed' (Winograd from WINOGRAD_MIN_CHANNELS input channels, and for every
      layer under differentiation; XLA's convolution elsewhere), 'winograd' or 'direct'.
      `resolve_algorithm` turns a config's 'auto' into one of these.
    output_tile: Winograd's m (2, 3 or 4): 4 is fastest; 2 rounds like a direct
      convolution, for layers whose errors the network amplifies.
  """

  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32
  algorithm: Algorithm = "direct"
  output_tile: int = 4

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cin, tile = x.shape[-1], self.output_tile
    if uses_winograd(self.algorithm, cin):
      conv_fn = lambda x, k: winograd_conv3x3(x, k, tile)  # noqa: E731
    elif uses_winograd(self.algorithm, cin, differentiated=True):
      conv_fn = lambda x, k: winograd_if_differentiated(x, k, tile)  # noqa: E731
    else:
      conv_fn = direct_conv3x3
    return _conv_with_params(self, x, 3, nn.initializers.lecun_normal(), conv_fn)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d_matmul_kernel_grad(x: Array, kernel: Array, stride: int, padding: int) -> Array:
  """A square-kernel convolution whose kernel gradient is one matrix product.

  XLA's CPU backend computes the discriminator's 4x4 kernel gradients on 16x16 maps
  through a generic, slow convolution path (once half of a renderer train step;
  benchmarks/README.md). `_patch_kernel_grad` makes it one dot.

  Args:
    x: [B, H, W, Cin]; kernel: [k, k, Cin, Cout]; stride, padding: PyTorch's (symmetric).
  Returns:
    [B, Ho, Wo, Cout], Ho = (H + 2 * padding - k) // stride + 1.
  """
  return _conv(x, kernel, stride, padding)


def _conv_fwd(x: Array, kernel: Array, stride: int, padding: int) -> tuple[Array, tuple[Array, Array]]:
  return _conv(x, kernel, stride, padding), (x, kernel)


def _conv_bwd(stride: int, padding: int, residuals: tuple[Array, Array], dy: Array
              ) -> tuple[Array, Array]:
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda x_: _conv(x_, kernel, stride, padding), x)
  (dx,) = input_vjp(dy)
  return dx, _patch_kernel_grad(x, dy, kernel.shape[0], stride, padding).astype(kernel.dtype)


conv2d_matmul_kernel_grad.defvjp(_conv_fwd, _conv_bwd)


class Conv(nn.Module):
  """Drop-in for `nn.Conv(features, (k, k), strides=s, padding=p)` (same params and
  initialisers) whose kernel gradient is a matrix product (`conv2d_matmul_kernel_grad`).

  Attributes:
    features: output channels.
    kernel_size: k (square).
    stride: s.
    padding: p, symmetric as PyTorch's.
    use_bias: add `bias` as nn.Conv does.
    dtype: compute dtype (params stay float32).
    kernel_init: as nn.Conv's.
  """

  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [B, H, W, Cin] -> [B, Ho, Wo, features]."""
    return _conv_with_params(
        self, x, self.kernel_size, self.kernel_init,
        lambda x, k: conv2d_matmul_kernel_grad(x, k, self.stride, self.padding))
