"""Preprocessing a small folder: one good clip, one corrupt file, one faceless clip; resume.

The clips are generated (tests/media_fixtures.py): the pipeline's logic needs a face
Face Mesh finds, not a real person.
"""

import json
import pathlib
import shutil

import cv2
import numpy as np
import pytest

from ip_lap_jax.media import audio
from ip_lap_jax.data import layout
from ip_lap_jax.face import landmarks
from ip_lap_jax.data import preprocess
from ip_lap_jax.media import video

GOOD = "landscape_25fps.mp4"  # 25 fps, non-square, a face in every frame, mono audio


@pytest.fixture(scope="module")
def dataset(media, tmp_path_factory):
  """<in>/spk/good.mp4 (face + audio), <in>/spk/grey.mp4 (audio, no face), <in>/spk/bad.mp4."""
  root = tmp_path_factory.mktemp("pre")
  src = root / "in" / "spk"
  src.mkdir(parents=True)
  good = media.clip(GOOD)
  assert good.fps == 25 and good.faceless is None  # frames in = frames read
  shutil.copy(good.path, src / "good.mp4")
  shutil.copy(media.clip("faceless_25fps.mp4").path, src / "grey.mp4")
  shutil.copy(media.corrupt(), src / "bad.mp4")
  frames = video.read_frames(good.path)
  out = root / "out"
  summary = preprocess.run(root / "in", out, workers=2, progress=False)
  return root, out, summary, frames, good


def test_summary_reports_good_and_failed(dataset):
  _, out, summary, _, clip = dataset
  assert summary["clips_total"] == 3
  assert list(summary["done"]) == ["spk/good"]
  assert set(summary["failed"]) == {"spk/bad", "spk/grey"}
  assert "bad.mp4" in summary["failed"]["spk/bad"]["reason"]
  assert "no face" in summary["failed"]["spk/grey"]["reason"]
  good = summary["done"]["spk/good"]
  assert good["frames"] == clip.num_frames
  assert good["written"] + len(good["skipped_no_face"]) == clip.num_frames
  assert good["written"] >= clip.num_frames - 2
  on_disk = json.loads((out / preprocess.SUMMARY_NAME).read_text())
  assert on_disk["done"] == summary["done"] and on_disk["failed"] == summary["failed"]
  # Failed clips leave nothing behind.
  for sub in ("faces", "sketches", "landmarks", "audio"):
    assert not (out / sub / "spk" / "grey").exists()
    assert not (out / sub / "spk" / "bad").exists()


def test_good_clip_in_official_layout(dataset):
  _, out, summary, frames, good = dataset
  roots = layout.DatasetRoots.under(out)
  written = layout.frame_numbers(out / "landmarks" / "spk" / "good")
  assert len(written) == summary["done"]["spk/good"]["written"]
  assert set(written).isdisjoint(summary["done"]["spk/good"]["skipped_no_face"])
  assert layout.make_filelist(out / "landmarks") == ["spk/good"]
  for i in written[:3] + written[-1:]:
    # Read as the release's training code does.
    d = np.load(out / "landmarks" / "spk" / "good" / f"{i}.npy", allow_pickle=True).item()
    assert set(d) == {"pose_landmarks", "content_landmarks"}
    assert len(d["pose_landmarks"]) == 74 and len(d["content_landmarks"]) == 57
    assert {e[0] for e in d["pose_landmarks"]} == set(landmarks.POSE_INDICES.tolist())
    idx, x, y = d["content_landmarks"][0]
    assert isinstance(idx, int) and isinstance(x, float)
    pose, content = layout.load_landmarks(out / "landmarks" / "spk" / "good" / f"{i}.npy")
    assert pose.shape == (74, 2) and content.shape == (57, 2)
    assert np.all((pose > -0.01) & (pose < 1.01)) and np.all((content > -0.01) & (content < 1.01))
    face = cv2.imread(str(roots.face_path("spk/good", i)))
    sk = cv2.imread(str(roots.sketch_path("spk/good", i)))
    assert face.shape == (128, 128, 3) and sk.shape == (128, 128, 3)
    assert sk.max() == 224 and (sk == 0).mean() > 0.5
    assert face.std() > 10  # a real crop, not a blank image
    # The stored crop is the crop of the frame around the landmarks' box (H.264 aside).
    with landmarks.FaceMeshDetector() as det:
      res = landmarks.analyze(det.detect(frames[i]), frames[i].shape[:2])
    expect = landmarks.crop_face(frames[i], res.box).astype(np.float32)
    assert np.abs(face.astype(np.float32) - expect).mean() < 12
  mel = np.load(roots.mel_path("spk/good"))
  assert mel.ndim == 2 and mel.shape[1] == 80 and mel.dtype == np.float32
  wav = audio.load_audio(roots.wav_path("spk/good"))
  # The clip's AAC track, decoded: at most ~0.1 s of encoder padding beyond its length.
  assert good.audio_seconds * 16000 <= wav.size <= (good.audio_seconds + 0.1) * 16000
  assert mel.shape[0] == 1 + wav.size // 200
  np.testing.assert_allclose(mel.T, audio.melspectrogram(wav), atol=1e-5)


def test_resume_skips_completed_clip(dataset):
  root, out, _, _, _ = dataset
  face0 = out / "faces" / "spk" / "good"
  mtimes = {p.name: p.stat().st_mtime_ns for p in face0.iterdir()}
  again = preprocess.run(root / "in", out, workers=1, progress=False)
  assert list(again["done"]) == ["spk/good"]
  assert again["this_run"]["clips"] == 2  # only the two failed clips were retried
  assert {p.name: p.stat().st_mtime_ns for p in face0.iterdir()} == mtimes


def test_interrupted_clip_is_redone(dataset, tmp_path):
  root, _, _, _, _ = dataset
  out = tmp_path / "out"
  roots = layout.DatasetRoots.under(out)
  # A leftover of an interrupted run: files but no done marker.
  stale = roots.face_path("spk/good", 9999)
  stale.parent.mkdir(parents=True)
  stale.write_bytes(b"partial")
  only_good = tmp_path / "in" / "spk"
  only_good.mkdir(parents=True)
  (only_good / "good.mp4").symlink_to(root / "in" / "spk" / "good.mp4")
  summary = preprocess.run(tmp_path / "in", out, workers=1, progress=False)
  assert list(summary["done"]) == ["spk/good"] and not summary["failed"]
  assert not stale.exists()
  assert (out / preprocess.DONE_DIR / "spk" / "good.json").is_file()


def test_find_clips_flat_and_nested(tmp_path):
  (tmp_path / "vids" / "s1").mkdir(parents=True)
  for p in ["vids/a.mp4", "vids/s1/b.MOV", "vids/s1/notes.txt", "vids/.hidden.mp4"]:
    (tmp_path / p).write_bytes(b"")
  jobs = preprocess.find_clips(tmp_path / "vids")
  assert [j.name for j in jobs] == ["s1/b", "vids/a"]
  with pytest.raises(FileNotFoundError):
    preprocess.find_clips(tmp_path / "missing")


def test_filelists_roundtrip(tmp_path):
  path = tmp_path / "train.txt"
  layout.write_filelist(path, ["a/1", "b/2"])
  path.write_text(path.read_text() + "\nc/3 extra\n")
  assert layout.read_filelist(path) == ["a/1", "b/2", "c/3"]


def test_landmark_file_roundtrip_and_validation(tmp_path):
  rng = np.random.default_rng(0)
  pose, content = rng.uniform(size=(74, 2)), rng.uniform(size=(57, 2))
  layout.save_landmarks(tmp_path / "0", pose, content)
  d = np.load(tmp_path / "0.npy", allow_pickle=True).item()
  assert [e[0] for e in d["pose_landmarks"]] == sorted(landmarks.POSE_INDICES.tolist())
  p2, c2 = layout.load_landmarks(tmp_path / "0.npy")
  np.testing.assert_allclose(p2, pose, atol=1e-7)
  np.testing.assert_allclose(c2, content, atol=1e-7)
  d["content_landmarks"] = d["content_landmarks"][:-1]
  np.save(tmp_path / "1", d, allow_pickle=True)
  with pytest.raises(ValueError):
    layout.load_landmarks(tmp_path / "1.npy")


def test_cli_custom_roots_and_exit_code(dataset, tmp_path, capsys):
  root, _, _, _, _ = dataset
  (tmp_path / "in" / "spk").mkdir(parents=True)
  (tmp_path / "in" / "spk" / "bad.mp4").symlink_to(root / "in" / "spk" / "bad.mp4")
  code = preprocess.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                          "--workers", "1", "--no-progress",
                          "--landmark-root", str(tmp_path / "lm")])
  assert code == 0
  summary = json.loads((tmp_path / "out" / preprocess.SUMMARY_NAME).read_text())
  assert summary["roots"]["landmark_root"] == str((tmp_path / "lm").resolve())
  assert summary["roots"]["face_root"] == str((tmp_path / "out" / "faces").resolve())
  assert list(summary["failed"]) == ["spk/bad"]
  assert "FAILED spk/bad" in capsys.readouterr().err


def test_zero_frame_clip_is_reported_and_run_goes_on(dataset, media, tmp_path):
  root, _, _, _, good = dataset
  src = tmp_path / "in" / "spk"
  src.mkdir(parents=True)
  # A video stream with no frame, and audio (so the video step is the one that fails).
  shutil.copy(media.zero_frame_clip().path, src / "empty.mkv")
  assert video.probe(src / "empty.mkv").num_frames == 0
  (src / "good.mp4").symlink_to(root / "in" / "spk" / "good.mp4")
  summary = preprocess.run(tmp_path / "in", tmp_path / "out", workers=1, progress=False)
  assert list(summary["done"]) == ["spk/good"]
  assert summary["done"]["spk/good"]["frames"] == good.num_frames
  assert list(summary["failed"]) == ["spk/empty"]
  reason = summary["failed"]["spk/empty"]["reason"]
  assert "empty.mkv" in reason and "zero frames" in reason
  for sub in ("faces", "sketches", "landmarks", "audio"):
    assert not (tmp_path / "out" / sub / "spk" / "empty").exists()


def test_worker_imports_stay_light():
  """The parent and the fork server import these before any worker starts: JAX, scipy
  and librosa (~3 s of CPU together) must not come in through them."""
  import subprocess
  import sys

  code = ("import sys; import ip_lap_jax.data.preprocess, ip_lap_jax.media.audio, ip_lap_jax.media.video; "
          "print(sorted({'jax', 'chex', 'scipy', 'librosa'} & set(sys.modules)))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, cwd=pathlib.Path(__file__).resolve().parents[1])
  assert out.stdout.strip() == "[]"
