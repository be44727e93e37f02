"""`dvc repro` end to end in a temporary git repository: real DVC, real Ray, real MLflow.

Tiny params keep it to a few minutes on 2 cores; train runs as a 2-worker DDP job here so
the worker-group path is exercised, and as local mode in the `dvc exp run` that follows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipelines import dag
from tests.conftest import REPO, copy_project, free_port, shared_ray

# The module's first test sets up the whole `dvc repro` (tens of stages, each a fresh process):
# over 15 minutes on a slow 2-core machine, so the module gets a longer limit than the suite's.
REPRO_TIMEOUT_S = 2400
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(REPRO_TIMEOUT_S)]


def tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["digits"]["samples_per_shard"] = 96
    t = params["train"]["resnet"]
    t.update(epochs=3, num_workers=2, log_every=2)
    t["model"]["depth"] = 8
    params["tune"]["resnet"].update(samples_per_schedule=1, epochs=2, grace_period=1)
    params["tune"]["resnet"]["space"]["schedule"] = ["cosine", "onecycle"]
    params["data"]["translation"].update(num_train=800, num_val=100, num_test=100, vocab_size=120,
                                         samples_per_shard=400)
    t = params["train"]["transformer"]
    t.update(epochs=4, batch_size=32, lr=3e-3)
    t["model"].update(d_model=32, d_ff=64, heads=2, encoder_layers=1, decoder_layers=1, beam_size=2)
    params["tune"]["transformer"].update(samples_per_schedule=1, epochs=1, grace_period=1)
    params["tune"]["transformer"]["space"]["schedule"] = ["inverse_sqrt", "cosine"]
    params["data"]["digits"]["evaluator"]["epochs"] = 10
    t = params["train"]["gan"]
    t.update(epochs=8, log_every=5)
    t["model"].update(width=16, latent_dim=16)
    params["tune"]["gan"].update(samples_per_schedule=1, epochs=2, grace_period=1)
    params["tune"]["gan"]["space"]["schedule"] = ["constant", "linear"]
    params["train"]["vae"].update(epochs=6, num_workers=2)  # a second family through the DDP worker group
    params["tune"]["vae"].update(samples_per_schedule=1, epochs=2, grace_period=1)
    params["tune"]["vae"]["space"]["schedule"] = ["cosine", "onecycle"]
    t = params["train"]["diffusion"]
    t.update(epochs=3)
    t["model"].update(width=16, groups=4, timesteps=50, eval_steps=10, val_steps=4,
                      sweep=["ddim10", "ddpm"])  # the fewest and the most steps
    params["tune"]["diffusion"].update(samples_per_schedule=1, epochs=1, grace_period=1)
    params["tune"]["diffusion"]["space"]["schedule"] = ["cosine", "linear"]
    # GNN: node classification as a 2-worker DDP job on neighbour-sampled mini-batches, and graph
    # classification (the graph families, batched whole graphs) in local mode. The karate club takes
    # the node stages with another dataset (tests/pipelines/test_edges.py runs its stages), so it stays out,
    # as does the typed graph's (its data, batches, training and serving: tests/components/models/test_gnn.py
    # and the contract test).
    for section in ("algorithms", "train", "tune"):
        del params[section]["gnn_karate"]
        del params[section]["gnn_hetero"]
    del params["data"]["karate"]
    del params["data"]["papers"]
    params["data"]["graph_families"].update(samples_per_shard=25)
    params["data"]["graph_families"]["families"].update(graphs_per_family=40, min_nodes=12, max_nodes=20)
    params["train"]["gnn_graphs"].update(epochs=20, batch_size=16)  # 160 steps, about 2 s
    params["tune"]["gnn_graphs"].update(samples_per_schedule=1, epochs=2, grace_period=1)
    params["tune"]["gnn_graphs"]["space"]["schedule"] = ["cosine", "onecycle"]
    params["data"]["community"]["sbm"].update(num_nodes=600, communities=4)
    params["data"]["community"]["samples_per_shard"] = 60
    params["train"]["gnn"].update(epochs=20, num_workers=2, batch_size=64)
    params["train"]["gnn"]["model"]["fanout"] = [5, 5]
    params["tune"]["gnn"].update(samples_per_schedule=1, epochs=10, grace_period=5)
    params["tune"]["gnn"]["space"]["schedule"] = ["cosine", "onecycle"]
    # CLIP as a 2-worker DDP job: the logits span both workers' batches.
    params["data"]["captioned_digits"].update(captions_per_image=2, samples_per_shard=96)
    t = params["train"]["clip"]
    t.update(epochs=6, num_workers=2, batch_size=64, lr=2e-3)
    t["model"].update(width=32, heads=2, embed_dim=32, image_layers=1, text_layers=1)
    params["tune"]["clip"].update(samples_per_schedule=1, epochs=2, grace_period=1)
    params["tune"]["clip"]["space"]["schedule"] = ["cosine", "onecycle"]
    # One trial process per sweep (three tiny trials each), not two: each imports torch and the
    # project, and the two cores are the suite's. ResNet's sweep keeps one per CPU, the default
    # that test_exp_run_... changes.
    for algo in params["tune"]:
        if algo != "resnet":
            params["tune"][algo]["max_concurrent"] = 1
    return params


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=REPRO_TIMEOUT_S)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def in_fresh_process(root: Path, env: dict, body: str) -> dict:
    """Run ``body`` in a new interpreter outside the repository, sharing only the MLflow store
    (as a user loading a registered model would); ``body`` sets ``out``, which comes back."""
    script = (f"import json, mlflow, numpy as np, pandas as pd\n"
              f"mlflow.set_tracking_uri('sqlite:///{root / 'mlflow.db'}')\n"
              f"{textwrap.dedent(body)}\nprint(json.dumps(out))\n")
    proc = run([sys.executable, "-c", script], Path("/"), {**env, "PYTHONPATH": ""})
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The tiny pipeline after one `dvc repro`. Its stages join one local Ray through RAY_ADDRESS, as
    on a user's cluster, instead of each starting its own (the stage's own local Ray is what
    tests/pipelines/test_tune.py and test_faults.py run)."""
    root = tmp_path_factory.mktemp("project")
    copy_project(root, tiny_params(), with_dvc=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env.update(GIT_AUTHOR_NAME="ci", GIT_AUTHOR_EMAIL="ci@example.com", GIT_COMMITTER_NAME="ci",
               GIT_COMMITTER_EMAIL="ci@example.com", RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    run(["git", "init", "-q", "-b", "main"], root, env)
    run(["dvc", "init", "-q"], root, env)
    run(["dvc", "config", "core.analytics", "false"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "project"], root, env)
    with shared_ray(num_cpus=2) as address:
        env["RAY_ADDRESS"] = address
        first = run(["dvc", "repro"], root, env)
        yield root, env, first


# What each champion is asked in a fresh interpreter (a user's process, sharing only the MLflow store):
# a body that sets ``out``. One interpreter runs them all (`champions`), each in a function of its own.
CHAMPION_CHECKS = {
    "transformer": """
        model = mlflow.pyfunc.load_model("models:/transformer@champion")
        src = ["three hundred and forty-two", "seventeen", "nine million and one"]
        out = {"beam": model.predict(src), "greedy": model.predict(src, params={"beam_size": 1})}
        try:
            model.predict([1, 2])
        except Exception as exc:
            out["error"] = str(exc)
    """,
    "gan": """
        model = mlflow.pyfunc.load_model("models:/gan@champion")
        req = pd.DataFrame({"count": [3, 2], "seed": [0, 1], "label": [7, -1]})
        a, b = np.asarray(model.predict(req)), np.asarray(model.predict(req))
        out = {"shape": list(a.shape), "same": bool((a == b).all()), "min": float(a.min()), "max": float(a.max())}
        try:
            model.predict(pd.DataFrame({"count": [2], "seed": [0], "label": [12]}))
        except Exception as exc:
            out["error"] = str(exc)
    """,
    "vae": """
        model = mlflow.pyfunc.load_model("models:/vae@champion")
        rows = np.random.default_rng(0).random((4, 64)).astype(np.float32)
        mu = model.predict(rows, params={"mode": "encode"})
        out = {"mu": list(mu.shape), "rec": list(model.predict(rows).shape),
               "dec": list(model.predict(mu, params={"mode": "decode"}).shape),
               "sample": list(model.predict(np.zeros((3, 1), np.float32), params={"mode": "sample", "seed": 2}).shape)}
        try:
            model.predict(rows, params={"mode": "dream"})
        except Exception as exc:
            out["error"] = str(exc)
    """,
    "diffusion": """
        model = mlflow.pyfunc.load_model("models:/diffusion@champion")
        req = pd.DataFrame({"count": [2, 1], "seed": [0, 1], "label": [3, -1]})
        a = np.asarray(model.predict(req, params={"steps": 5, "sampler": "ddim", "guidance_scale": 2.0}))
        b = np.asarray(model.predict(req, params={"steps": 5, "sampler": "ddim", "guidance_scale": 2.0}))
        out = {"shape": list(a.shape), "same": bool((a == b).all())}
        try:
            model.predict(req, params={"sampler": "euler"})
        except Exception as exc:
            out["error"] = str(exc)
    """,
    "gnn": """
        node = mlflow.pyfunc.load_model("models:/gnn@champion")
        x = np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32)
        ring = np.array([[0, 1, 2, 3, 4, 1, 2, 3, 4, 0], [1, 2, 3, 4, 0, 0, 1, 2, 3, 4]], dtype=np.int64)
        probs = np.asarray(node.predict({"x": x, "edge_index": ring}))
        out = {"node": list(probs.shape), "sums": probs.sum(1).tolist(), "errors": []}
        for bad in (ring.T.copy(), ring + 3):
            try:
                node.predict({"x": x, "edge_index": bad})
                out["errors"].append(None)
            except Exception as exc:
                out["errors"].append(str(exc))
    """,
    "clip": """
        from sklearn.datasets import load_digits
        model = mlflow.pyfunc.load_model("models:/clip@champion")
        digits = load_digits()
        rows = [list(r / 16.0) for r in digits.data[:4]]
        frame = pd.DataFrame({"image": rows, "text": ["a zero", "a one", "a two", "a three"]})
        scores = np.asarray(model.predict(frame))
        img = np.asarray(model.predict(frame[["image"]], params={"mode": "embed_image"}))
        txt = np.asarray(model.predict(frame[["text"]], params={"mode": "embed_text"}))
        out = {"scores": scores.tolist(), "img": list(img.shape), "txt": list(txt.shape),
               "norm": float(np.linalg.norm(img, axis=1).mean())}
        try:
            model.predict(pd.DataFrame({"image": [[0.0] * 10]}), params={"mode": "embed_image"})
        except Exception as exc:
            out["error"] = str(exc)
    """,
    "resnet": """
        model = mlflow.pyfunc.load_model("models:/resnet@champion")
        assert model.metadata.signature is not None
        batch = np.random.default_rng(0).random((6, 8, 8)).astype(np.float32)
        probs = model.predict(batch)
        out = {"shape": list(probs.shape), "sums": np.asarray(probs).sum(1).tolist()}
        for bad in (np.zeros((6, 64), np.float32), np.zeros((6, 8, 8), np.int64)):
            try:
                model.predict(bad)
                out.setdefault("errors", []).append(None)
            except Exception as exc:
                out.setdefault("errors", []).append(str(exc))
    """,
    # What test_champions_answer_rest_requests_as_they_predict_in_process sends over HTTP, predicted here.
    "served": """
        images = np.random.default_rng(0).random((3, 8, 8)).round(4).astype(np.float32)
        flat = images.reshape(3, -1)
        m = {algo: mlflow.pyfunc.load_model(f"models:/{algo}@champion") for algo in ("resnet", "transformer", "clip", "gan")}
        out = {
            "resnet": [np.asarray(m["resnet"].predict(images)).tolist()],
            "transformer": [m["transformer"].predict(["three hundred and forty-two", "seventeen"]),
                            m["transformer"].predict(["nine million and one"], params={"beam_size": 1})],
            "clip": [np.asarray(m["clip"].predict(pd.DataFrame({"image": [flat[0].tolist(), flat[1].tolist()],
                                                                 "text": ["a bold seven", "a thin one"]}))).tolist(),
                     np.asarray(m["clip"].predict(pd.DataFrame({"text": ["a bold seven"]}),
                                                  params={"mode": "embed_text"})).tolist()],
            "gan": [np.asarray(m["gan"].predict(pd.DataFrame({"count": [2], "seed": [5]}))).tolist()],
        }
    """,
    "resnet_module": """
        import torch
        uri = "models:/resnet@champion"
        net = mlflow.pyfunc.load_model(uri).unwrap_python_model().model  # what components.serving.load_module returns
        x = np.random.default_rng(1).random((4, 8, 8)).astype(np.float32)
        with torch.no_grad():
            probs = torch.softmax(net(torch.from_numpy(x)[:, None]), 1).numpy()
        out = {"module": isinstance(net, torch.nn.Module), "eval": not net.training,
               "params": sum(p.numel() for p in net.parameters()),
               "diff": float(np.abs(probs - np.asarray(mlflow.pyfunc.load_model(uri).predict(x))).max())}
    """,
}


@pytest.fixture(scope="module")
def champions(project) -> dict:
    """Every champion's checks (CHAMPION_CHECKS) in one fresh interpreter, before any `exp run`
    registers new versions: one start of MLflow and torch instead of one per check. A check that
    raises is kept as its error, so it fails its own test only."""
    root, env, _ = project
    parts = ["results = {}"]
    for key, body in CHAMPION_CHECKS.items():
        parts.append(f"def check_{key}():\n{textwrap.indent(textwrap.dedent(body), '    ')}\n    return out\n"
                     f"try:\n    results[{key!r}] = check_{key}()\n"
                     f"except Exception as exc:\n    results[{key!r}] = {{'__error__': f'{{type(exc).__name__}}: {{exc}}'}}")
    return in_fresh_process(root, env, "\n".join(parts) + "\nout = results")


def checked(champions: dict, key: str) -> dict:
    out = champions[key]
    assert "__error__" not in (out if isinstance(out, dict) else {}), f"{key}: {out.get('__error__')}"
    return out


def ev_val_count(root: Path) -> int:
    """Images in the captioned digits' val split."""
    stats = json.loads((root / "data/shards/captioned_digits/stats.json").read_text())
    return stats["splits"]["val"]["samples"]


def mlflow_client(root: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def assert_ran(out: str, algo: str, dataset: str | None = None) -> None:
    """``dvc repro``'s output ran the algorithm's four stages (and its dataset's two, if named)."""
    stages = [f"{kind}-{algo}" for kind in ("tune", "train", "evaluate", "register")]
    stages += [f"{kind}-{dataset}" for kind in ("ingest", "preprocess")] if dataset else []
    for stage in stages:
        assert f"Running stage '{dag.address(stage)}'" in out, stage


def test_repro_runs_all_six_stages_and_writes_metrics(project):
    root, env, first = project
    assert_ran(first.stdout, "resnet", dataset="digits")
    assert "2 worker(s) (DDP)" in first.stdout
    ev = json.loads((root / "metrics/eval/resnet.json").read_text())
    assert ev["primary_metric"] == "accuracy" and ev["selected"] == "train"
    assert 0.3 < ev[ev["selected"]]["accuracy"] <= 1.0  # far above chance even after 3 tiny epochs
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], root, env).stdout)
    assert "metrics/eval/resnet.json" in json.dumps(shown)
    plots = run(["dvc", "plots", "show", "--json"], root, env)
    assert "plots/train/resnet/lr.csv" in plots.stdout and "plots/tune/resnet/trials.csv" in plots.stdout
    for png in ("plots/train/resnet/curves.png", "plots/tune/resnet/sweep.png", "plots/eval/resnet/confusion_train.png"):
        assert (root / png).stat().st_size > 5000


def test_repro_runs_the_transformer_through_the_same_stages(project):
    root, env, first = project
    assert_ran(first.stdout, "transformer", dataset="translation")
    ev = json.loads((root / "metrics/eval/transformer.json").read_text())
    assert ev["primary_metric"] == "exact_match" and ev["selected"] == "train"
    chosen = ev[ev["selected"]]
    for key in ("exact_match", "bleu", "chrf", "greedy_exact_match", "greedy_bleu", "greedy_chrf"):
        assert 0.0 <= chosen[key] <= 100.0
    assert chosen["chrf"] > 15  # well above an untrained model's (~5): four tiny epochs learn the pieces
    assert chosen["num_samples"] == 100
    report = (root / "reports/transformer/evaluate.md").read_text()
    assert "Worst translations" in report and "| source | reference | hypothesis |" in report
    assert (root / "plots/eval/transformer/exact_match_by_length_train.png").stat().st_size > 5000
    assert (root / "data/shards/translation/tokenizer.json").exists()
    test_sources = {line.split("\t")[0] for line in (root / "data/raw/translation/test.tsv").read_text().splitlines()}
    train_sources = {line.split("\t")[0] for line in (root / "data/raw/translation/train.tsv").read_text().splitlines()}
    assert len(test_sources) == 100 and not test_sources & train_sources
    # Exact match per number structure: the strata of the raw test split, weighted by their counts,
    # make up the overall figure; the report and the card's images show them.
    strata = Counter(line.split("\t")[2] for line in (root / "data/raw/translation/test.tsv").read_text().splitlines())
    assert set(strata) == {"small", "round", "inner_zero", "full", "other"}
    assert sum(n * chosen[f"exact_match_{s}"] for s, n in strata.items()) / 100 == pytest.approx(chosen["exact_match"])
    assert "Exact match by number structure" in report
    assert (root / "plots/eval/transformer/exact_match_by_stratum_train.png").stat().st_size > 5000


def test_transformer_champion_translates_raw_strings_in_a_fresh_process(project, champions):
    root, env, _ = project
    out = checked(champions, "transformer")
    for name in ("beam", "greedy"):
        assert len(out[name]) == 3 and all(isinstance(t, str) for t in out[name])
    assert out.get("error")
    client = mlflow_client(root)
    version = client.get_model_version_by_alias("transformer", "champion")
    assert "Vaswani" in version.description and "test_exact_match" in version.tags


def test_repro_runs_the_gan_and_scores_it_with_floor_and_ceiling(project):
    root, env, first = project
    assert_ran(first.stdout, "gan")
    stats = json.loads((root / "data/shards/digits/stats.json").read_text())
    assert stats["evaluator"]["accuracy"]["test"] > 0.9 and (root / "data/shards/digits/evaluator/model.safetensors").exists()
    ev = json.loads((root / "metrics/eval/gan.json").read_text())
    assert ev["primary_metric"] == "fid" and ev["mode"] == "min" and ev["selected"] == "train"
    chosen = ev[ev["selected"]]
    assert chosen["fid_floor"] < chosen["fid"] < chosen["fid_ceiling"]  # 8 tiny epochs: better than noise
    assert chosen["classes_covered"] >= 2 and 0 <= chosen["class_accuracy"] <= 1
    report = (root / "reports/gan/evaluate.md").read_text()
    assert "ceiling: noise" in report and "class accuracy" in report
    # KID with its interval, against real training images (paired), and the memorisation test, in words
    assert chosen["kid_low"] <= chosen["kid"] <= chosen["kid_high"] and "memorisation_z" in chosen
    assert "95% interval" in report and "as many real training images" in report and "memorisation z" in report
    assert (root / "plots/eval/gan/samples_train.png").stat().st_size > 5000
    for curve in ("d_real", "d_fake", "g_loss", "lr_d", "val_fid"):
        assert (root / f"plots/train/gan/{curve}.csv").exists(), curve
    trials = (root / "plots/tune/gan/trials.csv").read_text().splitlines()
    assert trials[0].endswith("val_fid") and len(trials) == 4  # header, params.yaml's own, 2 drawn


def test_repro_compares_the_image_generators_of_a_dataset_and_their_cards_say_so(project):
    """compare-digits: GAN, VAE and diffusion by KID on the same held-out images, each pair with a
    paired interval; a generator's model card names its pairs in the report's words."""
    root, env, first = project
    assert "Running stage 'compare-digits'" in first.stdout
    result = json.loads((root / "metrics/compare/digits.json").read_text())
    assert set(result["kid"]) == {"gan", "vae", "diffusion"} and len(result["pairs"]) == 3
    for pair in result["pairs"].values():
        assert pair["low"] <= pair["difference"] <= pair["high"]
    report = (root / "reports/compare/digits/compare.md").read_text()
    assert "| a | b | KID a | KID b |" in report and report.count("zero") >= 3
    card = mlflow_client(root).get_model_version_by_alias("vae", "champion").description
    assert "Against the dataset's other generators" in card
    assert "The samples minus as many real training images" in card  # and against real images
    assert "gan minus vae" in card and "vae minus diffusion" in card and "gan minus diffusion" not in card


def test_gan_champion_generates_seeded_images_in_a_fresh_process(project, champions):
    root, env, _ = project
    out = checked(champions, "gan")
    assert out["shape"] == [5, 8, 8] and out["same"] and 0 <= out["min"] <= out["max"] <= 1
    assert "label must be in [0, 9]" in out.get("error", "")
    version = mlflow_client(root).get_model_version_by_alias("gan", "champion")
    assert "Goodfellow" in version.description and "test_fid" in version.tags


def test_repro_runs_the_vae_and_reports_its_bounds_in_nats(project):
    root, env, first = project
    assert_ran(first.stdout, "vae")
    ev = json.loads((root / "metrics/eval/vae.json").read_text())
    assert ev["primary_metric"] == "iwae" and ev["mode"] == "max"
    chosen = ev[ev["selected"]]
    assert chosen["iwae"] >= chosen["elbo"] and chosen["active_units"] >= 1
    assert 0.5 <= chosen["auroc_rotation"] <= 1 and chosen["fid_floor"] < chosen["fid_ceiling"]
    for image in ("reconstructions", "samples", "traversal", "latents"):
        assert (root / f"plots/eval/vae/{image}_train.png").stat().st_size > 3000, image
    for curve in ("kl", "kl_weight", "recon", "val_loss"):
        assert (root / f"plots/train/vae/{curve}.csv").exists(), curve


def test_vae_champion_encodes_decodes_and_samples_in_a_fresh_process(project, champions):
    root, env, _ = project
    out = checked(champions, "vae")
    assert out["mu"] == [4, 16] and out["rec"] == out["dec"] == [4, 8, 8] and out["sample"] == [3, 8, 8]
    assert "mode must be one of" in out.get("error", "")


def test_repro_runs_diffusion_with_its_sampler_sweep(project):
    root, env, first = project
    assert_ran(first.stdout, "diffusion")
    ev = json.loads((root / "metrics/eval/diffusion.json").read_text())
    assert ev["primary_metric"] == "fid" and ev["selected"] == "train"
    chosen = ev[ev["selected"]]
    for key in ("ddim10_fid", "ddpm_fid", "class_accuracy", "fid_floor", "fid_ceiling"):
        assert key in chosen, key
    assert chosen["fid"] < chosen["fid_ceiling"]
    selected = ev["selected"]
    for image in ("samples", "trajectory", "quality_by_steps"):
        assert (root / f"plots/eval/diffusion/{image}_{selected}.png").stat().st_size > 3000, image


def test_diffusion_champion_samples_with_sampler_params_in_a_fresh_process(project, champions):
    root, env, _ = project
    out = checked(champions, "diffusion")
    assert out["shape"] == [3, 8, 8] and out["same"]
    assert "sampler must be one of" in out.get("error", "")


def test_repro_runs_the_gnn_as_a_ddp_job_on_sampled_neighbourhoods(project):
    root, env, first = project
    assert_ran(first.stdout, "gnn", dataset="community")
    assert "train gnn: 20 epochs, 2 worker(s) (DDP)" in first.stdout
    node = json.loads((root / "metrics/eval/gnn.json").read_text())
    chosen = node[node["selected"]]
    assert chosen["accuracy"] > 0.7 and 0 < chosen["macro_f1"] <= 1  # 4 communities: chance is 0.25
    for png in ("plots/eval/gnn/embeddings_train.png", "plots/eval/gnn/confusion_train.png"):
        assert (root / png).stat().st_size > 5000
    assert "homophily" in (root / "reports/gnn/evaluate.md").read_text()
    assert (root / "data/shards/community/graph.npz").exists()


def test_repro_runs_graph_classification_on_the_graph_families(project):
    root, env, first = project
    assert_ran(first.stdout, "gnn_graphs", dataset="graph_families")
    stats = json.loads((root / "data/shards/graph_families/stats.json").read_text())
    classes = stats["num_classes"]
    ev = json.loads((root / "metrics/eval/gnn_graphs.json").read_text())
    chosen = ev[ev["selected"]]
    assert ev["primary_metric"] == "accuracy" and chosen["num_samples"] == stats["splits"]["test"]["samples"]
    assert chosen["accuracy"] > 1.5 / classes  # well above chance (0.83 with params.yaml's lr)
    assert json.loads((root / "metrics/register/gnn_graphs.json").read_text())["version"] == 1


def test_gnn_champion_scores_nodes_in_a_fresh_process(project, champions):
    root, env, _ = project
    out = checked(champions, "gnn")
    assert out["node"] == [5, 4] and all(abs(s - 1) < 1e-4 for s in out["sums"])
    assert "transpose it" in out["errors"][0] and "ids must be in [0, 5)" in out["errors"][1]
    version = mlflow_client(root).get_model_version_by_alias("gnn", "champion")
    assert "Kipf" in version.description and "test_accuracy" in version.tags


def test_repro_runs_clip_as_a_ddp_job_and_classifies_zero_shot(project):
    root, env, first = project
    assert_ran(first.stdout, "clip", dataset="captioned_digits")
    assert "train clip: 6 epochs, 2 worker(s) (DDP)" in first.stdout
    ev = json.loads((root / "metrics/eval/clip.json").read_text())
    assert ev["primary_metric"] == "zero_shot_accuracy" and ev["selected"] == "train"
    chosen = ev[ev["selected"]]
    assert chosen["zero_shot_accuracy"] > 0.2  # 10 classes, unseen prompts: chance is 0.1 after 6 tiny epochs
    for key in ("image_to_text_r1", "text_to_image_r10", "linear_probe_accuracy"):
        assert 0 <= chosen[key] <= 1
    assert 0.01 <= chosen["temperature"] <= 1
    train = json.loads((root / "metrics/train/clip.json").read_text())
    # The train run's last validation (all-reduced over the 2 workers) is evaluate's val score of
    # the exported model, up to one image's vote.
    assert train["val_zero_shot_accuracy"] == pytest.approx(chosen["val_zero_shot_accuracy"],
                                                            abs=1.0 / ev_val_count(root) + 1e-9)
    rows = (root / "plots/train/clip/global_batch.csv").read_text().splitlines()[1:]
    assert max(float(r.split(",")[1]) for r in rows) > 64  # the logits span both workers' batches (64 each at most)
    assert (root / "plots/eval/clip/similarity_train.png").stat().st_size > 5000
    assert "Zero-shot top-1" in (root / "reports/clip/evaluate.md").read_text()


def test_clip_champion_embeds_and_scores_in_a_fresh_process(project, champions):
    root, env, _ = project
    out = checked(champions, "clip")
    assert len(out["scores"]) == 4 and out["img"] == [4, 32] and out["txt"] == [4, 32]
    assert abs(out["norm"] - 1) < 1e-4 and "rows of 64 pixel values" in out.get("error", "")
    version = mlflow_client(root).get_model_version_by_alias("clip", "champion")
    assert "Radford" in version.description and "test_zero_shot_accuracy" in version.tags


def test_second_repro_does_nothing(project):
    root, env, _ = project
    again = run(["dvc", "repro"], root, env)
    assert "Running stage" not in again.stdout
    assert "up to date" in again.stdout.lower() or "didn't change" in again.stdout


def test_mlflow_has_train_run_tune_parent_with_nested_trials_and_champion(project):
    # Version 1 is the first repro's, whatever ran since (an `exp run` adds runs and versions):
    # its tags lead to the train run and the tune parent that made it.
    root, env, _ = project
    client = mlflow_client(root)
    exp = client.get_experiment_by_name("resnet")
    runs = client.search_runs([exp.experiment_id])
    version = client.get_model_version("resnet", "1")
    train = client.get_run(version.tags["source_run_id"])
    assert train.data.tags["stage"] == "train" and train.info.status == "FINISHED"
    assert "step/lr" in train.data.metrics and "val_accuracy" in train.data.metrics
    parent = client.get_run(version.tags["tune_run_id"])
    assert parent.data.tags["stage"] == "tune" and "mlflow.parentRunId" not in parent.data.tags
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    # params.yaml's own config and one draw per schedule; at 1 epoch one goes on, two stop.
    assert len(children) == 3 and all("step/lr" in c.data.metrics and "val_accuracy" in c.data.metrics
                                      for c in children)
    assert sorted(c.data.tags["status"] for c in children) == ["completed", "early-stopped", "early-stopped"]
    assert sorted(c.info.status for c in children) == ["FINISHED", "KILLED", "KILLED"]
    (winner,) = [c for c in children if c.data.tags["status"] == "completed"]
    assert version.tags["tune_trial"] == winner.data.tags["trial"]  # the survivor of the last rung won

    assert {"git_commit", "data_version", "dvc_data_md5", "test_accuracy"} <= set(version.tags)
    assert version.tags["dvc_data_md5"] != "unknown"
    # The first repro rewrote the dvc.lock files and metrics/ (outputs), not the committed code that trained it.
    assert version.tags["git_commit"] == run(["git", "rev-parse", "HEAD"], root, env).stdout.strip()
    assert "Test metrics" in version.description and "models:/resnet@champion" in version.description
    # Every DDP epoch logged once (rank 0 only), and the card's images are artifacts of the version's run.
    epochs = tiny_params()["train"]["resnet"]["epochs"]
    assert [m.step for m in client.get_metric_history(train.info.run_id, "val_accuracy")] == list(range(epochs))
    card = {f.path for f in client.list_artifacts(version.run_id, "card")}
    selected = version.tags["candidate"]
    assert {"card/evaluate.md", f"card/confusion_{selected}.png"} <= card
    assert f"`confusion_{selected}.png`" in version.description


def test_model_cards_show_floors_and_ceilings_where_the_family_has_them(project):
    root, _, _ = project
    client = mlflow_client(root)
    gan = client.get_model_version_by_alias("gan", "champion").description
    fid_row = next(line for line in gan.splitlines() if line.startswith("| **fid** |"))
    test, floor, ceiling = (c.strip() for c in fid_row.strip("|").split("|")[1:4])
    assert float(floor.split(" ± ")[0]) < float(ceiling) and float(test) > 0  # floor (data) below ceiling (noise)
    assert "## Aliases" in gan and "`samples_" in gan
    for algo in tiny_params()["algorithms"]:  # every family's champion carries a complete card
        card = client.get_model_version_by_alias(algo, "champion").description
        assert card.splitlines()[0].startswith(f"{algo}: test "), (algo, card.splitlines()[0])
        for section in ("**Algorithm**", "| Data version |", "| Git commit |", "| Key params |", "## Test metrics",
                        "## Load", "## Aliases", "## Images", "| What the sweep bought |"):
            assert section in card, (algo, section)
        # Trained with its sweep's winner, and the card and tags say which.
        version = client.get_model_version_by_alias(algo, "champion")
        best = yaml.safe_load((root / f"models/{algo}/tune/best.yaml").read_text())
        assert version.tags["tuned"] == "true" and f"peak lr {best['lr']:.4g}" in card, algo
        assert f"schedule {best['schedule']['name']}" in card, algo
    resnet = client.get_model_version_by_alias("resnet", "champion").description
    acc_row = next(line for line in resnet.splitlines() if line.startswith("| **accuracy** |"))
    assert acc_row.endswith("|  |  |")  # a classifier has no floor or ceiling


def test_champion_loads_in_a_fresh_process_and_checks_input(project, champions):
    root, env, _ = project
    out = checked(champions, "resnet")
    assert out["shape"] == [6, 10] and all(abs(s - 1) < 1e-4 for s in out["sums"])
    assert all(out["errors"]), out["errors"]  # both bad inputs rejected
    assert "shape" in out["errors"][0].lower()
    assert "int64" in out["errors"][1] or "dtype" in out["errors"][1].lower()


def test_the_trained_network_comes_back_from_the_registry_without_pickle(project, champions):
    root, env, _ = project
    out = checked(champions, "resnet_module")
    assert out["module"] and out["eval"] and out["params"] > 1000
    assert out["diff"] < 1e-5  # the module's softmax is what the served model answers


def read_parquet(folder: Path) -> dict[str, list]:
    import pyarrow.dataset as pads

    return pads.dataset(str(folder), format="parquet").to_table().to_pydict()


def test_batch_scoring_on_ray_data_gets_the_evaluate_stages_test_accuracy_exactly(project):
    """``python -m pipelines.score`` streams the digits test split through Ray Data with the
    champion in an actor; its Parquet predictions score exactly the registered test accuracy."""
    root, env, _ = project
    champion = mlflow_client(root).get_model_version_by_alias("resnet", "champion")
    proc = run([sys.executable, "-m", "pipelines.score", "--algo", "resnet", "--batch-size", "100"], root, env)
    out = root / ".runs" / "scores" / "resnet" / f"v{champion.version}-test"  # the documented default place
    rows = read_parquet(out)
    stats = json.loads((root / "data/shards/digits/stats.json").read_text())
    assert len(rows["key"]) == len(set(rows["key"])) == stats["splits"]["test"]["samples"]
    correct = sum(int(p == y) for p, y in zip(rows["prediction"], rows["label"]))
    assert correct / len(rows["key"]) == float(champion.tags["test_accuracy"])  # exact: the same images, the same net
    assert all(0.0 < p <= 1.0 for p in rows["probability"])
    runs = mlflow_client(root).search_runs([mlflow_client(root).get_experiment_by_name("resnet").experiment_id],
                                           "tags.stage = 'score'")
    assert runs and runs[0].data.metrics["score_accuracy"] == correct / len(rows["key"])
    assert f"models:/resnet/{champion.version}" in proc.stdout


def test_clip_batch_scoring_writes_embeddings_that_a_text_query_ranks(project, tmp_path):
    root, env, _ = project
    out = tmp_path / "clip-scores"
    run([sys.executable, "-m", "pipelines.score", "--algo", "clip", "--out", str(out)], root, env)
    rows = read_parquet(out)
    emb = np.asarray(rows["embedding"], dtype=np.float64)
    stats = json.loads((root / "data/shards/captioned_digits/stats.json").read_text())
    assert emb.shape[0] == stats["splits"]["test"]["samples"]
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    text = "a photo of the digit three"
    proc = run([sys.executable, "-m", "pipelines.score", "--algo", "clip", "--out", str(out), "--query", text,
                "--top-k", "4"], root, env)
    ranked = [line.split() for line in proc.stdout.splitlines() if "cosine" in line]
    assert len(ranked) == 4
    cosines = [float(r[2]) for r in ranked]
    assert cosines == sorted(cosines, reverse=True)
    # The top image's cosine, recomputed in a fresh process from the champion and the Parquet row.
    top = rows["key"].index(ranked[0][3].split("/")[1])
    again = in_fresh_process(root, env, f"""
        m = mlflow.pyfunc.load_model("models:/clip@champion")
        text = np.asarray(m.predict(pd.DataFrame({{"text": [{text!r}]}}), params={{"mode": "embed_text"}}))[0]
        image = np.asarray({emb[top].tolist()!r})
        out = float(image @ text / np.linalg.norm(image) / np.linalg.norm(text))
    """)
    assert abs(again - cosines[0]) < 1e-3
    assert emb[top] @ emb[top] > 0.99  # unit norm, as the query assumes
    bad = run([sys.executable, "-m", "pipelines.score", "--algo", "gan"], root, env, check=False)
    assert bad.returncode == 2 and "batch scoring covers the families" in bad.stderr and "Traceback" not in bad.stderr


def post_json(url: str, body: dict) -> tuple[int, dict]:
    """POST ``body`` as JSON with the standard library (what any HTTP client sends)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


def test_champions_answer_rest_requests_as_they_predict_in_process(project, champions):
    """`mlflow models serve` of the classifier, the translator, CLIP and the GAN, scored over HTTP
    in MLflow's documented payloads (``inputs``, ``dataframe_split``, ``params``), gives what
    the same model predicts in a Python process; a request the family rejects is a 400 with the
    family's message."""
    root, env, _ = project
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    images = np.random.default_rng(0).random((3, 8, 8)).round(4)  # as CHAMPION_CHECKS["served"] draws them
    flat = images.reshape(3, -1).tolist()
    requests = {
        "resnet": [{"inputs": images.tolist()}],
        "transformer": [{"inputs": ["three hundred and forty-two", "seventeen"]},
                        {"dataframe_split": {"columns": [0], "data": [["nine million and one"]]},
                         "params": {"beam_size": 1}}],
        "clip": [{"dataframe_split": {"columns": ["image", "text"],
                                      "data": [[flat[0], "a bold seven"], [flat[1], "a thin one"]]}},
                 {"dataframe_split": {"columns": ["text"], "data": [["a bold seven"]]}, "params": {"mode": "embed_text"}}],
        "gan": [{"dataframe_split": {"columns": ["count", "seed"], "data": [[2, 5]]}}],
    }
    servers = {}
    try:
        for algo in requests:  # all four start at once: each spends its first seconds importing
            port = free_port()
            servers[algo] = (subprocess.Popen(
                ["mlflow", "models", "serve", "-m", f"models:/{algo}@champion", "--env-manager", "local",
                 "-h", "127.0.0.1", "-p", str(port), "-w", "1"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True), f"http://127.0.0.1:{port}")
        for algo, (proc, url) in servers.items():
            deadline = time.time() + 180
            while not ping(url):
                assert proc.poll() is None and time.time() < deadline, f"{algo}: the server did not start"
                time.sleep(0.5)
        answers = {algo: [post_json(servers[algo][1] + "/invocations", body) for body in bodies]
                   for algo, bodies in requests.items()}
        status, error = post_json(servers["gan"][1] + "/invocations",
                                  {"dataframe_split": {"columns": ["count", "seed"], "data": [[0, 5]]}})
    finally:
        for proc, _ in servers.values():
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
    expected = checked(champions, "served")  # the same requests, predicted in a user's Python process
    for algo, got in answers.items():
        for (code, body), want in zip(got, expected[algo]):
            assert code == 200, (algo, body)
            if algo == "transformer":
                assert body["predictions"] == want
            else:
                np.testing.assert_allclose(np.asarray(body["predictions"]), np.asarray(want), atol=1e-5, err_msg=algo)
    assert status == 400 and "count must be in [1," in error["message"] and "stack_trace" not in error, error


def ping(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/ping", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_exp_run_retrains_in_local_mode_and_a_new_concurrency_picks_the_same_winner(project):
    """One `dvc exp run` with three changes: train's epochs and workers (train and what follows it
    re-run, in Ray Train's local mode; the data stages do not), and the sweep's concurrency (the
    sweep re-runs and writes the same winner, best.yaml byte for byte, which train then trains for
    the new epochs). That the epochs alone re-run no sweep, and a sweep alone no train while its
    winner stands, is the DAG's (test_dag.py: train depends on best.yaml, tune on no
    train.<algo>.epochs)."""
    root, env, _ = project
    client = mlflow_client(root)
    before = len(client.search_model_versions("name = 'resnet'"))  # whatever tests ran before this one
    best = (root / "models/resnet/tune/best.yaml").read_text()
    epochs = yaml.safe_load((root / "params.yaml").read_text())["train"]["resnet"]["epochs"] + 1  # whatever ran before
    out = run(["dvc", "exp", "run", "-S", f"train.resnet.epochs={epochs}", "-S", "train.resnet.num_workers=0",
               "-S", "tune.resnet.max_concurrent=1"], root, env).stdout
    assert_ran(out, "resnet")
    for stage in ("ingest-digits", "preprocess-digits"):
        assert f"Running stage '{stage}'" not in out
    assert "local mode" in out and f"{epochs} epochs" in out and "with the sweep's" in out
    assert (root / "models/resnet/tune/best.yaml").read_text() == best
    report = (root / "reports/resnet/evaluate.md").read_text()
    assert "## Hyperparameters: what the sweep bought" in report and "params.yaml's own" in report

    versions = client.search_model_versions("name = 'resnet'")
    assert len(versions) == before + 1  # one new version, whichever tests ran before
    latest = str(max(int(v.version) for v in versions))
    aliases = client.get_registered_model("resnet").aliases  # {alias: version}
    assert "champion" in aliases
    new_alias = [a for a, v in aliases.items() if str(v) == latest]
    assert new_alias and new_alias[0] in ("champion", "challenger")
    if new_alias[0] == "challenger":  # the champion kept its alias because it was not beaten
        old, new = (float(client.get_model_version("resnet", v).tags["test_accuracy"])
                    for v in (str(aliases["champion"]), latest))
        assert new <= old


def test_dvc_plots_show_renders_every_familys_curves_schedules_sweep_and_images(project):
    root, env, _ = project
    out = run(["dvc", "plots", "show", "--json"], root, env)
    plots = json.loads(out.stdout)["data"]
    html = run(["dvc", "plots", "show", "-o", str(root / "dvc_plots")], root, env)
    assert (root / "dvc_plots" / "index.html").stat().st_size > 0, html.stdout
    for algo in tiny_params()["algorithms"]:
        for key in (f"plots/train/{algo}/loss.csv", f"plots/train/{algo}/lr.csv", f"plots/tune/{algo}/trials.csv"):
            assert any(k.endswith(key) for k in plots), (algo, key)
        lr_key = next(k for k in plots if k.endswith(f"plots/tune/{algo}/lr.csv"))
        trials = {row["trial"] for row in plots[lr_key][0]["content"]["data"]["values"]}
        assert len(trials) == 3, (algo, trials)  # one line per tune trial (params.yaml's own + 2), by trial
        assert any(f"plots/eval/{algo}/" in k and k.endswith(".png") for k in plots), algo


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(os.environ.get("TEST_ARTIFACTS", REPO / "test-artifacts")) / "browser"


@pytest.mark.skipif(not CHROMIUM and os.environ.get("CI", "").lower() not in ("1", "true"),
                    reason="needs Debian's chromium (`apt-get install chromium`); CI installs it and always runs this")
def test_the_registry_in_a_real_browser_lists_champions_with_model_cards(project):
    """`mlflow server` over the store the pipeline filled, driven in headless Chromium."""
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM, "chromium is not installed: .ci/run installs it with apt-get"
    root, env, _ = project
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, cwd=root,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    algos = list(tiny_params()["algorithms"])
    client = mlflow_client(root)
    try:
        import urllib.request
        for _ in range(180):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None, "mlflow server exited"
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                "--disable-background-networking", "--disable-component-update"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)

            # The Models page lists every registered model.
            page.goto(f"{url}/#/models", wait_until="domcontentloaded")
            for algo in algos:
                expect(page.get_by_role("link", name=algo, exact=True)).to_be_visible()
            page.keyboard.press("Escape")  # a "new registry UI" announcement may cover the page
            page.screenshot(path=str(SCREENSHOTS / "models.png"), full_page=True)

            for algo in ("resnet", "gan"):
                champion = client.get_model_version_by_alias(algo, "champion")
                # The model's page: its versions with the champion alias.
                page.goto(f"{url}/#/models/{algo}", wait_until="domcontentloaded")
                expect(page.get_by_text("champion").first).to_be_visible()
                page.screenshot(path=str(SCREENSHOTS / f"{algo}-model.png"), full_page=True)
                # The champion's version page: the alias, the model card with its metrics table, the tags.
                page.goto(f"{url}/#/models/{algo}/versions/{champion.version}", wait_until="domcontentloaded")
                expect(page.get_by_role("heading", name="Test metrics")).to_be_visible()
                expect(page.get_by_text("champion").first).to_be_visible()
                metric = {"resnet": "accuracy", "gan": "fid"}[algo]
                expect(page.get_by_role("cell", name=metric, exact=True).first).to_be_visible()
                expect(page.get_by_text(f'models:/{algo}@champion').first).to_be_visible()
                expect(page.get_by_text("git_commit").first).to_be_visible()
                page.screenshot(path=str(SCREENSHOTS / f"{algo}-champion.png"), full_page=True)
            browser.close()
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    assert sorted(p.name for p in SCREENSHOTS.glob("*.png")) == sorted(
        ["models.png", "resnet-model.png", "resnet-champion.png", "gan-model.png", "gan-champion.png"])
