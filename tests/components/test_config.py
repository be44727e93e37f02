import pytest

from components.config import ConfigError, TrainConfig, parse
from components.models import FAMILIES
from components.params import load_all, load_params, train_config, tune_config
from tests.conftest import REPO


def test_every_section_of_params_yaml_loads(repo_params):
    params = load_all(repo_params)
    assert "resnet" in params.algorithms
    cfg = train_config(repo_params, "resnet")
    assert cfg.model.depth == repo_params["train"]["resnet"]["model"]["depth"]
    assert tune_config(repo_params, "resnet").space.schedule


def test_an_algorithms_params_come_parsed_and_typed(repo_params):
    import dataclasses

    from components.config import RuntimeConfig, TuneConfig
    from components.models import gnn
    from components.params import algorithm, dataset

    p = algorithm(repo_params, "gnn_graphs")  # an algorithm of another's family: gnn
    assert (p.name, p.family, p.dataset) == ("gnn_graphs", "gnn", repo_params["algorithms"]["gnn_graphs"]["dataset"])
    assert isinstance(p.train.model, gnn.Config) and p.train.model.task == "graph"
    assert isinstance(p.tune, TuneConfig) and isinstance(p.runtime, RuntimeConfig) and p.raw is repo_params
    assert algorithm(repo_params, "resnet").family == "resnet"  # no family key: the algorithm's own name
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.family = "resnet"
    data = dataset(repo_params, p.dataset)
    assert data.module.__name__ == "components.data.graphs" and data.name == p.dataset
    missing = _with(repo_params, "algorithms.resnet", {"family": "resnet"})
    with pytest.raises(ConfigError, match="algorithms.resnet.dataset: missing"):
        algorithm(missing, "resnet")


def _with(repo_params, path: str, value):
    import copy

    raw = copy.deepcopy(repo_params)
    *parents, last = path.split(".")
    node = raw
    for p in parents:
        node = node[p]
    node[last] = value
    return raw


@pytest.mark.parametrize("path, value, message", [
    ("train.resnet.optimizer.momentm", 0.9, "train.resnet.optimizer.momentm: unknown key"),
    ("train.resnet.epochs", "ten", "train.resnet.epochs: must be an integer"),
    ("train.resnet.epochs", 2.5, "train.resnet.epochs: must be an integer"),
    ("train.resnet.optimizer.momentum", 1.5, "train.resnet.optimizer.momentum: must be in [0, 1)"),
    ("train.resnet.lr", -0.1, "train.resnet.lr: must be in (0"),
    ("train.resnet.schedule.name", "cosyne", "train.resnet.schedule.name: must be one of"),
    ("train.resnet.model.depth", 21, "train.resnet.model.depth: CIFAR-style basic depths are 6n+2"),
    ("train.resnet.use_gpu", "yes", "train.resnet.use_gpu: must be true or false"),
    ("tune.resnet.space.schedule", ["cosine", "warp"], "tune.resnet.space.schedule: unknown schedule ['warp']"),
    ("tune.resnet.grace_period", 99, "tune.resnet.grace_period: must be <= epochs"),
    ("tune.transformer.space.warmup", [0.0], "tune.transformer.space.warmup: inverse_sqrt needs a warm-up > 0"),
    ("tune.transformer.train_fraction", 0.0, "tune.transformer.train_fraction: must be in (0, 1]"),
    ("train.resnet.tuned", "maybe", "train.resnet.tuned: must be true or false"),
    ("data.digits.val_fraction", 0.7, "data.digits.val_fraction: must be in (0, 0.5)"),
])
def test_bad_values_fail_with_the_full_key_path(repo_params, path, value, message):
    with pytest.raises(ConfigError) as err:
        load_all(_with(repo_params, path, value))
    assert message in str(err.value)


def test_an_algorithm_that_names_no_family_is_told_to_and_shown_the_families(repo_params):
    raw = _with(repo_params, "algorithms", {"resnett": {"dataset": "digits"}})
    with pytest.raises(ConfigError, match=r"algorithms.resnett: 'resnett' is no family, so the entry needs `family:` "
                                          r"\(one of \[.*'resnet'.*\]\)") as err:
        load_all(raw)
    assert all(repr(name) in str(err.value) for name in FAMILIES)
    raw = _with(repo_params, "algorithms.resnet.family", "resnext")
    with pytest.raises(ConfigError, match=r"algorithms.resnet.family: unknown family 'resnext'; families: \[") as err:
        load_all(raw)
    assert "algorithm" not in str(err.value).split(":", 1)[1]


def test_yaml_exponent_without_dot_is_read_as_a_number():
    cfg = parse(TrainConfig, {"lr": "1e-3"}, "train.x")
    assert cfg.lr == pytest.approx(1e-3)


def test_missing_params_file_says_where(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_the_repository_params_give_every_algorithm_its_data_train_and_tune_sections():
    raw = load_params(REPO / "params.yaml")
    params = load_all(raw)  # every section validates
    assert set(params.algorithms) == set(raw["algorithms"]) and len(params.algorithms) >= 7
    for algo, entry in raw["algorithms"].items():
        assert entry["dataset"] in raw["data"], algo
        assert algo in raw["train"] and algo in raw["tune"], algo


def test_one_family_serves_several_algorithms_and_names_its_module(repo_params):
    assert repo_params["algorithms"]["gnn_graphs"]["family"] == "gnn"
    params = load_all(repo_params)
    assert {n for n, a in params.algorithms.items() if a.family == "gnn"} == {"gnn", "gnn_graphs", "gnn_karate", "gnn_hetero"}
    raw = _with(repo_params, "algorithms.gnn_graphs.family", "gnnn")
    with pytest.raises(ConfigError, match=r"algorithms.gnn_graphs.family: unknown family 'gnnn'"):
        load_all(raw)
    raw = _with(repo_params, "data.karate.type", "graph")
    with pytest.raises(ConfigError, match=r"data.karate.type: unknown dataset 'graph'; valid: \[.*'graphs'"):
        load_all(raw)
    raw = _with(repo_params, "train.gnn_graphs.model.readout", "max")
    with pytest.raises(ConfigError, match=r"train.gnn_graphs.model.readout: must be one of"):
        load_all(raw)


def _leaves(node, prefix=()):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, (*prefix, key))
    else:
        yield prefix


@pytest.mark.parametrize("algo", ["resnet", "gnn_graphs"])
def test_a_stage_sees_only_the_params_dvc_yaml_lists_for_it(repo_params, algo):
    """What a stage is handed (``algorithm(raw, name, stage)``) changes with no key outside its
    dvc.yaml params (``stage_keys``; ``runtime`` aside): every other leaf of params.yaml, replaced
    by a value no section accepts, leaves it equal, so `dvc status` sees every key a stage reads.
    A key it lists does change it."""
    import copy
    import dataclasses

    from components.params import UNTRACKED, algorithm, stage_keys

    def handed(raw, stage):
        return {k: v for k, v in dataclasses.asdict(algorithm(raw, algo, stage)).items() if k != "raw"}

    for stage in ("tune", "train", "evaluate", "register"):
        keys = [tuple(k.split(".")) for k in stage_keys(stage, repo_params, algo)] + [(k,) for k in UNTRACKED]
        before = handed(repo_params, stage)
        unread = [leaf for leaf in _leaves(repo_params) if not any(leaf[:len(k)] == k for k in keys)]
        assert len(unread) > 50
        for leaf in unread:
            raw = copy.deepcopy(repo_params)
            node = raw
            for part in leaf[:-1]:
                node = node[part]
            node[leaf[-1]] = {"not": "a value any section accepts"}
            assert handed(raw, stage) == before, (stage, ".".join(leaf))
    # The tune stage reads no TRAIN_ONLY key; train reads epochs.
    tune_keys = stage_keys("tune", repo_params, algo)
    assert f"train.{algo}.epochs" not in tune_keys and f"train.{algo}.lr" in tune_keys
    raw = copy.deepcopy(repo_params)
    raw["train"][algo]["epochs"] = 3
    assert handed(raw, "train") != handed(repo_params, "train")
    assert handed(raw, "tune") == handed(repo_params, "tune") and algorithm(raw, algo, "evaluate").train is None
