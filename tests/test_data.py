"""Samplers and loaders over a tiny official layout: sampling rules, determinism, resume."""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest

from ip_lap_jax import parallel
from ip_lap_jax.media import audio
from ip_lap_jax.data import pipeline
from ip_lap_jax.data.landmark_data import LandmarkSampler
from ip_lap_jax.data.renderer_data import RendererSampler
from tests import train_fixtures

CLIPS = {"spk1/a": 30, "spk1/b": 26, "spk2/short": 20}
GAPS = {"spk1/a": [12]}


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
  root = tmp_path_factory.mktemp("layout")
  roots = train_fixtures.build_layout(root, CLIPS, gaps=GAPS)
  roots["list"] = train_fixtures.write_list(root / "train.txt", list(CLIPS))
  return roots


def _frame_of_pose(pose: np.ndarray) -> np.ndarray:
  return np.rint(pose[:, 0, 0] * 1000).astype(int)


def test_landmark_sampler_rules(layout):
  s = LandmarkSampler.from_layout(layout["landmarks"], layout["audio"], layout["list"])
  # The 20-frame clip is dropped; a's length counts its 29 files, as the release's glob.
  assert dict(s.clips) == {"spk1/a": 29, "spk1/b": 26}
  names = list(CLIPS)
  starts = {"spk1/a": set(), "spk1/b": set()}
  for i in range(300):
    try:
      ex = s.draw(np.random.default_rng([3, i]))
    except pipeline.SampleError as e:
      assert e.quiet  # only gaps / audio edges in this layout
      continue
    assert ex["mels"].shape == (5, 80, 16, 1) and ex["pose"].shape == (5, 74, 2)
    assert ex["content"].shape == (5, 57, 2) and ex["ref_pose"].shape == (15, 74, 2)
    assert ex["ref_content"].shape == (15, 57, 2)
    clip = names[int(round(ex["pose"][0, 0, 1] * 100)) - 1]
    window = _frame_of_pose(ex["pose"])
    refs = _frame_of_pose(ex["ref_pose"])
    np.testing.assert_array_equal(window, np.arange(window[0], window[0] + 5))
    assert len(set(refs.tolist())) == 15 and not set(refs) & set(window)
    n = dict(s.clips)[clip]
    assert refs.max() < n  # references come from range(len), as the release
    if clip == "spk1/a":
      assert 12 not in window and 12 not in refs  # the gap is never used
    starts[clip].add(int(window[0]))
    mel = pipeline.load_mel(layout["audio"], clip)
    for t, f in enumerate(window):
      np.testing.assert_array_equal(ex["mels"][t, :, :, 0], audio.training_mel_window(mel, f))
  # Window start uniform in [2, len - T - 2].
  assert starts["spk1/b"] == set(range(2, 26 - 5 - 2 + 1))
  assert min(starts["spk1/a"]) == 2 and max(starts["spk1/a"]) == 29 - 5 - 2


def test_renderer_sampler_rules(layout):
  s = RendererSampler.from_layout(layout["faces"], layout["sketches"], layout["audio"],
                                  layout["list"])
  assert {c: len(f) for c, f in s.clips} == {"spk1/a": 29, "spk1/b": 26}
  valid = 0
  for i in range(80):
    try:
      ex = s.draw(np.random.default_rng([5, i]))
    except pipeline.SampleError as e:
      assert e.quiet
      continue
    valid += 1
    assert ex["face"].shape == (128, 128, 3) and ex["face"].dtype == np.uint8
    assert ex["sketches"].shape == (5, 128, 128, 3) and ex["ref_images"].shape == (3, 128, 128, 3)
    assert ex["mels"].shape == (80, 16, 1)
    refs = ex["ref_images"][:, 0, 0, 0].astype(int)
    clip = list(CLIPS)[int(ex["face"][0, 0, 1])]
    assert len(set(refs.tolist())) == 3
    window = ex["sketches"]  # sketches carry no marker; the faces of the window do
    centre = int(ex["face"][0, 0, 0])
    assert centre >= 2  # the centre frame's mel window must start at >= 0
    if clip == "spk1/a":
      assert 12 not in refs and not 10 <= centre <= 14  # no window over the gap
    mel = pipeline.load_mel(layout["audio"], clip)
    np.testing.assert_array_equal(ex["mels"][..., 0], audio.training_mel_window(mel, centre))
    del window
  assert valid > 40


def test_examples_deterministic_and_distinct(layout):
  s = LandmarkSampler.from_layout(layout["landmarks"], layout["audio"], layout["list"])
  src = pipeline.IndexedSource(s, 100, seed=7, max_retries=50)
  a, b, c = src[3], src[3], src[4]
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["ref_pose"], c["ref_pose"])
  other = pipeline.IndexedSource(s, 100, seed=8, max_retries=50)[3]
  assert not np.array_equal(a["ref_pose"], other["ref_pose"])


def test_corrupt_files_are_replaced_and_logged(tmp_path, caplog):
  roots = train_fixtures.build_layout(tmp_path, {"s/a": 30}, images=True)
  (tmp_path / "landmarks" / "s/a" / "5.npy").write_bytes(b"not a numpy file")
  (tmp_path / "faces" / "s/a" / "7.png").write_bytes(b"garbage")
  lm = LandmarkSampler.from_layout(roots["landmarks"], roots["audio"])
  rd = RendererSampler.from_layout(roots["faces"], roots["sketches"], roots["audio"])
  with caplog.at_level(logging.WARNING):
    for src in (pipeline.IndexedSource(lm, 60, 0, 100), pipeline.IndexedSource(rd, 60, 0, 100)):
      for i in range(60):
        ex = src[i]
        assert all(np.all(np.isfinite(v)) for v in ex.values())
  assert "5.npy" in caplog.text and "7.png" in caplog.text


def test_loader_resume_and_workers_match(layout):
  s = LandmarkSampler.from_layout(layout["landmarks"], layout["audio"], layout["list"])
  kw = dict(num_steps=6, global_batch=4, seed=1, max_retries=50)
  full = [b["ref_pose"] for b in pipeline.make_loader(s, **kw)]
  assert len(full) == 6 and full[0].shape == (4, 15, 74, 2)
  it = iter(pipeline.make_loader(s, **kw))
  for _ in range(2):
    next(it)
  state = it.get_state()
  resumed = iter(pipeline.make_loader(s, **kw))
  resumed.set_state(state)
  rest = [b["ref_pose"] for b in resumed]
  assert len(rest) == 4
  for x, y in zip(full[2:], rest):
    np.testing.assert_array_equal(x, y)
  with_workers = [b["ref_pose"] for b in pipeline.make_loader(s, num_workers=2, **kw)]
  for x, y in zip(full, with_workers):
    np.testing.assert_array_equal(x, y)


def test_step_major_sampler_hosts():
  # Two hosts' shares of each step are disjoint and together the global batch.
  a = pipeline.StepMajorSampler(3, 8, host=0, num_hosts=2)
  b = pipeline.StepMajorSampler(3, 8, host=1, num_hosts=2)
  keys = sorted([a[i].record_key for i in range(len(a))] + [b[i].record_key for i in range(len(b))])
  assert keys == list(range(24))
  assert [a[i].record_key for i in range(4, 8)] == [8, 9, 10, 11]
  with pytest.raises(IndexError):
    a[len(a)]
  # With 2 workers, worker 1's first batch (indices 1, 3, 5, 7) is step 1.
  w = pipeline.StepMajorSampler(3, 8, host=1, num_hosts=2, num_workers=2)
  assert [w[i].record_key for i in (1, 3, 5, 7)] == [12, 13, 14, 15]


def test_shard_batch_puts_consecutive_rows_on_consecutive_devices():
  mesh = parallel.global_mesh(jax.devices()[:4])
  out = parallel.shard_batch({"x": np.arange(24).reshape(8, 3)}, mesh)
  assert out["x"].shape == (8, 3)
  shares = {s.device: np.asarray(s.data) for s in out["x"].addressable_shards}
  np.testing.assert_array_equal(shares[jax.devices()[1]], [[6, 7, 8], [9, 10, 11]])
  np.testing.assert_array_equal(parallel.first_device_share(out["x"]), [[0, 1, 2], [3, 4, 5]])
  with pytest.raises(ValueError, match="4 local devices"):
    parallel.shard_batch({"x": np.zeros((6, 1))}, mesh)
