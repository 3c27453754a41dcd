"""The notebook runs top to bottom through the public API."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "demo.ipynb"


@pytest.mark.slow
def test_demo_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("CDVIDEO_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.setenv("CDVIDEO_NOTEBOOK_STEPS", "30")  # the flow, not the quality: that is the demo's job
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "<new1> circle wearing headphones moving right" in outputs
    assert (tmp_path / "with" / "a-circle-wearing-headphones-moving-right-0.gif").exists()
