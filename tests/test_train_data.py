"""Training loop, checkpoints and image folders on real files the tests make."""

import numpy as np
import pytest
import torch
from PIL import Image

from nas.training import data
from nas.training.checkpoints import load_weights, read_weights, save_weights
from nas.study import DataSpec
from nas.training.trainer import LossWeights, Trainer, TrainingDiverged, distillation_loss, evaluate
from search_spaces import ArchConfig, ConfigError, build_model
from search_spaces.reparam import create_model


def test_distillation_loss_is_cross_entropy_plus_tempered_kl():
    logits, labels = torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert distillation_loss(logits, labels, None, LossWeights()) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, labels)))
    # distilling from itself adds nothing: KL(p || p) = 0
    same = distillation_loss(logits, labels, logits, LossWeights(distill_alpha=0.5))
    assert float(same) == pytest.approx(0.5 * float(torch.nn.functional.cross_entropy(logits, labels)), abs=1e-5)


def test_training_improves_a_tiny_model_and_divergence_is_reported(tiny_spec):
    train = data.digits(32, "train")
    model = create_model(tiny_spec)
    before = evaluate(model, train).accuracy
    trainer = Trainer(model, train, epochs=1, steps_per_epoch=60, lr=3e-3, weights=LossWeights(0.0))
    trainer.train_epoch()
    assert evaluate(model, train).accuracy > before + 0.1

    config = ArchConfig.from_dict({"model": tiny_spec.to_dict(), "blocks": [
        {"attention": "additive", "qkv": "shift", "proj": "dense", "mlp": "moe",
         "moe": {"top_k": 1, "experts": ["dense", "shift"]}},
        {"attention": "msa", "qkv": "dense", "proj": "dense", "mlp": "dense"}]})
    student = build_model(config, model)
    blowup = Trainer(student, train, epochs=1, steps_per_epoch=5, lr=1e12, teacher=model)
    with pytest.raises(TrainingDiverged, match="loss is (nan|inf)"):
        blowup.train_epoch()


def test_checkpoints_round_trip_and_refuse_what_does_not_fit(tmp_path, tiny_spec):
    model = create_model(tiny_spec)
    path = save_weights(model, tmp_path / "m.safetensors", {"note": "x"})
    other = create_model(tiny_spec)
    load_weights(other, path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    # a torch file holding a wrapped state dict is read with weights_only
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "m.pt")
    assert read_weights(tmp_path / "m.pt").keys() == model.state_dict().keys()

    wider = create_model(type(tiny_spec)(tiny_spec.name, {**tiny_spec.kwargs, "embed_dim": 48}))
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(ConfigError, match=r"does not match the model; shape \(file vs model\)"):
        load_weights(wider, path)
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())  # untouched

    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConfigError, match="truncated or corrupt"):
        read_weights(truncated)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:1000])
    with pytest.raises(ConfigError, match="not a readable torch checkpoint"):
        read_weights(tmp_path / "cut.pt")


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    torch.save({"weights": torch.zeros(2), "evil": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="holds code objects"):
        read_weights(tmp_path / "evil.pt")
    assert "code ran" not in capsys.readouterr().out


def _png_folder(root, classes, per_class=3):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (10, 12), dtype=np.uint8), "L").save(folder / f"{i}.png")


def test_image_folder_loads_real_files_and_rejects_bad_layouts(tmp_path):
    _png_folder(tmp_path / "ok", ["cat", "dog"])
    train, search, test = data.load(DataSpec("imagefolder", str(tmp_path / "ok")), img_size=16, num_classes=10)
    image, label = train[0]
    # val/ is the test set; the search split is carved from train/, one image of each class
    assert image.shape == (3, 16, 16) and len(train) == 4 and len(search) == 2 and len(test) == 6
    assert sorted(int(search[i][1]) for i in range(2)) == [0, 1]
    assert -1 <= float(image.min()) < float(image.max()) <= 1

    _png_folder(tmp_path / "one", ["cat"])
    with pytest.raises(ConfigError, match="1 class folder"):
        data.load(DataSpec("imagefolder", str(tmp_path / "one")), 16, 10)
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "b").mkdir(parents=True)
    with pytest.raises(ConfigError, match="has no images"):
        data.load(DataSpec("imagefolder", str(tmp_path / "empty")), 16, 10)
    with pytest.raises(ConfigError, match="is not a folder"):
        data.load(DataSpec("imagefolder", str(tmp_path / "missing")), 16, 10)
    with pytest.raises(ConfigError, match="num_classes"):
        data.load(DataSpec("imagefolder", str(tmp_path / "ok")), 16, 1)


def test_three_splits_are_disjoint_stratified_and_seeded():
    spec = DataSpec("digits", search_fraction=0.25, seed=3)
    train, search, test = data.load(spec, img_size=8, num_classes=10)
    assert train.dataset is search.dataset  # both carved from the training pool
    assert not set(train.indices) & set(search.indices)
    assert len(train) + len(search) == len(train.dataset) and len(train) + len(search) + len(test) == 1797
    assert len(test) == round(0.2 * 1797)
    # the test images are none of the pool's: the two come from one permutation, cut in two
    everything = data.digits(8, "all").tensors[0].flatten(1)
    pool_rows = {tuple(r.tolist()) for r in train.dataset.tensors[0].flatten(1)}
    test_rows = [tuple(r.tolist()) for r in test.tensors[0].flatten(1)]
    duplicates = len(everything) - len({tuple(r.tolist()) for r in everything})  # digits holds a few repeats
    assert sum(r in pool_rows for r in test_rows) <= duplicates
    # stratified: every class's share of the search split is its share of the pool, to within one image
    pool_labels = data.labels_of(train.dataset)
    search_labels = pool_labels[search.indices]
    for c in range(10):
        expected = (pool_labels == c).mean() * len(search)
        assert abs((search_labels == c).sum() - expected) <= 1
    again = data.load(spec, img_size=8, num_classes=10)
    other = data.load(DataSpec("digits", search_fraction=0.25, seed=4), img_size=8, num_classes=10)
    assert again.search.indices == search.indices and other.search.indices != search.indices


def test_parameter_groups_decay_only_the_weights_of_multiplying_layers(tiny_spec):
    from nas.training.trainer import parameter_groups
    from search_spaces.ops import ShiftLinear
    from search_spaces.ops.moe import MoEMlp

    config = ArchConfig.from_dict({"model": tiny_spec.to_dict(), "blocks": [
        {"attention": "additive", "qkv": "shift", "proj": "dense", "mlp": "moe"},
        {"attention": "msa", "qkv": "dense", "proj": "dense", "mlp": "shift"}]})
    model = build_model(config)
    decay, no_decay = (set(map(id, g["params"])) for g in parameter_groups(model, 0.05))
    names = {id(p): n for n, p in model.named_parameters()}
    assert not decay & no_decay and decay | no_decay == set(names)
    decayed = {names[i] for i in decay}
    assert "blocks.1.attn.qkv.weight" in decayed and "blocks.0.attn.proj.weight" in decayed
    assert "head.weight" in decayed and "patch_embed.proj.weight" in decayed
    assert "blocks.0.mlp.experts.0.fc1.weight" in decayed  # the dense expert multiplies
    for name in decayed:
        assert not name.endswith((".bias", "pos_embed", "cls_token")) and "norm" not in name
    for module in model.modules():
        exempt = isinstance(module, ShiftLinear)
        exempt_parts = [module.router, module.noise] if isinstance(module, MoEMlp) else [module] if exempt else []
        for part in exempt_parts:
            assert all(id(p) in no_decay for p in part.parameters())
    trainer = Trainer(model, data.digits(32, "train"), epochs=1, steps_per_epoch=1, weight_decay=0.05)
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.05, 0.0]


def test_shift_codes_move_and_accuracy_gains_under_the_trial_recipe(tiny_spec):
    """The quick-start's trial recipe (lr 1e-3, 3 epochs of 40 steps, distillation, weight decay 0.05) must train
    shift layers: codes change and the all-shift model beats its conversion."""
    from search_spaces.ops import ShiftLinear

    train, search, _ = data.load(DataSpec("digits"), img_size=32, num_classes=10)
    teacher = create_model(tiny_spec)
    Trainer(teacher, train, epochs=1, steps_per_epoch=150, lr=3e-3, weights=LossWeights(0.0)).train_epoch()
    teacher.eval()
    blocks = [{"attention": "msa", "qkv": "shift", "proj": "shift", "mlp": "shift"}] * 2
    student = build_model(ArchConfig.from_dict({"model": tiny_spec.to_dict(), "blocks": blocks}), teacher)
    shifts = [m for m in student.modules() if isinstance(m, ShiftLinear)]
    before = [m.quantized()[0].clone() for m in shifts]
    converted = evaluate(student, search).accuracy
    trainer = Trainer(student, train, epochs=3, steps_per_epoch=40, lr=1e-3, weight_decay=0.05, teacher=teacher)
    for _ in range(3):
        trainer.train_epoch()
    changed = sum(int((m.quantized()[0] != b).sum()) for m, b in zip(shifts, before))
    total = sum(b.numel() for b in before)
    assert changed / total > 0.05, f"only {changed} of {total} shift codes changed"
    assert evaluate(student, search).accuracy > converted + 0.02


def test_the_shapes_task_is_generated_offline_seeded_balanced_and_split_three_ways(monkeypatch):
    import socket

    from nas.training import shapes_dataset as shapes

    def no_network(*args, **kwargs):
        raise AssertionError("the shapes task must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    spec = DataSpec("shapes", images=600, test_fraction=0.25, search_fraction=0.2, seed=5)
    train, search, test = data.load(spec, img_size=32, num_classes=10)
    assert len(train) + len(search) + len(test) == 600 and len(test) == 150
    assert train.dataset is search.dataset and not set(train.indices) & set(search.indices)
    pool = train.dataset.tensors[0].flatten(1)
    assert pool.shape[1] == 3 * 32 * 32 and float(pool.min()) >= -1 and float(pool.max()) <= 1
    pool_rows = {tuple(r.tolist()) for r in pool}
    assert len(pool_rows) == len(pool) and not any(tuple(r.tolist()) in pool_rows for r in test.tensors[0].flatten(1))
    for labels, size in ((data.labels_of(test), len(test)), (data.labels_of(train.dataset)[search.indices],
                                                             len(search))):
        assert np.abs(np.bincount(labels, minlength=10) - size / 10).max() <= 1  # stratified: 10 balanced classes
    again = data.load(spec, img_size=32, num_classes=10)
    assert torch.equal(again.test.tensors[0], test.tensors[0]) and again.search.indices == search.indices
    other = data.load(DataSpec("shapes", images=600, test_fraction=0.25, seed=6), img_size=32, num_classes=10)
    assert not torch.equal(other.test.tensors[0], test.tensors[0])
    small = data.load(DataSpec("shapes", images=200), img_size=16, num_classes=10)
    assert small.test.tensors[0].shape[1:] == (3, 16, 16)
    # the label is the one glyph that appears twice: count the glyphs in a generated image from its pixels
    images, labels = shapes.generate(20, seed=1, noise=0.0)
    for image, label in zip(images, labels):
        ink = (image > shapes.BACKGROUND + 0.1).any(0)
        counts = np.zeros(shapes.CLASSES, int)
        for y in range(32 - shapes.GLYPH + 1):
            for x in range(32 - shapes.GLYPH + 1):
                window = ink[y:y + shapes.GLYPH, x:x + shapes.GLYPH]
                for kind, mask in enumerate(shapes.MASKS):
                    counts[kind] += bool((window == mask).all())
        assert counts[label] == 2 and np.delete(counts, label).max() == 1, counts


def test_the_shapes_task_refuses_a_class_count_the_model_cannot_output():
    with pytest.raises(ConfigError, match="num_classes"):
        data.load(DataSpec("shapes", images=200), img_size=32, num_classes=4)


def test_the_stratified_split_draws_what_scikit_learn_draws_without_it():
    """Studies split their data as they did with scikit-learn's train_test_split (stored trials keep their meaning),
    on a machine without scikit-learn (a GPU machine carries no scipy)."""
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(1)
    stratified = 0
    for case in range(120):
        size, kinds = int(rng.integers(2, 300)), int(rng.integers(1, 12))
        labels = rng.integers(0, kinds, size)
        labels = np.sort(labels) if case % 5 == 0 else labels
        fraction, seed = float(rng.uniform(0.02, 0.9)), int(rng.integers(0, 100))
        carved_count = int(np.ceil(fraction * size))
        if not 1 <= carved_count < size:
            continue
        counts = np.bincount(labels)
        stratify = labels if counts[counts > 0].min() >= 2 and (counts > 0).sum() <= min(
            carved_count, size - carved_count) else None
        stratified += stratify is not None
        kept, carved = train_test_split(np.arange(size), test_size=carved_count, stratify=stratify,
                                        random_state=seed)
        ours = data.stratified_split(labels, fraction, seed)
        assert np.array_equal(ours[0], np.sort(kept)) and np.array_equal(ours[1], np.sort(carved)), case
    assert stratified > 40  # both paths were compared
