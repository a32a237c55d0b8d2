"""Our preprocessing equals transformers' SigLIP image processor."""
import numpy as np
import pytest
import transformers
from PIL import Image

from mma_jax.data import images


@pytest.mark.parametrize("shape,mode", [((50, 37, 3), "RGB"), ((20, 64), "L"), ((30, 30, 4), "RGBA")])
def test_matches_the_siglip_processor(shape, mode):
  rng = np.random.default_rng(0)
  img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
  processor = transformers.SiglipImageProcessor(size={"height": 30, "width": 30})
  want = processor(images=img, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
  ours = images.normalize(images.resize(img, 30))
  np.testing.assert_allclose(ours, want, atol=1e-5)


def test_unreadable_file_names_it(tmp_path):
  bad = tmp_path / "broken.jpg"
  bad.write_bytes(b"not an image")
  with pytest.raises(ValueError, match="broken.jpg"):
    images.load(str(bad), 16)
