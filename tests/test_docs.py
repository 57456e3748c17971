"""docs/ stays true: the pycytominer snippet of docs/profiles.md runs on SSL-style profiles as written."""

import os
import re

import numpy as np
import pandas as pd

from helpers import REPO


def test_pycytominer_snippet_runs_on_ssl_profiles(tmp_path, monkeypatch):
    text = open(os.path.join(REPO, "docs", "profiles.md")).read()
    snippet = re.search(r"## Using the profiles with pycytominer.*?```python\n(.*?)```", text, flags=re.S).group(1)
    rng = np.random.default_rng(0)
    rows = []
    for plate in ("P1", "P2"):
        for i in range(12):
            dmso = i < 4
            rows.append(
                {
                    "Metadata_Plate": plate,
                    "Metadata_Well": f"A{i + 1:02d}",
                    "Metadata_broad_sample": "" if dmso else f"BRD-{i}",
                    "Metadata_pert_iname": "DMSO" if dmso else f"cpd{i}",
                    **{f"fluo_p0_{j:04d}": rng.normal() for j in range(6)},
                    **{f"bf_p0_{j:04d}": rng.normal() for j in range(3)},
                }
            )
    monkeypatch.chdir(tmp_path)
    os.makedirs("profiles")
    pd.DataFrame(rows).to_parquet("profiles/profiles.parquet")
    scope = {}
    exec(compile(snippet, "docs/profiles.md", "exec"), scope)
    selected = scope["selected"]
    assert len(selected) == 24 and any(c.startswith("fluo_") for c in selected.columns)
    dmso = scope["normed"][scope["normed"]["Metadata_control_type"] == "negcon"]
    # mad_robustize against the negative controls: their median is 0 on every plate
    for _, g in dmso.groupby("Metadata_Plate"):
        assert np.allclose(g[scope["feats"]].median(), 0, atol=1e-9)
