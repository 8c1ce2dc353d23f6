"""optuna-dashboard opens the store: every study loads through its own WSGI API, with the points' user attributes."""
from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from attnbench.config.ablation import parse_ablation
from attnbench.core.paths import check_writable
from attnbench.run.runner import RunOptions
from attnbench.search.loop import run_search
from attnbench.search.setup import parse_search
from attnbench.store.grid import run_grid
from attnbench.store.study import default_storage

dashboard = pytest.importorskip("optuna_dashboard", reason='optuna-dashboard is not installed: pip install -e ".[dashboard]"')

BACKBONE = [{"name": "cifar_resnet18", "input_size": 8, "num_classes": 10}]
GRID = {"name": "tiny", "backbones": BACKBONE, "variants": [{"module": "se", "grid": {"reduction": [8, 16]}}, {"module": "eca"}]}
SEARCH = {"name": "s", "backbones": BACKBONE,
          "search": {"objectives": ["macs", "params"], "sampler": "random", "seed": 0, "trials": 6,
                     "modules": {"se": {"reduction": {"low": 2, "high": 64, "log": True}}, "eca": {"kernel_size": [3, 5]}}}}


def measured(point: Any, options: RunOptions, on_epoch: Any = None) -> dict[str, Any]:
    """Distinct made-up counts per point, so each trial's attributes can be told apart."""
    hp = point.hyperparameters
    extra = {"se": lambda: 6400 // hp["reduction"], "eca": lambda: 3 * (hp["kernel_size"] or 1)}.get(point.attention, lambda: 0)()
    return {"params": 1000 + extra, "macs": 2_000_000 + 10 * extra, "attention_params": extra, "uncounted_ops": ""}


def get(app: Callable, path: str) -> Any:
    """GET `path` from a WSGI app; the decoded JSON body (status 200 checked)."""
    status: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "localhost",
               "SERVER_PORT": "8080", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO()}
    body = b"".join(app(environ, lambda code, headers, exc_info=None: status.append(code)))
    assert status[0].startswith("200"), (path, status, body[:300])
    return json.loads(body)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite store holding one grid study and one search study."""
    results = tmp_path_factory.mktemp("results")
    check_writable(results)
    storage = default_storage(results)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_grid(parse_ablation(GRID), storage, RunOptions(device="cpu"), progress=False, run=lambda p, o: measured(p, o))
        run_search(parse_search(parse_ablation(SEARCH)), storage, RunOptions(device="cpu"), run=measured, progress=False)
    return storage


def test_every_study_loads_with_the_points_user_attributes(store: str) -> None:
    app = dashboard.wsgi(store)
    studies = {s["study_name"]: s for s in get(app, "/api/studies")["study_summaries"]}
    assert set(studies) == {"tiny", "s-search"}
    for name, summary in studies.items():
        detail = get(app, f"/api/studies/{summary['study_id']}")
        trials = [t for t in detail["trials"] if t["state"] == "Complete"]
        assert len(trials) == {"tiny": 4, "s-search": 6}[name]
        keys = {a["key"] for a in detail["union_user_attrs"]}
        assert {"label", "point", "point_key", "result"} <= keys
        for trial in trials:
            attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
            point, result = json.loads(attrs["point"]), json.loads(attrs["result"])
            assert point["backbone"] == "cifar_resnet18" and attrs["label"].startswith(point["attention"])
            assert result["params"] == measured(_Point(point), RunOptions(device="cpu"))["params"]
    grid = get(app, f"/api/studies/{studies['tiny']['study_id']}")
    labels = {a["value"] for t in grid["trials"] for a in t["user_attrs"] if a["key"] == "label"}
    assert labels == {"none", "se(reduction=8)", "se", "eca"}


def test_the_dashboard_cuts_attributes_past_1024_characters(tmp_path: Path) -> None:
    """A real point's `result` (2,357 characters for a default-grid point) shows cut, not as JSON: the store's limit to know."""
    import optuna

    storage = default_storage(tmp_path)
    study = optuna.create_study(study_name="big", storage=storage)
    result = {"params": 1000, **{f"env/field_{i}": "x" * 20 for i in range(60)}}
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"label": "se", "result": result}))
    app = dashboard.wsgi(storage)
    (summary,) = get(app, "/api/studies")["study_summaries"]
    (trial,) = get(app, f"/api/studies/{summary['study_id']}")["trials"]
    attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
    assert attrs["label"] == "se" and attrs["result"] == json.dumps(result)[:1024]
    with pytest.raises(json.JSONDecodeError):
        json.loads(attrs["result"])


class _Point:
    """The fields `measured` reads, from a stored point."""

    def __init__(self, stored: dict[str, Any]) -> None:
        self.attention, self.hyperparameters = stored["attention"], stored["hyperparameters"]
