"""The Colab quickstart notebook runs top to bottom on the CPU with a tiny setting."""
import json
import os

import nbclient
import nbformat

NOTEBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "notebooks", "quickstart.ipynb")


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  workdir = tmp_path / "runs"
  monkeypatch.setenv("MMA_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("MMA_NOTEBOOK_WORKDIR", str(workdir))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
  assert "backend: cpu" in text and "overall accuracy" in text
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert len(images) == 2  # the two mechanism pictures
  with open(workdir / "sft_mma" / "results.json") as f:
    assert json.load(f)["step"] == 2
  assert (workdir / "sft_mma" / "eval" / "shapes_results.json").exists()
