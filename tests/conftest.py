"""Test setup: 8 fake CPU devices for pmap tests (set before JAX loads), and test media.

Media come from two places:
  * `media` (session): clips and sounds generated on first use (tests/media_fixtures.py),
    so a fresh clone passes with nothing beside it. Decoding, resampling, writing,
    preprocessing and the inference pipeline are tested on these.
  * `shared_data` (session): the real sample folder, for what needs real people (Face
    Mesh on real faces, the watermark on real footage, end-to-end runs on real clips).
    Its location is $IP_LAP_SAMPLE_DATA, by default `<repo>/../shared/data`. Without it
    these tests skip with one message naming the folder and the variable;
    IP_LAP_REQUIRE_SAMPLE_DATA=1 (set by .ci/run) makes them fail instead, so CI always
    runs them.
Parameters `real:<file>` name a sample-folder clip, others a generated one (the `clip`
and `sound` fixtures resolve both), so one test body covers both kinds.
"""

import atexit
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the run (the xdist workers inherit the variable):
# many tests build the same models afresh (a LipSyncer or a training stage per test),
# and their programs are then compiled once instead of once per test. Programs that
# compile in under a second are not worth a disk round trip.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="ip_lap_jax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import pytest  # noqa: E402

from tests import media_fixtures  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_DATA_ENV = "IP_LAP_SAMPLE_DATA"
REQUIRE_SAMPLE_DATA_ENV = "IP_LAP_REQUIRE_SAMPLE_DATA"


def sample_data_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get(SAMPLE_DATA_ENV) or REPO_ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The real sample folder; skips (or fails, under IP_LAP_REQUIRE_SAMPLE_DATA=1) without it."""
  folder = sample_data_dir()
  if folder.is_dir():
    return folder
  message = (f"needs real sample media: no folder {folder} "
             f"(set {SAMPLE_DATA_ENV} to the sample folder's location)")
  if os.environ.get(REQUIRE_SAMPLE_DATA_ENV) == "1":
    pytest.fail(f"{message}; {REQUIRE_SAMPLE_DATA_ENV}=1 requires it", pytrace=False)
  pytest.skip(message)


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> media_fixtures.GeneratedMedia:
  """Generated clips and sounds, made on first use and kept for the session."""
  return media_fixtures.GeneratedMedia(tmp_path_factory.mktemp("media"))


@pytest.fixture
def clip(request) -> media_fixtures.Clip:
  """The clip a test is parametrized with (indirect): generated, or `real:<file>`."""
  return media_fixtures.resolve_clip(request, request.param)


@pytest.fixture
def sound(request) -> media_fixtures.Sound:
  """The sound a test is parametrized with (indirect): generated, or `real:<file>`."""
  return media_fixtures.resolve_sound(request, request.param)


@pytest.fixture(scope="module")
def fast_compiles():
  """XLA's optimisation passes off for a module's tests, restored after it.

  For modules whose many small programs each run a few times: compile time dominates.
  A module-level `jax.config.update` would leak into the later modules of the same
  xdist worker (unoptimised float64 convolutions run as naive loops).
  """
  import jax  # pylint: disable=import-outside-toplevel

  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)
