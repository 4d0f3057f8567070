"""Audio-to-landmark generator (IP_LAP's `Landmark_generator`) in Flax linen.

Three ConvBN encoders embed the mel windows, the window's pose landmarks and the
reference landmarks; one shared LayerNorm `Norm` normalises all three; a transformer
encoder fuses [ref (Nl), audio (T), pose (T)] tokens; two linear heads read the audio
tokens (mouth, 40 points) and the pose tokens (jaw, 17 points).

Submodule names are the official attribute paths under the converter's rule
(`mel_encoder_0`, `fusion_transformer/transformer_encoder/layers_0/self_attn/in_proj`, ...),
so `ip_lap_jax.convert` maps a release checkpoint onto this module by rule.

Layouts: landmarks are [..., points, 2] with the last axis (x, y); the release's
(..., 2, points) is transposed only at the edges (converter, tests).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ip_lap_jax.models.layers import MelEncoder, LayerSpec, conv_bn_stack

Array = jax.Array

NUM_POSE = 74
NUM_CONTENT = 57
NUM_JAW = 17
NUM_MOUTH = 40
# Embedding(4, 512) rows: 0 is padding, then one row per token kind.
MODALITY_POSE, MODALITY_AUDIO, MODALITY_REF = 1, 2, 3

# The release's `models/landmark_generator.py`: (features, kernel, stride, padding, residual).
REF_ENCODER_LAYERS: tuple[LayerSpec, ...] = (
    (4, 3, 1, 1, False),
    (8, 3, 2, 1, False), (8, 3, 1, 1, True), (8, 3, 1, 1, True),
    (16, 3, 2, 1, False), (16, 3, 1, 1, True), (16, 3, 1, 1, True),
    (32, 3, 2, 1, False), (32, 3, 1, 1, True), (32, 3, 1, 1, True),
    (64, 3, 2, 1, False), (64, 3, 1, 1, True), (64, 3, 1, 1, True),
    (128, 3, 2, 1, False), (128, 3, 1, 1, True), (128, 3, 1, 1, True),
    (256, 3, 2, 1, False), (256, 3, 1, 1, True),
    (512, 3, 1, 0, False),
    (512, 1, 1, 0, False),
)
POSE_ENCODER_LAYERS: tuple[LayerSpec, ...] = (
    (4, 3, 1, 1, False),
    (8, 3, 1, 1, False), (8, 3, 1, 1, True), (8, 3, 1, 1, True),
    (16, 3, 2, 1, False), (16, 3, 1, 1, True), (16, 3, 1, 1, True),
    (32, 3, 2, 1, False), (32, 3, 1, 1, True), (32, 3, 1, 1, True),
    (64, 3, 2, 1, False), (64, 3, 1, 1, True), (64, 3, 1, 1, True),
    (128, 3, 2, 1, False), (128, 3, 1, 1, True), (128, 3, 1, 1, True),
    (256, 3, 2, 1, False), (256, 3, 1, 1, True), (256, 3, 1, 1, True),
    (512, 3, 1, 0, False),
    (512, 1, 1, 0, True),
)

# The release's Linear init (weight_init): xavier-normal weights, zero bias. MHA's packed
# in_proj is xavier-uniform over the whole (3d, d) matrix, as torch initialises it.
_DENSE_INIT = dict(kernel_init=nn.initializers.xavier_normal(), bias_init=nn.initializers.zeros)


def sinusoid_table(max_len: int = 512, d_model: int = 512) -> np.ndarray:
  """The release's PositionalEmbedding buffer `pe`: [1, max_len, d_model] float32.

  Even columns sin(pos*div), odd columns cos(pos*div), div = exp(arange(0, d, 2) *
  -ln(10000)/d), computed in float32 as the release does.
  """
  position = np.arange(max_len, dtype=np.float32)[:, None]
  div = np.exp(np.arange(0, d_model, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / d_model))
  angles = (position * div).astype(np.float32)
  table = np.zeros((max_len, d_model), np.float32)
  table[:, 0::2] = np.sin(angles)
  table[:, 1::2] = np.cos(angles)
  return table[None]


def _layer_norm(name: str, dtype: Any) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5, dtype=dtype, name=name)


class SelfAttention(nn.Module):
  """torch.nn.MultiheadAttention (self-attention, batch_first), no mask.

  Params mirror the release: `in_proj` (kernel [d, 3d] = in_proj_weight.T, q k v stacked
  in that order) and `out_proj`. Dropout acts on the attention weights, as in torch.

  x: [B, L, d] -> [B, L, d].
  """

  num_heads: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    batch, length, d_model = x.shape
    head_dim = d_model // self.num_heads
    qkv = nn.Dense(3 * d_model, dtype=self.dtype, name="in_proj",
                   kernel_init=nn.initializers.xavier_uniform(),
                   bias_init=nn.initializers.zeros)(x)
    q, k, v = (t.reshape(batch, length, self.num_heads, head_dim)
               for t in jnp.split(qkv, 3, axis=-1))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q / math.sqrt(head_dim), k)
    # Softmax in float32 even under bfloat16 compute: the normaliser is precision-sensitive.
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.dropout)(weights, deterministic=not train)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, d_model)
    return nn.Dense(d_model, dtype=self.dtype, name="out_proj", **_DENSE_INIT)(out)


class TransformerEncoderLayer(nn.Module):
  """torch.nn.TransformerEncoderLayer: post-norm, ReLU, eps 1e-5. x: [B, L, d] -> same."""

  num_heads: int
  dim_feedforward: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    d_model = x.shape[-1]
    drop = lambda y: nn.Dropout(self.dropout)(y, deterministic=not train)
    attn = SelfAttention(self.num_heads, self.dropout, self.dtype, name="self_attn")(x, train=train)
    x = _layer_norm("norm1", self.dtype)(x + drop(attn))
    h = nn.relu(nn.Dense(self.dim_feedforward, dtype=self.dtype, name="linear1", **_DENSE_INIT)(x))
    h = nn.Dense(d_model, dtype=self.dtype, name="linear2", **_DENSE_INIT)(drop(h))
    return _layer_norm("norm2", self.dtype)(x + drop(h))


class TransformerEncoder(nn.Module):
  """A stack of `num_layers` encoder layers named `layers_<l>`. x: [B, L, d] -> same."""

  num_layers: int
  num_heads: int
  dim_feedforward: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    for layer in range(self.num_layers):
      x = TransformerEncoderLayer(self.num_heads, self.dim_feedforward, self.dropout,
                                  self.dtype, name=f"layers_{layer}")(x, train=train)
    return x


class FusionTransformer(nn.Module):
  """The release's `Fusion_transformer_encoder`.

  Tokens: ref + modality[3] (no position); audio + pe[:T] + modality[2]; pose + pe[:T] +
  modality[1]; sequence [ref, audio, pose] -> dropout -> transformer encoder. The
  positional tables (`position_v.pe`, `position_a.pe` in the checkpoint) are the same
  fixed sinusoid and are constants here, not parameters.

  ref: [B, Nl, d], audio: [B, T, d], pose: [B, T, d] -> [B, Nl + 2T, d].
  """

  d_model: int = 512
  nlayers: int = 4
  nhead: int = 4
  dim_feedforward: int = 1024
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ref: Array, audio: Array, pose: Array, *, train: bool) -> Array:
    chex.assert_equal_shape((audio, pose))
    length = audio.shape[1]
    pe = jnp.asarray(sinusoid_table(max(length, 1), self.d_model)[:, :length], self.dtype)
    modality = nn.Embed(4, self.d_model, dtype=self.dtype, name="modality")
    codes = modality(jnp.array([MODALITY_POSE, MODALITY_AUDIO, MODALITY_REF]))
    tokens = jnp.concatenate(
        [ref + codes[2], audio + pe + codes[1], pose + pe + codes[0]], axis=1)
    tokens = nn.Dropout(self.dropout)(tokens, deterministic=not train)
    return TransformerEncoder(self.nlayers, self.nhead, self.dim_feedforward, self.dropout,
                              self.dtype, name="transformer_encoder")(tokens, train=train)


class FusionLSTM(nn.Module):
  """LSTM alternative to the fusion transformer (paper supplement; not in the release).

  A bidirectional LSTM, `num_layers` deep, hidden `hidden` per direction, over the T
  frames of the window. The 1536-wide input of time step t is
  [mean over the Nl reference embeddings, audio embedding t, pose embedding t]: a
  recurrent model has no token set to attend over, so the references enter as one
  order-free summary repeated at every step, and each step sees its own audio and pose
  (what the transformer's audio/pose tokens carry). Dropout on the input as on the
  transformer's tokens.

  ref: [B, Nl, d], audio: [B, T, d], pose: [B, T, d] -> [B, T, 2*hidden] (1024): both
  heads read this per-frame feature.
  """

  num_layers: int = 4
  hidden: int = 512
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ref: Array, audio: Array, pose: Array, *, train: bool) -> Array:
    chex.assert_equal_shape((audio, pose))
    summary = jnp.broadcast_to(ref.mean(axis=1, keepdims=True), audio.shape)
    x = jnp.concatenate([summary, audio, pose], axis=-1)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    for layer in range(self.num_layers):
      # The cells hold the parameters and are created here, so they are named here.
      cells = [nn.OptimizedLSTMCell(self.hidden, dtype=self.dtype, name=f"lstm_{layer}_{d}")
               for d in ("forward", "backward")]
      x = nn.Bidirectional(nn.RNN(cells[0]), nn.RNN(cells[1]))(x)
    return x


class LandmarkGenerator(nn.Module):
  """IP_LAP's audio-to-landmark generator.

  __call__(mels [B, T, 80, 16, 1], pose [B, T, 74, 2], ref_pose [B, Nl, 74, 2],
  ref_content [B, Nl, 57, 2], *, train) -> content [B, T, 57, 2] (17 jaw points then 40
  lip points, in the canonical content order; last axis (x, y)).

  Attributes:
    T: frames per window (5); the positional table is indexed by it.
    d_model, nlayers, nhead, dim_feedforward, dropout: the release's transformer settings.
    generator: 'transformer' (the release) or 'lstm' (see FusionLSTM; its heads then read
      1024-wide features, so its params do not fit a release checkpoint).
    dtype: compute dtype (bfloat16 for speed); params stay float32, as do the LayerNorm
      and BatchNorm statistics and the attention softmax.
  """

  T: int = 5
  d_model: int = 512
  nlayers: int = 4
  nhead: int = 4
  dim_feedforward: int = 1024
  dropout: float = 0.1
  generator: Literal["transformer", "lstm"] = "transformer"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, mels: Array, pose: Array, ref_pose: Array, ref_content: Array, *,
               train: bool) -> Array:
    batch, frames = mels.shape[:2]
    num_ref = ref_pose.shape[1]
    chex.assert_shape(mels, (batch, self.T, 80, 16, 1))
    chex.assert_shape(pose, (batch, self.T, NUM_POSE, 2))
    chex.assert_shape(ref_pose, (batch, num_ref, NUM_POSE, 2))
    chex.assert_shape(ref_content, (batch, num_ref, NUM_CONTENT, 2))

    mel_encoder = MelEncoder("tanh", "mel_encoder", self.dtype, name="mel_encoder")
    nn.share_scope(self, mel_encoder)
    mel_emb = mel_encoder(mels.reshape(batch * frames, 80, 16, 1), train=train)
    # The 1-D encoders see landmarks as [N, points, 2]: the points are the length axis and
    # (x, y) the channels, as the release's (N, 2, points) Conv1d input.
    pose_emb = conv_bn_stack(
        pose.reshape(batch * frames, NUM_POSE, 2).astype(self.dtype), POSE_ENCODER_LAYERS,
        name_prefix="pose_encoder", final_activation="tanh", dtype=self.dtype, train=train)
    ref = jnp.concatenate([ref_pose, ref_content], axis=2)  # [B, Nl, 131, 2]
    ref_emb = conv_bn_stack(
        ref.reshape(batch * num_ref, NUM_POSE + NUM_CONTENT, 2).astype(self.dtype),
        REF_ENCODER_LAYERS, name_prefix="ref_encoder", final_activation="tanh",
        dtype=self.dtype, train=train)

    norm = _layer_norm("Norm", self.dtype)  # one LayerNorm shared by the three embeddings
    mel_emb = norm(mel_emb).reshape(batch, frames, self.d_model)
    pose_emb = norm(pose_emb.reshape(batch * frames, self.d_model)).reshape(batch, frames, -1)
    ref_emb = norm(ref_emb.reshape(batch * num_ref, self.d_model)).reshape(batch, num_ref, -1)

    if self.generator == "transformer":
      tokens = FusionTransformer(
          self.d_model, self.nlayers, self.nhead, self.dim_feedforward, self.dropout,
          self.dtype, name="fusion_transformer")(ref_emb, mel_emb, pose_emb, train=train)
      lip_features = tokens[:, num_ref:num_ref + frames]
      jaw_features = tokens[:, num_ref + frames:]
    elif self.generator == "lstm":
      lip_features = jaw_features = FusionLSTM(
          self.nlayers, self.d_model, self.dropout, self.dtype,
          name="fusion_lstm")(ref_emb, mel_emb, pose_emb, train=train)
    else:
      raise ValueError(f"generator must be 'transformer' or 'lstm', not {self.generator!r}")

    mouth = nn.Dense(2 * NUM_MOUTH, dtype=self.dtype, name="mouse_keypoint_map",
                     **_DENSE_INIT)(lip_features)
    jaw = nn.Dense(2 * NUM_JAW, dtype=self.dtype, name="jaw_keypoint_map",
                   **_DENSE_INIT)(jaw_features)
    # The release reads [jaw 34, mouth 80] as 57 consecutive (x, y) pairs.
    content = jnp.concatenate([jaw, mouth], axis=-1).reshape(batch, frames, NUM_CONTENT, 2)
    return content.astype(jnp.float32)
